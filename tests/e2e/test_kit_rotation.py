"""`fedctl provision add-site` / `renew` / `revoke` on a running federation of real processes.

A three-hospital consortium runs with its coordinator up. The operator adds a fourth site (its
agent connects and `fedctl sites` lists it online), renews hospital-a's certificate (same CA: the
old certificate is refused as superseded, the agent restarted with the new kit connects again),
and revokes hospital-c (the coordinator refuses it, and its log names the site, the certificate's
subject and fingerprint). Nobody restarts the coordinator: it re-reads the roster `provision`
rewrote in its kit. The others keep running, unrestarted: the first session naming a renewed or
added certificate their roster lacks makes them say Hello again and take the newer roster, and a
one-round run completes with a, b and d.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fedctl.cli import run as fedctl
from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.wire.v1 import federation_pb2
from tests.e2e.conftest import HOSPITALS, e2e_plan, submit, wait_until

pytestmark = pytest.mark.e2e

NEW_SITE = "hospital-d"
WAIT_S = 90.0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[LocalFederation, list[Path], list[dict[str, str]]]]:
    fed = LocalFederation(tmp_path / "fed", HOSPITALS)
    fed.prepare()
    _, _, csvs, names = flchain_hospitals(fed)
    try:
        fed.start_all()
        yield fed, csvs, names
    finally:
        fed.stop_all()


def fedctl_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    capsys.readouterr()
    assert fedctl([*args, "--output", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def sites_now(fed: LocalFederation, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    listed = fedctl_json(["sites", "--config", str(fed.operator_config())], capsys)
    return {site["site_id"]: site for site in listed["sites"]}


def until(what: str, check: Any, fed: LocalFederation) -> Any:
    """Poll `check()` until it returns something truthy; fail naming `what` (with the
    coordinator's log) if it does not within WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}; coordinator log:\n{fed.log_text('coordinator')[-4000:]}")
        time.sleep(0.3)


def coordinator_line(fed: LocalFederation, *needles: str) -> str | None:
    for line in fed.log_text("coordinator").splitlines():
        if all(needle in line for needle in needles):
            return line
    return None


def test_add_renew_and_revoke_on_a_running_federation(
    running: tuple[LocalFederation, list[Path], list[dict[str, str]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    fed, csvs, names = running
    out = ["--out", str(fed.kits)]

    # add-site: a kit from the same CA; the coordinator admits it without a restart.
    added = fedctl_json(["provision", "add-site", NEW_SITE, *out], capsys)
    assert added["action"] == "add-site" and added["superseded"] is None
    mapping = names[0]
    columns = {k: v for k, v in mapping.items() if k not in ("time", "event")}
    fed.configure_site(NEW_SITE, csvs[0], columns, mapping["time"], mapping["event"])
    fed.start_site(NEW_SITE)
    until(
        f"{NEW_SITE} is not listed online by fedctl sites",
        lambda: sites_now(fed, capsys).get(NEW_SITE, {}).get("state") == "online",
        fed,
    )

    # renew: the old certificate is superseded and refused; the restarted agent connects.
    renewed = fedctl_json(["provision", "renew", "hospital-a", *out], capsys)
    old, new = renewed["superseded"][:16], renewed["fingerprint"][:16]
    assert old and new and old != new
    refused_old = until(
        "the coordinator did not refuse hospital-a's superseded certificate",
        lambda: coordinator_line(fed, "refused", f"sha256 {old}", "superseded"),
        fed,
    )
    assert "CN=hospital-a" in refused_old, refused_old

    # revoke: the coordinator refuses hospital-c, and says so naming it.
    revoked = fedctl_json(
        ["provision", "revoke", "hospital-c", *out, "--reason", "left the consortium"], capsys
    )
    assert revoked["action"] == "revoke"
    line = until(
        "the coordinator did not refuse the revoked hospital-c",
        lambda: coordinator_line(fed, "refused", "CN=hospital-c", "revoked"),
        fed,
    )
    assert "left the consortium" in line and revoked["fingerprint"][:16] in line, line

    # hospital-a restarted with its renewed kit connects. b and d keep running: they take the
    # newer roster when the first session names a's renewed certificate (they say Hello again).
    restarted_at_ms = time.time() * 1000
    fed.kill("hospital-a")
    fed.start_site("hospital-a")
    until(
        "hospital-a did not come back online with its renewed kit",
        lambda: (
            sites_now(fed, capsys).get("hospital-a", {}).get("last_seen_unix_ms", 0)
            > restarted_at_ms
        ),
        fed,
    )
    assert coordinator_line(fed, "refused", f"sha256 {new}") is None

    # The others keep working: a short run completes with a (renewed), b and d (added).
    stub = fed.admin()
    fed.wait_for_sites(stub, 3)
    run_id = submit(stub, e2e_plan(1))
    final = wait_until(stub, run_id, lambda s: False, timeout=300)
    assert final.state == federation_pb2.RUN_STATE_COMPLETED, final
    accepted = {s.site_id for s in final.sites if s.epsilon_spent > 0}
    assert accepted == {"hospital-a", "hospital-b", NEW_SITE}, final
    assert "hospital-c" not in {s.site_id for s in final.sites}, final
    assert "Traceback" not in fed.log_text("coordinator")
