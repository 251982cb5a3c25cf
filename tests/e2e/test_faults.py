"""Real processes killed at every stage of a round: the round completes with the survivors, the
secure sum is exactly the survivors' quantised updates, and no ledger ever passes its budget."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.store import CoordinatorStore
from fedctl.localfed import LocalFederation
from federation.wire.v1 import federation_pb2
from site_agent.ledger import PrivacyLedger
from tests.e2e.conftest import coordinator_store, e2e_plan, site_audit, submit, wait_until

pytestmark = pytest.mark.e2e

# (task kind, purpose, round): where hospital-c is SIGKILLed, one stage per round.
CRASHES = [
    ("train", "*", 1),
    ("secagg_advertise_keys", "update", 2),
    ("secagg_share_keys", "update", 3),
    ("secagg_masked_input", "update", 4),
    ("secagg_consistency_check", "update", 5),
    ("secagg_unmask", "update", 6),
]
# Killed after sending its masked input, it is still a survivor: its update is in the sum.
SURVIVES_IN_SUM = {5, 6}
# One last round with no crash: hospital-c, restarted, is back in the sum, and the final
# evaluation does not wait out a deadline for a dead site.
ROUNDS = len(CRASHES) + 1


def _recorded(record: Path, site: str, run_id: str, round_: int) -> np.ndarray:
    return np.load(record / f"{site}-{run_id}-r{round_}.npy")


def test_site_killed_at_every_stage_round_completes_with_exact_sum(
    federation: LocalFederation, tmp_path: Path
) -> None:
    record = tmp_path / "updates"
    crash_env = {"CONCORDIA_TEST_CRASH_AT": ",".join(f"{k}:{p}:{r}" for k, p, r in CRASHES)}
    federation.start_coordinator()
    federation.start_site("hospital-a", record=record)
    federation.start_site("hospital-b", record=record)
    federation.start_site("hospital-c", env=crash_env, record=record)
    stub = federation.admin()
    federation.wait_for_sites(stub, 3)
    # every crash costs one deadline: a training step takes the survivors ~2 s here, a stage
    # milliseconds, so shorter deadlines than the default e2e plan's still leave wide margins
    run_id = submit(stub, e2e_plan(ROUNDS, train_timeout=8.0, stage_timeout=2.5))

    for _, _, round_ in CRASHES:
        deadline = time.monotonic() + 120
        while federation.alive("hospital-c"):
            assert time.monotonic() < deadline, f"hospital-c was not killed in round {round_}"
            time.sleep(0.1)
        wait_until(stub, run_id, lambda s, r=round_: s.round > r)
        federation.start_site("hospital-c", env=crash_env, record=record)

    final = wait_until(stub, run_id, lambda s: False, timeout=180)
    assert final.state == federation_pb2.RUN_STATE_COMPLETED, final.message

    store = CoordinatorStore(coordinator_store(federation), clock=time.time)
    try:
        updates = [a for a in store.aggregates(run_id) if a[0] == "update"]
    finally:
        store.close()
    by_round = {}
    for purpose, round_, attempt, survivors, total in updates:
        del purpose
        by_round[round_] = (attempt, survivors, total)  # the last attempt of each round wins
    assert sorted(by_round) == list(range(1, ROUNDS + 1))
    crashed = {round_ for _, _, round_ in CRASHES}
    for round_, (_attempt, survivors, total) in by_round.items():
        expected_survivors = {"hospital-a", "hospital-b"}
        if round_ in SURVIVES_IN_SUM or round_ not in crashed:
            expected_survivors.add("hospital-c")
        assert set(survivors) == expected_survivors, f"round {round_}"
        plaintext = np.zeros_like(total)
        for site in survivors:
            plaintext += _recorded(record, site, run_id, round_)  # uint32: wraps mod 2^32
        np.testing.assert_array_equal(total, plaintext, err_msg=f"round {round_}")


def test_coordinator_killed_mid_unmask_resumes_and_keeps_the_retry_rule(
    federation: LocalFederation,
) -> None:
    # The coordinator dies on the first Unmask answer of round 2: that site has answered an
    # Unmask for its round-2 update in a session that will never finish.
    federation.processes.clear()
    crash = {"CONCORDIA_TEST_CRASH_AT": "secagg_unmask:update:2"}
    federation._spawn(
        "coordinator",
        [
            "-m",
            "coordinator",
            "--config",
            str(federation.kits / "coordinator" / "coordinator.toml"),
        ],
        crash,
    )
    for hospital in federation.hospitals:
        federation.start_site(hospital)
    stub = federation.admin()
    federation.wait_for_sites(stub, 3)
    run_id = submit(stub, e2e_plan(3))

    deadline = time.monotonic() + 180
    while federation.alive("coordinator"):
        assert time.monotonic() < deadline, "the coordinator never reached round 2's unmask"
        time.sleep(0.2)
    federation.start_coordinator()  # same store, no crash hook
    stub = federation.admin()
    federation.wait_ready(stub)
    final = wait_until(stub, run_id, lambda s: False, timeout=240)
    assert final.state == federation_pb2.RUN_STATE_COMPLETED, final.message

    plan_epsilon = 3.0
    answered_somewhere = False
    for hospital in federation.hospitals:
        ledger = PrivacyLedger(
            federation.site_kit(hospital) / "state" / "site.sqlite", clock=time.time
        )
        assert ledger.epsilon_run(run_id, 1e-5) <= plan_epsilon + 1e-9
        events = site_audit(federation, hospital)
        unmasked = {
            (d["purpose"], d["round"], d["attempt"])
            for a, d in events
            if a == "unmask_answered" and d["run_id"] == run_id
        }
        masked_with = {
            (d["purpose"], d["round"], d["attempt"]): d["release_attempt"]
            for a, d in events
            if a == "release_masked" and d["run_id"] == run_id
        }
        # The retry rule: no release is used in two sessions that both reached Unmask.
        used: dict[tuple[str, int], set[object]] = {}
        for purpose, round_, attempt in unmasked:
            release = masked_with[(purpose, round_, attempt)]
            seen = used.setdefault((purpose, round_), set())
            assert release not in seen, f"{hospital} reused a release across two unmasks"
            seen.add(release)
        round2 = sorted(a for p, r, a in unmasked if (p, r) == ("update", 2))
        if len(round2) > 1:
            answered_somewhere = True
    assert answered_somewhere, "no site had answered an Unmask before the crash: test is vacuous"
