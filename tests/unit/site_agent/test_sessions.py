"""The site's own derivation of a session, its policy floors, and the release binding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.plan import RunPlan, parse_plan
from federation.releases import Purpose
from federation.sessions import majority_threshold, session_config
from federation.tasks import SessionKey
from secagg.config import SessionConfig
from site_agent.cache import ReleaseBound, ReleaseCache, SessionStore
from site_agent.config import SitePolicy
from site_agent.policy import check_plan
from site_agent.sessions import SessionRefused, check_offered, expected_config

pytestmark = pytest.mark.unit

PLAN = """
name = "trial"
quorum = {quorum}
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[time_grid]
cuts = [1000.0, 2000.0]
[training]
rounds = 3
[secagg]
max_colluding_sites = {colluding}
max_attempts = 3
"""
SITES = ["s-a", "s-b", "s-c", "s-d", "s-e", "s-f"]


def plan(quorum: int = 3, colluding: int = 0) -> RunPlan:
    return parse_plan(PLAN.format(quorum=quorum, colluding=colluding))


def participants(n: int) -> dict[int, str]:
    return {i + 1: SITES[i] for i in range(n)}


STEP = SessionKey("run-1", Purpose.STATS, 0, 0)


def test_the_site_derives_exactly_the_coordinators_honest_config() -> None:
    p = plan()
    offered = session_config(p, "run-1", Purpose.STATS, 0, 0, participants(4))
    derived = expected_config(p, SitePolicy(), "s-a", STEP, participants(4))
    assert derived.to_bytes() == offered.to_bytes()
    assert derived.threshold == 3
    check_offered(derived, offered)


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("threshold", 2, "threshold 2 (this site derives 3)"),
        ("vector_length", 999, "vector_length 999"),
        ("round", 1, "round 1"),
        ("context", b"another run", "context"),
    ],
)
def test_any_field_the_coordinator_changes_is_named(field: str, value: object, needle: str) -> None:
    p = plan()
    derived = expected_config(p, SitePolicy(), "s-a", STEP, participants(4))
    fields = {
        "context": derived.context,
        "round": derived.round,
        "threshold": derived.threshold,
        "participants": derived.participants,
        "vector_length": derived.vector_length,
    }
    fields[field] = value
    with pytest.raises(SessionRefused, match=needle.replace("(", r"\(").replace(")", r"\)")):
        check_offered(derived, SessionConfig(**fields))  # type: ignore[arg-type]


def test_participant_lists_are_bound_into_the_context() -> None:
    p = plan()
    one = expected_config(p, SitePolicy(), "s-a", STEP, {1: "s-a", 2: "s-b", 3: "s-c"})
    two = expected_config(p, SitePolicy(), "s-a", STEP, {1: "s-a", 2: "s-b", 3: "s-d"})
    assert one.participants == two.participants and one.digest() != two.digest()


@pytest.mark.parametrize(
    ("listed", "needle"),
    [
        ({1: "s-a", 2: "s-b"}, "below this site's floor of 3"),
        ({1: "s-a", 2: "s-b", 3: "s-b"}, "listed twice"),
        ({1: "s-b", 2: "s-c", 3: "s-d"}, "not a participant"),
    ],
)
def test_sessions_the_site_refuses(listed: dict[int, str], needle: str) -> None:
    with pytest.raises(SessionRefused, match=needle):
        expected_config(plan(), SitePolicy(), "s-a", STEP, listed)


def test_the_policy_floor_is_the_sites_even_under_a_lower_plan_quorum() -> None:
    lenient = plan(quorum=2)
    expected_config(lenient, SitePolicy(min_session_sites=2), "s-a", STEP, participants(2))
    with pytest.raises(SessionRefused, match="floor of 3"):
        expected_config(lenient, SitePolicy(), "s-a", STEP, participants(2))


def test_plans_sites_list_bounds_the_participants() -> None:
    text = PLAN.format(quorum=3, colluding=0).replace(
        'name = "trial"', 'name = "trial"\nsites = ["s-a", "s-b", "s-c"]'
    )
    with pytest.raises(SessionRefused, match=r"\['s-d'\] are not among the plan's sites"):
        expected_config(parse_plan(text), SitePolicy(), "s-a", STEP, participants(4))


@pytest.mark.parametrize(
    ("step", "needle"),
    [
        (SessionKey("r", Purpose.STATS, 1, 0), "round 0, not round 1"),
        (SessionKey("r", Purpose.UPDATE, 0, 0), "outside the plan's rounds 1..3"),
        (SessionKey("r", Purpose.METRICS, 4, 0), "outside the plan's rounds 1..3"),
        (SessionKey("r", Purpose.UPDATE, 1, 3), "max_attempts 3"),
    ],
)
def test_rounds_and_attempts_outside_the_plan(step: SessionKey, needle: str) -> None:
    with pytest.raises(SessionRefused, match=needle):
        expected_config(plan(), SitePolicy(), "s-a", step, participants(3))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 40), c=st.integers(0, 20), quorum=st.integers(2, 40))
def test_every_accepted_session_has_an_honest_majority_threshold(
    n: int, c: int, quorum: int
) -> None:
    """Whatever plan and policy: a session the site joins has 2t − c > n, n ≥ c + 2, t ≤ n."""
    if quorum < c + 2:
        return  # the plan itself is invalid (tested in test_plan)
    p = plan(quorum=quorum, colluding=c)
    policy = SitePolicy(min_session_sites=max(2, c + 2), max_colluding_sites=c)
    names = {i + 1: f"s-{i:02d}" for i in range(n)}
    try:
        config = expected_config(p, policy, "s-00", STEP, names)
    except SessionRefused:
        assert n < max(quorum, c + 2)
        return
    t = config.threshold
    assert 2 * t - c > n and n >= c + 2 and t <= n
    assert t == max(majority_threshold(n, c), -(-2 * n // 3), 2)


def test_plan_refused_when_it_assumes_fewer_colluders_or_a_lower_quorum() -> None:
    reason = check_plan(
        plan(quorum=3, colluding=0),
        SitePolicy(min_session_sites=4, max_colluding_sites=1),
        cohort_size=500,
        lifetime_spent=0.0,
    )
    assert reason is not None
    assert "plan.quorum 3 is below policy.min_session_sites 4" in reason
    assert "plan.secagg.max_colluding_sites 0 is below policy.max_colluding_sites 1" in reason


def test_policy_floor_must_leave_two_honest_sites() -> None:
    with pytest.raises(ValueError, match="max_colluding_sites"):
        SitePolicy(min_session_sites=2, max_colluding_sites=1)


# ---------------------------------------------------------------------- one release, one session
def _cache(tmp_path: Path) -> ReleaseCache:
    return ReleaseCache(tmp_path / "site.sqlite")


def _release(cache: ReleaseCache, value: int = 7) -> None:
    cache.put("run-1", "stats", 0, np.full(4, value, dtype=np.uint32), {"attempt": 0})


def test_a_release_binds_to_its_first_session_forever(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    _release(cache)
    assert cache.reusable("run-1", "stats", 0)
    bound = cache.bind("run-1", "stats", 0, "run-1/stats/0/0")
    assert bound.session == "run-1/stats/0/0" and bound.sha256
    cache.bind("run-1", "stats", 0, "run-1/stats/0/0")  # the same session again: fine
    with pytest.raises(ReleaseBound, match="already masked in session run-1/stats/0/0"):
        cache.bind("run-1", "stats", 0, "run-1/stats/0/1")
    assert not cache.reusable("run-1", "stats", 0)  # a retry makes a new, newly charged one
    cache.close()
    reopened = _cache(tmp_path)  # the binding survives a restart
    with pytest.raises(ReleaseBound):
        reopened.bind("run-1", "stats", 0, "run-1/stats/0/2")


def test_a_new_release_for_a_retried_step_is_unbound(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    _release(cache, 7)
    cache.bind("run-1", "stats", 0, "run-1/stats/0/0")
    _release(cache, 8)
    cached = cache.get("run-1", "stats", 0)
    assert cached is not None and cached.session is None and cached.vector is not None
    assert int(cached.vector[0]) == 8
    cache.bind("run-1", "stats", 0, "run-1/stats/0/1")


def test_vectors_are_deleted_at_the_end_of_a_run_but_hashes_and_bindings_stay(
    tmp_path: Path,
) -> None:
    cache = _cache(tmp_path)
    _release(cache)
    sha = cache.bind("run-1", "stats", 0, "run-1/stats/0/0").sha256
    assert cache.forget_vectors("run-1") == 1
    cached = cache.get("run-1", "stats", 0)
    assert cached is not None and cached.vector is None
    assert cached.sha256 == sha and cached.session == "run-1/stats/0/0"
    assert not cache.reusable("run-1", "stats", 0)
    with pytest.raises(LookupError):
        cache.bind("run-1", "stats", 0, "run-1/stats/0/0")


def test_an_older_cache_table_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "site.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE release_cache (run_id TEXT NOT NULL, purpose TEXT NOT NULL,"
            " round INTEGER NOT NULL, vector BLOB NOT NULL, meta TEXT NOT NULL,"
            " unmasked INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (run_id, purpose, round))"
        )
        conn.execute(
            "INSERT INTO release_cache VALUES ('old', 'stats', 0, ?, '{}', 0)",
            (np.zeros(2, "<u4").tobytes(),),
        )
    cache = ReleaseCache(path)
    cached = cache.get("old", "stats", 0)
    assert cached is not None and cached.session is None
    _release(cache)
    cache.bind("run-1", "stats", 0, "run-1/stats/0/0")


def test_a_session_is_advertised_once_ever(tmp_path: Path) -> None:
    store = SessionStore(tmp_path / "site.sqlite")
    assert store.claim("run-1/stats/0/0")
    assert not store.claim("run-1/stats/0/0")
    store.save(("run-1", "stats", 0, 0), b"state")
    store.drop_run("run-1")  # the run ended: secrets go, the log stays
    assert store.load(("run-1", "stats", 0, 0)) is None
    assert not store.claim("run-1/stats/0/0")
    assert store.claim("run-1/stats/0/1")
