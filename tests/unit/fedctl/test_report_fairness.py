"""The card and the report show the final evaluation's subgroup figures and importances with
intervals, and flag exactly the gaps that exceed their uncertainty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedctl.model_card import build_model_card, to_markdown
from fedctl.report import write_report
from federation.evaluation_release import EvaluationRelease
from federation.plan_evaluation import Subgroup
from federation.releases import MetricsLayout
from federation.subgroup_metrics import release_metrics
from federation.wire.v1 import admin_pb2
from tests.unit.fedctl.test_report import CONSORTIUM, crafted_export, crafted_status

pytestmark = pytest.mark.unit

RELEASE = EvaluationRelease(
    MetricsLayout(),
    groups=(
        Subgroup("sex", ("F", "M"), 1, (), False, False),
        Subgroup("age", ("[40, 70)", "[70, 110]"), 0, (70.0,), True, False),
    ),
    permuted=("age", "sex"),
)
# the last two coordinates: observed events and expected / cap (cap 4); permuted blocks carry none
BLOCKS = np.array(
    [
        [6000.0, 1500.0, 280.0, 9900.0, 15000.0, 1500.0, 375.0],  # overall: C 0.66, O/E 1
        [3000.0, 750.0, 140.0, 5400.0, 7500.0, 750.0, 187.5],  # F: C 0.72, O/E 1
        [3000.0, 750.0, 140.0, 4500.0, 7500.0, 750.0, 187.5],  # M: C 0.60 (a real gap), O/E 1
        [3000.0, 750.0, 140.0, 4950.0, 7500.0, 750.0, 234.375],  # age bands: equal C, O/E 0.8
        [3000.0, 750.0, 140.0, 4950.0, 7500.0, 750.0, 140.625],  # and 1.33 (a real gap)
        [6000.0, 1500.0, 300.0, 8400.0, 15000.0, 0.0, 0.0],  # age permuted: C 0.56, ΔC 0.10
        [6000.0, 1500.0, 280.0, 9900.0, 15000.0, 0.0, 0.0],  # sex permuted: ΔC 0
    ]
)


def fairness_export() -> admin_pb2.ExportRunResponse:
    """The crafted export whose final evaluation carries subgroup and importance figures."""
    export = crafted_export()
    card = json.loads(export.model_card_json)
    final = [r for r in card["history"] if r["purpose"] == "metrics"][-1]
    final["metrics"] = release_metrics(RELEASE, BLOCKS, 0.5)
    export.model_card_json = json.dumps(card, sort_keys=True)
    return export


def test_the_card_lists_subgroups_and_flags_only_the_real_gap() -> None:
    export = fairness_export()
    card = build_model_card(json.loads(export.model_card_json), crafted_status(), export.round)
    analyses = card["quantitative_analyses"]
    levels = {(s["feature"], s["level"]) for s in analyses["subgroups"]}
    assert levels == {("sex", "F"), ("sex", "M"), ("age", "[40, 70)"), ("age", "[70, 110]")}
    for entry in analyses["subgroups"]:
        low, high = entry["c_windowed_interval_95"]
        assert low <= entry["c_windowed"] <= high
        low, high = entry["oe_ratio_interval_95"]
        assert low <= entry["oe_ratio"] <= high and entry["oe_ratio_resolvable"]
    flagged = {(g["feature"], g["metric"]) for g in analyses["subgroup_gaps"] if g["flagged"]}
    assert flagged == {("sex", "c_windowed"), ("age", "oe_ratio")}
    # calibration in the large, with an interval that is not clipped at 1 like C's and IBS's
    oe = {m["name"]: m for m in card["metrics"]["results"]}["oe_ratio"]
    assert oe["value"] == pytest.approx(1.0)
    assert oe["interval_95_dp_noise"][0] < 1.0 < oe["interval_95_dp_noise"][1]
    assert oe["resolvable"] is True
    assert "oe_ratio" in card["metrics"]["definitions"]
    markdown = to_markdown(card)
    assert "oe_ratio_interval_95" in markdown and "metric: oe_ratio" in markdown
    importance = {r["feature"]: r for r in analyses["permutation_importance"]}
    assert importance["age"]["delta_c"] == pytest.approx(0.10, abs=0.02)
    assert importance["age"]["interval_95_dp_noise"][0] > 0  # resolvably important
    assert (
        importance["sex"]["interval_95_dp_noise"][0]
        < 0
        < importance["sex"]["interval_95_dp_noise"][1]
    )
    assert any("c_windowed by sex" in line for line in card["ethical_considerations"])
    assert any("oe_ratio by age" in line for line in card["ethical_considerations"])
    per_round = analyses["per_round"][-1]
    assert not any(":" in key for key in per_round)  # the blocks are not in the round table


def test_the_report_has_the_subgroup_table_and_the_importance_bars(tmp_path: Path) -> None:
    path = write_report(fairness_export(), crafted_status(), tmp_path, consortium=CONSORTIUM)
    page = path.read_text()
    subgroups = page[page.index('<section id="subgroups">') :]
    subgroups = subgroups[: subgroups.index("</section>")]
    assert "[70, 110]" in subgroups and "<td>F</td>" in subgroups
    assert subgroups.count("⚠ yes") == 2  # sex's C gap and age's O/E gap, nothing else
    assert "O/E (95% CI)" in subgroups and "<td>oe_ratio</td>" in subgroups
    assert "Consortium calibration in the large" in subgroups
    assert "1.000 (" in subgroups  # the consortium's O/E with its interval
    assert subgroups.count("<img") == 1
    importance = page[page.index('<section id="importance">') :]
    assert importance.count("<img") == 1


def test_without_subgroups_the_report_says_why(tmp_path: Path) -> None:
    path = write_report(crafted_export(), crafted_status(), tmp_path, consortium=CONSORTIUM)
    page = path.read_text()
    assert "The plan names no subgroups" in page
    assert '<section id="importance">' not in page
