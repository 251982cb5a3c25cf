"""`oe_ratio` on the printed lines: the status line and the summary show it with its interval
(or as not resolvable), and its own counts stay out of the text (JSON keeps them)."""

from __future__ import annotations

import pytest

from fedctl import progress
from fedctl.run_status import metrics_text
from federation.metric_intervals import Z95
from federation.wire.v1 import admin_pb2

pytestmark = pytest.mark.unit

VALUES = {
    "c_windowed": 0.62,
    "c_windowed_se": 0.05 / Z95,
    "c_windowed_resolvable": 1.0,
    "observed": 480.0,
    "observed_se": 20.0,
    "expected": 500.0,
    "expected_se": 40.0,
    "oe_ratio": 0.96,
    "oe_ratio_se": 0.1 / Z95,
    "oe_ratio_lo": 0.86,
    "oe_ratio_hi": 1.06,
    "oe_ratio_resolvable": 1.0,
}


def _metrics(values: dict[str, float]) -> list[admin_pb2.Metric]:
    return [admin_pb2.Metric(name=k, value=v) for k, v in values.items()]


def test_the_status_line_shows_oe_with_its_interval() -> None:
    line = metrics_text(_metrics(VALUES), only_key=True)
    assert line == "c_windowed 0.620 ± 0.050, oe_ratio 0.960 ± 0.100"


def test_the_summary_hides_oe_counts_but_not_other_counts() -> None:
    line = metrics_text(_metrics({**VALUES, "events": 500.0, "events_se": 10.0}), only_key=False)
    assert "oe_ratio 0.960 ± 0.100" in line and "events 500 ± 20" in line
    assert "observed" not in line and "expected" not in line
    # without the ratio (a noisy expected count ≤ 0) the counts are what there is to show
    no_ratio = {k: v for k, v in VALUES.items() if not k.startswith("oe_ratio")}
    assert "expected 500 ± 78" in progress.format_metrics(no_ratio, ["expected"])
    assert "observed" in metrics_text(_metrics(no_ratio), only_key=False)


def test_an_unresolvable_oe_is_not_printed_as_a_number() -> None:
    drowned = {**VALUES, "oe_ratio": 0.68, "oe_ratio_se": 0.322 / Z95, "oe_ratio_resolvable": 0.0}
    line = metrics_text(_metrics(drowned), only_key=True)
    assert "oe_ratio not resolvable at this ε (± 0.322)" in line and "0.68" not in line
