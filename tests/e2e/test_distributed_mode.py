"""Distributed DP-SGD over real processes: three hospitals each add a third of the noise, secure
aggregation sums the shares, the coordinator steps on the pooled noisy gradient.

The run must complete, the exported model must have learned something, and every site's ε must
be what an independent accountant computes from the mechanisms its ledger logged, in both views
(under its trust assumption, and from its own noise share alone).
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest

from fedctl.demo import plan_text, score
from fedctl.localfed import LocalFederation, flchain_hospitals
from fedctl.runs import exported_vector
from federation.plan import parse_plan
from federation.wire.v1 import admin_pb2, federation_pb2
from site_agent.accounting import Entry, epsilon_of
from tests.e2e.conftest import HOSPITALS, submit, wait_until

pytestmark = pytest.mark.e2e

ROUNDS = 12


def distributed_plan() -> str:
    text = plan_text(ROUNDS, server_optimizer="fedadam", server_learning_rate=0.05)
    text = text.replace("[training]\n", '[training]\nmode = "distributed"\nsample_rate = 1.0\n')
    text = text.replace("quorum = 2 ", "quorum = 3 ")
    return text.replace("[privacy]\n", "[privacy]\nnoise_shares = 3\n")


def _entries(rows: list[sqlite3.Row], column: str) -> list[Entry]:
    return [
        Entry(
            float(r[column] if r[column] is not None else r["noise_multiplier"]),
            float(r["sample_rate"]),
            int(r["steps"]),
            mechanism=r["mechanism"],
            l2_sensitivity=r["l2_sensitivity"],
            l1_sensitivity=r["l1_sensitivity"],
        )
        for r in rows
    ]


def test_a_distributed_run_completes_and_every_site_reports_its_true_epsilon(
    tmp_path: Path,
) -> None:
    federation = LocalFederation(tmp_path / "fed", HOSPITALS)
    federation.prepare()
    policy = {"trusted_noise_sites": 3, "min_session_sites": 3}
    train, test, _csvs, _names = flchain_hospitals(federation, policy)
    text = distributed_plan()
    plan = parse_plan(text)
    try:
        stub = federation.start_all()
        run_id = submit(stub, text)
        final = wait_until(stub, run_id, lambda s: False, timeout=400)
        assert final.state == federation_pb2.RUN_STATE_COMPLETED, final.message
        export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=run_id))
    finally:
        federation.stop_all()

    vector = exported_vector(export, plan)
    std = json.loads(export.model_card_json)["standardization"]
    federated = score(plan, vector, std["means"], std["stds"], train, test)
    assert federated.c_index >= 0.7, federated  # the null model ranks nobody: 0.5

    delta = plan.privacy.delta
    for hospital in HOSPITALS:
        conn = sqlite3.connect(federation.site_kit(hospital) / "state" / "site.sqlite")
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT * FROM ledger_releases WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()
        conn.close()
        purposes = [r["purpose"] for r in rows]
        assert purposes[0] == "stats" and purposes.count("update") == ROUNDS
        assert {r["mechanism"] for r in rows} == {"skellam"}
        train_rows = [r for r in rows if r["partition"] in ("train", "both")]
        holdout_rows = [r for r in rows if r["partition"] in ("holdout", "both")]
        for view, column in (("assumed", "noise_multiplier"), ("own", "own_noise_multiplier")):
            independent = max(
                epsilon_of(_entries(train_rows, column), delta, "rdp"),
                epsilon_of(_entries(holdout_rows, column), delta, "rdp"),
            )
            last = rows[-1]["epsilon_run" if view == "assumed" else "epsilon_run_own"]
            assert math.isclose(last, independent, rel_tol=1e-6), (hospital, view)
        assumed, own = rows[-1]["epsilon_run"], rows[-1]["epsilon_run_own"]
        assert 0 < assumed <= plan.privacy.epsilon + 1e-9
        assert own > assumed  # a third of the noise alone protects less
