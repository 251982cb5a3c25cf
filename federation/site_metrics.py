"""Per-site evaluation figures that a site published under its own policy, and the gaps between
sites.

What a site publishes (`policy.publish_own_metrics`, default off; `site_agent/published_metrics.py`)
is a *separate release*: the consortium block of its final evaluation (`MetricsLayout`, weighted,
computed on its held-out rows alone) with fresh Gaussian noise of std σ·s per weighted coordinate
(s = `MetricsLayout.sensitivity`, σ the site's own choice from its policy and the plan it
accepted), charged to its ledger before it left. It is never the site's noised share of the secure
sum: a share would let the coordinator subtract it from a two-site sum, or learn the site's noise
share in distributed mode. The coordinator cannot check σ (it is the site's word about its own
figure); it checks only what it can (`published_from_wire`: length, finiteness, range) and keeps
the figures in the evaluation record's `metrics` map under `site:<site>:<name>`, beside the
consortium's unprefixed figures and the `subgroup:`/`importance:` ones, so that they survive a
restart and travel in the model card; they are never part of any sum.

Figures and intervals: `metrics_with_uncertainty` over one site's release (n = 1, noise std σ·s),
sampling error included, exactly as the consortium's. Gaps (`site_gaps`): the rule of
`federation/subgroup_metrics.py::subgroup_gaps` — the largest minus the smallest site's figure,
SE √(se₁² + se₂²) (sites hold disjoint patients and draw independent noise), flagged only when
both figures are resolvable and |gap| > 1.96·SE — by handing it the sites as the levels of one
"feature".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from federation.metric_intervals import metrics_with_uncertainty
from federation.releases import MAX_COHORT, MetricsLayout
from federation.subgroup_metrics import SUBGROUP_PREFIX, subgroup_gaps

__all__ = [
    "NOT_PUBLISHED",
    "REFUSED",
    "SITE_PREFIX",
    "PublishedFigures",
    "published_from_wire",
    "record_metrics",
    "site_gaps",
    "site_rows",
]

SITE_PREFIX = "site:"
"""Key prefix of a published site's figures in an evaluation record: `site:<site>:<name>`."""
REFUSED_KEY = "published_refused"
"""`site:<site>:published_refused` = 1.0: the site sent figures the coordinator refused."""
NOISE_KEY = "noise_multiplier"
NOT_PUBLISHED = "not published (site policy)"
REFUSED = "refused by the coordinator (malformed; see its audit log)"
MAX_WEIGHTED = 16.0 * MAX_COHORT
"""Largest |coordinate| taken: every weighted coordinate is ≤ 0.61·MAX_COHORT before noise, so
anything beyond this is not a metric release (a float that would overflow the ratios)."""
MAX_NOISE_MULTIPLIER = 1e6


@dataclass(frozen=True)
class PublishedFigures:
    """One site's published release as the coordinator took it (after `published_from_wire`)."""

    weighted: tuple[float, ...]
    noise_multiplier: float

    def figures(self, layout: MetricsLayout | None = None) -> dict[str, float]:
        """Its decoded figures with uncertainty (`metrics_with_uncertainty`, n = 1) and the σ
        it was published at; non-finite figures (an empty ratio) are left out, since the record
        is JSON and audited."""
        layout = layout or MetricsLayout()
        sums = layout.decode(np.asarray(self.weighted, dtype=np.float64))
        std = self.noise_multiplier * layout.sensitivity
        out = {k: v for k, v in metrics_with_uncertainty(sums, layout, std).items()}
        out[NOISE_KEY] = self.noise_multiplier
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}


def published_from_wire(
    weighted: Sequence[float], noise_multiplier: float, layout: MetricsLayout | None = None
) -> PublishedFigures:
    """A site's `PublishedMetrics` checked: exactly `layout.length` coordinates, each finite
    and within ±MAX_WEIGHTED, σ finite in (0, MAX_NOISE_MULTIPLIER]. Raises ValueError with a
    one-line reason naming the field (the site's operator reads it in the coordinator's audit)."""
    layout = layout or MetricsLayout()
    values = [float(v) for v in weighted]
    if len(values) != layout.length:
        raise ValueError(
            f"published_metrics.weighted has {len(values)} values, expected {layout.length}"
            " (the metrics layout of this coordinator's version)"
        )
    for index, value in enumerate(values):
        if not math.isfinite(value) or abs(value) > MAX_WEIGHTED:
            raise ValueError(
                f"published_metrics.weighted[{index}] must be finite and within"
                f" ±{MAX_WEIGHTED:g}, got {value!r}"
            )
    sigma = float(noise_multiplier)
    if not (math.isfinite(sigma) and 0.0 < sigma <= MAX_NOISE_MULTIPLIER):
        raise ValueError(
            "published_metrics.noise_multiplier must be finite and in"
            f" (0, {MAX_NOISE_MULTIPLIER:g}], got {noise_multiplier!r}"
        )
    return PublishedFigures(tuple(values), sigma)


def record_metrics(published: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-site figures (site → figures) as evaluation-record keys `site:<site>:<name>`."""
    return {
        f"{SITE_PREFIX}{site}:{name}": float(value)
        for site, figures in sorted(published.items())
        for name, value in figures.items()
    }


def _by_site(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith(SITE_PREFIX):
            continue
        site, _, name = key[len(SITE_PREFIX) :].rpartition(":")
        if site:
            found.setdefault(site, {})[name] = float(value)
    return found


def site_rows(metrics: Mapping[str, float], sites: Iterable[str]) -> list[dict[str, Any]]:
    """One row per site of the evaluation (`sites`, plus any that published): `published`
    True with its figures (`patients`, `events`, `c_windowed`, `ibs`, each with `_se/_lo/_hi/
    _resolvable`, and `noise_multiplier`), or False with a `note` saying why there are none."""
    found = _by_site(metrics)
    rows: list[dict[str, Any]] = []
    for site in sorted(set(sites) | set(found)):
        figures = found.get(site, {})
        if figures.get(REFUSED_KEY, 0.0) > 0.5:
            rows.append({"site": site, "published": False, "note": REFUSED})
        elif figures:
            rows.append({"site": site, "published": True, **figures})
        else:
            rows.append({"site": site, "published": False, "note": NOT_PUBLISHED})
    return rows


def site_gaps(metrics: Mapping[str, float]) -> list[dict[str, Any]]:
    """Per metric (`c_windowed`, `ibs`), the gap between the highest and the lowest published
    site, by `subgroup_gaps`'s rule (module docstring): `metric`, `highest`, `lowest` (sites),
    `gap`, `se`, `interval_95`, `flagged`, `levels_resolvable`. Empty with fewer than two."""
    as_levels = {
        f"{SUBGROUP_PREFIX}site={site}:{name}": value
        for site, figures in _by_site(metrics).items()
        if figures.get(REFUSED_KEY, 0.0) <= 0.5
        for name, value in figures.items()
    }
    return [
        {key: value for key, value in gap.items() if key != "feature"}
        for gap in subgroup_gaps(as_levels)
    ]
