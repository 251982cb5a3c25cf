"""What the round-latency work changed in a site's state, held to the rules it must keep: ε as
reported per task equals the composition of what was charged (memoised, also across connections),
a session key is claimed and saved in one commit and never twice, a stage's writes on the shared
connection commit or roll back together, a participant certificate verified once is still
refused once it expires, and a deferred audit head reaches its file at `flush_head`."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federation.audit import AuditLog
from federation.audit_head import head_file_path, read_head_file
from federation.identity import Identity
from federation.pki import CertificateAuthority, generate_key
from federation.wire.v1 import federation_pb2 as pb
from site_agent import secagg_adapter
from site_agent.accounting import Entry, epsilon_of
from site_agent.cache import ReleaseCache, SessionStore
from site_agent.config import SitePolicy
from site_agent.ledger import PrivacyLedger
from site_agent.secagg_adapter import SecaggAdapter
from site_agent.sessions import SessionRefused

pytestmark = pytest.mark.unit

DELTA = 1e-5
ENTRIES = (Entry(3.0, 1.0, 1), Entry(1.1, 0.05, 20), Entry(0.9, 0.1, 5))


def _charge(book: PrivacyLedger, entry: Entry, run_id: str, round_: int) -> None:
    book.charge(
        run_id=run_id,
        purpose="update",
        round=round_,
        attempt=0,
        partition="train",
        noise_multiplier=entry.noise_multiplier,
        sample_rate=entry.sample_rate,
        steps=entry.steps,
        delta=DELTA,
        run_epsilon_cap=1e9,
        lifetime_epsilon_cap=1e9,
    )


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from(ENTRIES), st.sampled_from(("r1", "r2"))),
        min_size=1,
        max_size=6,
    )
)
def test_reported_epsilon_is_always_the_composition_of_what_was_charged(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[int, Entry, str]]
) -> None:
    """Two connections charge the one ledger file in any order; after every charge both report,
    for each run and for the lifetime, exactly what composing the charged entries gives (a memo
    that missed the other connection's charge would report less)."""
    path = tmp_path_factory.mktemp("ledger") / "site.sqlite"
    books = [PrivacyLedger(path, clock=time.time), PrivacyLedger(path, clock=time.time)]
    charged: dict[str, list[Entry]] = {"r1": [], "r2": []}
    for i, (who, entry, run_id) in enumerate(steps):
        for book in books:  # read before the charge too, so that a stale memo would exist
            book.epsilon_run(run_id, DELTA)
            book.epsilon_lifetime(DELTA)
        _charge(books[who], entry, run_id, i)
        charged[run_id].append(entry)
        everything = charged["r1"] + charged["r2"]
        for book in books:
            for run, entries in charged.items():
                assert book.epsilon_run(run, DELTA) == pytest.approx(epsilon_of(entries, DELTA))
            assert book.epsilon_lifetime(DELTA) == pytest.approx(epsilon_of(everything, DELTA))


def test_a_session_is_claimed_and_saved_in_one_commit_and_never_twice(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "site.sqlite")
    key = ("run-1", "update", 3, 0)
    assert store.claim_and_save("run-1/update/3/0", key, b"first state")
    assert not store.claim_and_save("run-1/update/3/0", key, b"second state")
    assert store.load(key) == b"first state"  # the refused claim saved nothing
    assert not store.claim("run-1/update/3/0")  # the claim itself is on record


def test_a_stage_on_the_shared_connection_commits_or_rolls_back_as_one(tmp_path: Path) -> None:
    cache = ReleaseCache(tmp_path / "site.sqlite")
    sessions = SessionStore(cache)
    assert sessions.shares_connection_with(cache)
    assert not SessionStore(tmp_path / "site.sqlite").shares_connection_with(cache)
    cache.put("run-1", "update", 1, np.arange(4, dtype=np.uint32), {})
    key = ("run-1", "update", 1, 0)
    sessions.save(key, b"before")
    with pytest.raises(RuntimeError), cache.transaction():
        cache.bind("run-1", "update", 1, "run-1/update/1/0")
        sessions.save(key, b"after")
        raise RuntimeError("the stage failed before its answer left")
    other = sqlite3.connect(tmp_path / "site.sqlite")  # what a restarted agent would read
    (session,) = other.execute("SELECT session FROM release_cache").fetchone()
    assert session is None and sessions.load(key) == b"before"
    with cache.transaction():
        cache.bind("run-1", "update", 1, "run-1/update/1/0")
        sessions.save(key, b"after")
    (session,) = other.execute("SELECT session FROM release_cache").fetchone()
    assert session == "run-1/update/1/0" and sessions.load(key) == b"after"


def _participant(ident: int, site: str, pem: bytes) -> pb.ParticipantCertificate:
    return pb.ParticipantCertificate(
        participant_id=ident, site_id=site, certificate_pem=pem.decode()
    )


def test_a_verified_certificate_is_refused_once_it_has_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.create("test", validity_days=365, now=now)
    sites = {
        name: ca.issue(Identity("site", name), validity_days=30, now=now)
        for name in ("site-a", "site-b", "site-c")
    }
    db = tmp_path / "site.sqlite"
    cache = ReleaseCache(db)
    adapter = SecaggAdapter(
        "site-a",
        SitePolicy(),
        generate_key(),
        ca.certificate,
        SessionStore(cache),
        cache,
        AuditLog(tmp_path / "audit.sqlite", clock=time.time),
    )
    body = pb.SecaggTask(
        participants=[
            _participant(i, n, c.certificate_pem) for i, (n, c) in enumerate(sites.items())
        ]
    )
    first = adapter._verify_participants(body)
    assert [p.site for p in first] == ["site-a", "site-b", "site-c"]
    assert adapter._verify_participants(body) == first  # verified once, the same participants
    later = now + dt.timedelta(days=31)
    monkeypatch.setattr(secagg_adapter, "_now", lambda: later)
    with pytest.raises(SessionRefused, match="not valid at"):
        adapter._verify_participants(body)


def test_a_deferred_audit_head_is_written_at_flush_not_at_append(tmp_path: Path) -> None:
    database = tmp_path / "audit.sqlite"
    log = AuditLog(database, clock=time.time, defer_head=True)
    head_file = head_file_path(database)
    written = read_head_file(head_file).seq  # the empty log's head, written at creation
    log.append("site-a", "release_masked", {"round": 1})
    entry = log.append("site-a", "unmask_answered", {"round": 1})
    assert read_head_file(head_file).seq == written  # both committed, the file not yet
    assert log.entries()[-1].hash == entry.hash
    log.flush_head()
    assert read_head_file(head_file).seq == entry.seq
