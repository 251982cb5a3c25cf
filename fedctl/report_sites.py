"""The report's per-site evaluation table: each site's own final figures where its policy
published them (`policy.publish_own_metrics`, default off), "not published (site policy)" where
not, and the gaps between published sites.

The figures and their intervals come from the card's `quantitative_analyses.per_site`
(`fedctl/model_card_sites.py`), so the page and the card never disagree; a figure too noisy to
tell anything is shown as not resolvable, never as a number, exactly as in the subgroup table.
A table, not a figure: a handful of sites reads better as rows than as dots.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from fedctl.model_card import evaluations
from fedctl.model_card_sites import per_site_analyses
from fedctl.report_fairness import _count, gap_table_html
from fedctl.report_html import section_html, table_html
from federation.metric_intervals import Z95
from federation.site_metrics import site_rows


def site_section(card: Mapping[str, Any]) -> str:
    """The `per-site` section as HTML (always: it says why it is empty)."""
    evals = evaluations(dict(card))
    latest = evals[-1] if evals else None
    if latest is None:
        body = '<p class="note">No evaluation with figures was released in this run.</p>'
        return section_html("per-site", "Per-site evaluation", body)
    rows = site_rows(latest.get("metrics", {}), latest.get("participants", []))
    analyses = per_site_analyses(latest)
    table = table_html(
        ["site", "patients", "events", "c_windowed (95% CI)", "ibs (95% CI)", "σ"],
        [
            [
                r["site"],
                _count(r.get("patients")) if r["published"] else "—",
                _count(r.get("events")) if r["published"] else "—",
                _figure(r, "c_windowed"),
                _figure(r, "ibs"),
                f"{r['noise_multiplier']:.3g}" if r["published"] else "—",
            ]
            for r in rows
        ],
    )
    gaps = analyses["gaps"]
    gap_table = gap_table_html(gaps, feature_column=False) if gaps else ""
    body = (
        table + '<p class="note">Each site\'s own figures on its held-out rows, where its policy'
        " publishes them (policy.publish_own_metrics, off by default): a separate release with"
        " its own Gaussian noise of multiplier σ, charged to that site's privacy ledger, never a"
        " part of the secure sum. Intervals: that site's noise and the sampling error of its"
        " held-out rows.</p>"
        + gap_table
        + '<p class="note">'
        + html.escape(analyses["summary"])
        + ". Gap: the highest minus the lowest published site; flagged when both are resolvable"
        " and |gap| > 1.96 × the SE of the difference (sites hold disjoint patients and draw"
        " independent noise).</p>"
    )
    return section_html("per-site", "Per-site evaluation", body)


def _figure(row: Mapping[str, Any], name: str) -> str:
    if not row["published"]:
        return str(row["note"])
    if name not in row or not math.isfinite(row[name]):
        return "—"
    if row.get(f"{name}_resolvable", 1.0) < 0.5:
        return f"not resolvable at this ε (± {Z95 * row.get(f'{name}_se', math.nan):.3f})"
    return f"{row[name]:.3f} ({row[f'{name}_lo']:.3f}–{row[f'{name}_hi']:.3f})"
