"""A whole DP + secure-aggregation run over real processes, scored on the common held-out test set
against each hospital trained alone with the same budget and pooled non-private training; the
model card and the ledgers tell the truth about what was spent."""

from __future__ import annotations

import json
import time

import pytest

from fedctl.demo import compare, plan_text
from fedctl.localfed import LocalFederation, flchain_hospitals
from federation.wire.v1 import admin_pb2, federation_pb2
from site_agent.ledger import PrivacyLedger
from tests.e2e.conftest import HOSPITALS, submit, wait_until

pytestmark = pytest.mark.e2e


def test_full_run_beats_the_hospitals_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    federation = LocalFederation(tmp_path / "fed", HOSPITALS)
    federation.prepare()
    train, test, _csvs, _names = flchain_hospitals(federation)
    try:
        stub = federation.start_all()
        run_id = submit(stub, plan_text(10))
        final = wait_until(stub, run_id, lambda s: False, timeout=400)
        assert final.state == federation_pb2.RUN_STATE_COMPLETED, final.message
        export = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=run_id))
    finally:
        federation.stop_all()

    rows = dict(compare(export, train, test, federation.site_configs()))
    federated = rows.pop("federated (DP ε=3, secagg)")
    pooled = rows.pop("pooled, non-private")
    alone = {name: s for name, s in rows.items() if "alone" in name}
    assert len(alone) == len(HOSPITALS)
    # Every hospital alone trains on exactly the rows its agent trains on, with the same ε (and
    # its own exact moments, where the federation pays for a noised statistics release); its score
    # is the mean of five DP trainings. Over eight demo runs the federated model led the best of
    # them by 0.0009-0.0082 (mean 0.0037, sd 0.0025): each side is a DP-noised estimate on a
    # freshly keyed split, so a strict "beats the best" would fail in roughly one run in fourteen.
    # Asserted: strictly better than the average hospital alone (margin 0.005-0.016), and never more
    # than 0.004 (≈ 3 sd of the margin) below the best one.
    mean_alone = sum(s.c_index for s in alone.values()) / len(alone)
    best_alone = max(s.c_index for s in alone.values())
    assert federated.c_index > mean_alone, (federated, alone)
    assert federated.c_index >= best_alone - 0.004, (federated, alone)
    # within 0.01 of pooled non-private training (0.795); DP does not beat it either
    assert pooled.c_index - 0.01 <= federated.c_index <= pooled.c_index + 0.005, (federated, pooled)

    # The model card's ε per site is what each site's own ledger says, within the plan's budget.
    card = json.loads(export.model_card_json)
    for hospital in HOSPITALS:
        ledger = PrivacyLedger(
            federation.site_kit(hospital) / "state" / "site.sqlite", clock=time.time
        )
        spent = ledger.epsilon_run(run_id, 1e-5)
        assert 0 < spent <= 3.0 + 1e-9
        assert card["privacy"][hospital]["epsilon_run"] == pytest.approx(spent, rel=1e-6)
