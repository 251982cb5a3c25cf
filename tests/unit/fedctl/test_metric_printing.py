"""Metrics with uncertainty print as `value ± half-width` or `not resolvable`, never bare."""

from __future__ import annotations

import io
import json

import pytest

from fedctl import progress, runs
from federation.metric_intervals import Z95
from federation.wire.v1 import admin_pb2, federation_pb2

pytestmark = pytest.mark.unit

RESOLVED = {
    "c_windowed": 0.62,
    "c_windowed_se": 0.05 / Z95,
    "c_windowed_lo": 0.57,
    "c_windowed_hi": 0.67,
    "c_windowed_resolvable": 1.0,
    "ibs": 0.18,
    "ibs_se": 0.02 / Z95,
    "ibs_lo": 0.16,
    "ibs_hi": 0.2,
    "ibs_resolvable": 1.0,
    "events": 0.0,
    "events_se": 340.0,
    "events_lo": 0.0,
    "events_hi": 592.0,
    "events_resolvable": 0.0,
}
DROWNED = {**RESOLVED, "c_windowed": 0.0, "c_windowed_se": 0.31 / Z95, "c_windowed_resolvable": 0.0}


def _status(
    metrics: dict[str, float], state: int = federation_pb2.RUN_STATE_RUNNING
) -> admin_pb2.RunStatus:
    return admin_pb2.RunStatus(
        run_id="run-x",
        state=state,
        stage=admin_pb2.RUN_STAGE_TRAIN,
        round=3,
        total_rounds=10,
        latest_metrics=[admin_pb2.Metric(name=k, value=v) for k, v in sorted(metrics.items())],
        metrics_round=2,
    )


def test_status_line_shows_the_interval() -> None:
    line = progress.change_line(_status(RESOLVED))
    assert "c_windowed 0.620 ± 0.050, ibs 0.180 ± 0.020 (round 2)" in line
    assert "_se" not in line and "events" not in line
    assert "c_windowed 0.620 ± 0.050, ibs 0.180 ± 0.020" in runs.status_line(_status(RESOLVED))


def test_a_drowned_metric_reads_not_resolvable() -> None:
    line = progress.change_line(_status(DROWNED))
    assert "c_windowed not resolvable at this ε (± 0.310), ibs 0.180 ± 0.020" in line
    assert "not resolvable at this ε (± 0.310)" in runs.status_line(_status(DROWNED))


def test_summary_groups_every_figure_with_its_companions() -> None:
    final = _status(DROWNED, federation_pb2.RUN_STATE_COMPLETED)
    lines = progress.summary(final)
    assert lines[-1] == (
        "  metrics (round 2): c_windowed not resolvable at this ε (± 0.310),"
        " events not resolvable at this ε (± 666), ibs 0.180 ± 0.020"
    )


def test_json_keeps_every_field_numeric() -> None:
    out = io.StringIO()
    view = progress.TextView(out, clock=lambda: 0.0, as_json=True)
    view.show(_status(RESOLVED))
    record = json.loads(out.getvalue())
    assert record["metrics"] == pytest.approx(RESOLVED)


def test_metrics_without_uncertainty_print_as_before() -> None:
    line = progress.change_line(_status({"c_windowed": 0.61, "ibs": 0.18}))
    assert "c_windowed=0.610 ibs=0.180 (round 2)" in line


def test_the_summary_gives_each_subgroup_and_permuted_feature_its_own_line() -> None:
    breakdown = {f"subgroup:sex=F:{k}": v for k, v in RESOLVED.items()}
    breakdown |= {f"subgroup:sex=M:{k}": v for k, v in DROWNED.items()}
    breakdown |= {"importance:age:delta_c": 0.1, "importance:age:delta_c_se": 0.02 / Z95}
    lines = progress.summary(_status({**RESOLVED, **breakdown}, federation_pb2.RUN_STATE_COMPLETED))
    metrics_line = next(line for line in lines if line.startswith("  metrics"))
    assert ":" not in metrics_line.split(": ", 1)[1]  # no subgroup figure on the consortium line
    assert lines[-3:] == [
        "    importance age: delta_c 0.100 ± 0.020",
        "    subgroup sex=F: c_windowed 0.620 ± 0.050, events not resolvable at this ε (± 666),"
        " ibs 0.180 ± 0.020",
        "    subgroup sex=M: c_windowed not resolvable at this ε (± 0.310),"
        " events not resolvable at this ε (± 666), ibs 0.180 ± 0.020",
    ]


def _with_spend(spends: list[float]) -> admin_pb2.RunStatus:
    status = _status({})
    for i, eps in enumerate(spends):
        status.sites.add(site_id=f"site-{i:03d}", epsilon_spent=eps)
    return status


def test_status_line_names_each_sites_epsilon_in_a_small_consortium() -> None:
    line = runs.status_line(_with_spend([1.25, 1.5, 0.75]))
    assert "ε site-000=1.25 site-001=1.50 site-002=0.75" in line


def test_status_line_gives_the_epsilon_range_past_a_handful_of_sites() -> None:
    spends = [1.0 + i / 100 for i in range(100)]
    line = runs.status_line(_with_spend(spends))
    assert "ε 1.00–1.99 at 100 sites" in line
    assert "site-050" not in line  # one line, not a hundred names
    assert "ε 1.27 at 40 sites" in runs.status_line(_with_spend([1.27] * 40))
