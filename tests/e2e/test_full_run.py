"""A whole DP + secure-aggregation run over real processes: it completes, the exported model
loads and has learned something, and the model card and the ledgers tell the truth about what
was spent.

How much better the federated model is than each hospital alone or than pooled non-private
training is a measurement, not something that holds on every run (each side is a DP-noised
estimate on a freshly keyed split): `benchmarks/round_bench.py --utility-only` reports those
margins (benchmarks/README.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fedctl.demo import plan_text, score
from fedctl.localfed import LocalFederation, flchain_hospitals
from fedctl.runs import write_export
from federation.plan import RunPlan
from federation.wire.v1 import admin_pb2, federation_pb2
from site_agent.ledger import PrivacyLedger
from survival.models import build_model, flat_parameters
from survival.spec import baseline_logits, initial_parameters
from tests.e2e.conftest import HOSPITALS, submit, wait_until

pytestmark = pytest.mark.e2e

ROUNDS = 10


def test_full_run_completes_and_its_model_and_privacy_record_hold(tmp_path: Path) -> None:
    federation = LocalFederation(tmp_path / "fed", HOSPITALS)
    federation.prepare()
    train, test, csvs, names = flchain_hospitals(federation)
    # one hospital's policy publishes its own final figures (a separate, separately charged
    # release); the others keep the default, under which nothing but the secure sums leaves
    columns = {k: v for k, v in names[0].items() if k not in ("time", "event")}
    federation.configure_site(
        HOSPITALS[0],
        csvs[0],
        columns,
        names[0]["time"],
        names[0]["event"],
        {"publish_own_metrics": True},
    )
    try:
        stub = federation.start_all()
        run_id = submit(stub, plan_text(ROUNDS))
        final = wait_until(stub, run_id, lambda s: False, timeout=400)
        assert final.state == federation_pb2.RUN_STATE_COMPLETED, final.message
        export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=run_id))
    finally:
        federation.stop_all()

    # The export is what an analyst gets: model.pt loads into the plan's model with torch alone.
    paths = write_export(export, tmp_path / "export")
    card = json.loads(paths["card"].read_text())
    plan = RunPlan.model_validate(card["plan"])
    assert card["round"] == ROUNDS and card["plan_sha256"] == plan.sha256()
    n_features, n_intervals = plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    model = build_model(plan.model, n_features, n_intervals)
    model.load_state_dict(torch.load(paths["model"], weights_only=True))
    vector = flat_parameters(model)
    np.testing.assert_array_equal(vector, np.frombuffer(export.global_vector.float32_le, "<f4"))

    # It has learned something: the null model (the baseline hazard alone, the same for every
    # patient) ranks nobody (C = 0.5) and has IBS 0.129 on this test set; the federated model
    # measured C 0.789-0.796 and IBS 0.096-0.101 (benchmarks/README.md).
    std = card["standardization"]
    federated = score(plan, vector, std["means"], std["stds"], train, test)
    events, at_risk = plan.time_grid.interval_counts(
        train["time"].to_numpy(float), train["event"].to_numpy(int)
    )
    null_vector = initial_parameters(
        plan.model, n_features, n_intervals, plan.seed, baseline_logits(events, at_risk)
    )
    null = score(plan, null_vector, std["means"], std["stds"], train, test)
    assert null.c_index == pytest.approx(0.5)
    assert federated.c_index >= 0.75, federated
    assert federated.ibs < null.ibs, (federated, null)

    # The model card's ε per site is what each site's own ledger says, within the plan's budget.
    assert set(card["privacy"]) == set(HOSPITALS)
    for hospital in HOSPITALS:
        ledger = PrivacyLedger(
            federation.site_kit(hospital) / "state" / "site.sqlite", clock=time.time
        )
        spent = ledger.epsilon_run(run_id, plan.privacy.delta)
        assert 0 < spent <= plan.privacy.epsilon + 1e-9
        assert card["privacy"][hospital]["epsilon_run"] == pytest.approx(spent, rel=1e-6)

    # The publishing hospital charged its published release to the held-out partition (the ε
    # above still holds); it is in the final record beside the sum, the others are not.
    sigmas: dict[str, list[float]] = {}
    for hospital in HOSPITALS:
        ledger = PrivacyLedger(
            federation.site_kit(hospital) / "state" / "site.sqlite", clock=time.time
        )
        published = [r for r in ledger.releases(run_id) if r["purpose"] == "published_metrics"]
        assert all(r["partition"] == "holdout" for r in published)
        sigmas[hospital] = [float(r["noise_multiplier"]) for r in published]
    assert [len(sigmas[h]) for h in HOSPITALS] == [1, 0, 0]
    last = [r for r in card["history"] if r["purpose"] == "metrics"][-1]["metrics"]
    own = f"site:{HOSPITALS[0]}:"
    assert last[own + "c_windowed_se"] > 0 and last[own + "patients"] > 0
    assert last[own + "noise_multiplier"] == sigmas[HOSPITALS[0]][0]
    assert not any(k.startswith(tuple(f"site:{h}:" for h in HOSPITALS[1:])) for k in last)

    # The demo plan names subgroups (sex, age band): the final evaluation's record carries one
    # set of figures per level, decoded from their own secure sums, each with its uncertainty.
    from federation.subgroup_metrics import subgroup_rows

    final_eval = [r for r in card["history"] if r["purpose"] == "metrics"][-1]
    assert final_eval["round"] == ROUNDS
    levels = {(r["feature"], r["level"]): r for r in subgroup_rows(final_eval["metrics"])}
    assert set(levels) == {("sex", "F"), ("sex", "M"), ("age", "[40, 70)"), ("age", "[70, 110]")}
    for row in levels.values():
        assert row["patients"] > 0 and row["c_windowed_se"] > 0, row
    # and calibration in the large (observed / expected events) with its uncertainty
    assert final_eval["metrics"]["expected"] > 0 and final_eval["metrics"]["oe_ratio_se"] > 0
    # the levels of one feature split the consortium's held-out patients (up to the noise)
    total = final_eval["metrics"]["patients"]
    women_and_men = levels[("sex", "F")]["patients"] + levels[("sex", "M")]["patients"]
    assert abs(women_and_men - total) < 6 * final_eval["metrics"]["patients_se"] * 2
