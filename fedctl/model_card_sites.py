"""The model card's per-site part: each site's own final figures where its policy published them.

A site publishes only under `policy.publish_own_metrics` (default off), as a release of its own,
separately noised and charged (`site_agent/published_metrics.py`); the coordinator keeps it in
the final evaluation's record as `site:<site>:<name>` (`federation/site_metrics.py`). A site of
the evaluation that did not publish is listed as such rather than left out: a missing row would
read as "nothing to report". Intervals are the site's own: its published σ (n = 1) and the
sampling error of its held-out rows, by the consortium's rule (`federation/metric_intervals.py`).
Gaps between sites are flagged only when both figures are resolvable and |gap| > 1.96·SE
(`federation/subgroup_metrics.py::subgroup_gaps`' rule).
"""

from __future__ import annotations

from typing import Any

from federation.site_metrics import site_gaps, site_rows
from federation.subgroup_metrics import GAP_METRICS

COUNTS = ("patients", "events")
FIGURES = (*COUNTS, *dict.fromkeys(("c_windowed", "ibs", *GAP_METRICS)))
"""The counts, then every figure a gap is computed for (C, IBS, and any the layout adds)."""


def per_site_analyses(latest: dict[str, Any] | None) -> dict[str, Any]:
    """`quantitative_analyses.per_site` of the card: one entry per site of the final
    evaluation, the gaps between published sites, and a one-line summary."""
    if latest is None:
        return {"sites": [], "gaps": [], "summary": "no evaluation was released"}
    metrics = latest.get("metrics", {})
    rows = site_rows(metrics, latest.get("participants", []))
    gaps = site_gaps(metrics)
    return {
        "sites": [site_entry(r) for r in rows],
        "gaps": gaps,
        "summary": summary(rows, gaps),
    }


def site_entry(row: dict[str, Any]) -> dict[str, Any]:
    """A card entry for one site: its figures with 95 % intervals, or why it has none."""
    entry: dict[str, Any] = {"site": row["site"], "published": row["published"]}
    if not row["published"]:
        entry["note"] = row["note"]
        return entry
    for name in FIGURES:
        if name not in row:
            continue
        entry[name] = row[name]
        if name not in COUNTS and f"{name}_lo" in row:
            entry[f"{name}_interval_95"] = [row[f"{name}_lo"], row[f"{name}_hi"]]
            entry[f"{name}_resolvable"] = bool(row.get(f"{name}_resolvable", 0.0) > 0.5)
    entry["noise_multiplier"] = row.get("noise_multiplier")
    return entry


def summary(rows: list[dict[str, Any]], gaps: list[dict[str, Any]]) -> str:
    """What the per-site part says, in one sentence."""
    published = [r["site"] for r in rows if r["published"]]
    if not published:
        return (
            "no site published its own figures (policy.publish_own_metrics is off by default);"
            " only consortium totals were released"
        )
    flagged = [f"{g['metric']} ({g['highest']} vs {g['lowest']})" for g in gaps if g["flagged"]]
    head = f"{len(published)} of {len(rows)} sites published their own DP-noised figures"
    if flagged:
        return (
            head + "; gaps larger than their uncertainty (|gap| > 1.96 SE): " + ", ".join(flagged)
        )
    if len(published) < 2:
        return head + "; no gap between sites can be computed"
    return head + "; no gap between resolvable sites exceeded its uncertainty (|gap| ≤ 1.96 SE)"
