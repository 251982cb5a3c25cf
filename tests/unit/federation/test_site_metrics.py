"""Per-site published figures in an evaluation record: the rows the card and report show (a site
that did not publish is listed as such), and the gap rule between sites (flagged only when both
figures are resolvable and the gap exceeds 1.96·SE)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.metric_intervals import Z95
from federation.releases import MetricsLayout
from federation.site_metrics import (
    NOT_PUBLISHED,
    REFUSED,
    REFUSED_KEY,
    published_from_wire,
    record_metrics,
    site_gaps,
    site_rows,
)

pytestmark = pytest.mark.unit


def _figures(c: float, se: float, resolvable: bool = True) -> dict[str, float]:
    return {
        "c_windowed": c,
        "c_windowed_se": se,
        "c_windowed_lo": c - Z95 * se,
        "c_windowed_hi": c + Z95 * se,
        "c_windowed_resolvable": float(resolvable),
    }


def test_every_site_of_the_evaluation_gets_a_row_saying_whether_it_published() -> None:
    metrics = {
        "c_windowed": 0.6,  # the consortium's: not a site's
        "subgroup:sex=F:c_windowed": 0.5,
        **record_metrics({"hospital-a": _figures(0.7, 0.05), "hospital-c": {REFUSED_KEY: 1.0}}),
    }
    rows = site_rows(metrics, ["hospital-a", "hospital-b", "hospital-c"])
    assert [r["site"] for r in rows] == ["hospital-a", "hospital-b", "hospital-c"]
    assert rows[0]["published"] and rows[0]["c_windowed"] == 0.7
    assert rows[1] == {"site": "hospital-b", "published": False, "note": NOT_PUBLISHED}
    assert rows[2] == {"site": "hospital-c", "published": False, "note": REFUSED}
    # a site that published without being listed a participant still shows
    assert [r["site"] for r in site_rows(metrics, [])] == ["hospital-a", "hospital-c"]


def test_a_gap_is_flagged_only_between_resolvable_sites_beyond_its_uncertainty() -> None:
    apart = record_metrics({"a": _figures(0.80, 0.02), "b": _figures(0.60, 0.02)})
    (gap,) = site_gaps(apart)
    assert (gap["metric"], gap["highest"], gap["lowest"]) == ("c_windowed", "a", "b")
    assert gap["gap"] == pytest.approx(0.2) and gap["flagged"]
    assert "feature" not in gap
    close = record_metrics({"a": _figures(0.65, 0.05), "b": _figures(0.60, 0.05)})
    assert not site_gaps(close)[0]["flagged"]  # 0.05 < 1.96·0.071
    noisy = record_metrics({"a": _figures(0.95, 0.01, resolvable=False), "b": _figures(0.4, 0.01)})
    assert not site_gaps(noisy)[0]["flagged"] and not site_gaps(noisy)[0]["levels_resolvable"]
    refused = record_metrics({"a": _figures(0.9, 0.01), "b": {REFUSED_KEY: 1.0}})
    assert site_gaps(refused) == []  # one published site: no gap
    assert site_gaps({}) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.3, 1.0), st.floats(0.001, 0.3), st.booleans(), st.booleans()),
        min_size=2,
        max_size=6,
    )
)
def test_the_gap_rule_over_sites(sites: list[tuple[float, float, bool, bool]]) -> None:
    """Gap = highest − lowest published figure; flagged ⇔ both resolvable and |gap| > Z95·SE,
    SE = √(se₁² + se₂²); an unpublished site takes no part."""
    published = {
        f"s{i}": _figures(c, se, resolvable)
        for i, (c, se, resolvable, publishes) in enumerate(sites)
        if publishes
    }
    gaps = site_gaps(record_metrics(published))
    if len(published) < 2:
        assert gaps == []
        return
    (gap,) = gaps
    values = {s: f["c_windowed"] for s, f in published.items()}
    high, low = published[gap["highest"]], published[gap["lowest"]]
    assert gap["gap"] == pytest.approx(max(values.values()) - min(values.values()))
    se = math.hypot(high["c_windowed_se"], low["c_windowed_se"])
    assert gap["se"] == pytest.approx(se)
    both = high["c_windowed_resolvable"] > 0.5 and low["c_windowed_resolvable"] > 0.5
    assert gap["flagged"] == (both and abs(gap["gap"]) > Z95 * se)


def test_a_published_release_decodes_with_the_consortium_rule_at_n_1() -> None:
    layout = MetricsLayout()
    raw = np.zeros(layout.length)
    raw[:5] = [250.0, 80.0, 30.0, 480.0, 800.0]
    figures = published_from_wire(list(layout.encode(raw)), 3.0).figures()
    assert figures["patients"] == pytest.approx(250.0)
    assert figures["ibs"] == pytest.approx(layout.max_weight * 30.0 / 250.0)
    assert figures["c_windowed"] == pytest.approx(0.6)
    # the count's noise std is the site's own σ·s over the count's weight (n = 1)
    assert figures["patients_se"] == pytest.approx(3.0 * layout.sensitivity / layout.weights[0])
    assert all(math.isfinite(v) for v in figures.values())
