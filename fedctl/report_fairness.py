"""The report's fairness part: the subgroup table with gaps, and the permutation-importance bars.

Both come from the final evaluation's prefixed figures (`federation/subgroup_metrics.py`), which
the coordinator decoded from per-subgroup and per-permuted-feature consortium sums. A gap
between subgroups is flagged when it exceeds its uncertainty (|gap| > 1.96·SE of the
difference); a figure whose interval is too wide to tell anything is shown as not resolvable,
never as a number. Kept apart from `fedctl/report.py` (which calls `fairness_sections`), so that
the report's page layout and this analysis can change independently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedctl.model_card import evaluations
from fedctl.report_html import image_html, section_html, table_html
from fedctl.report_plots import HEIGHT, WIDTH, _png, _pyplot
from federation.metric_intervals import Z95
from federation.subgroup_metrics import importance_rows, subgroup_gaps, subgroup_rows


def fairness_sections(card: Mapping[str, Any]) -> list[str]:
    """The `subgroups` section (always: it says why it is empty) and, when importance was
    released, the `importance` section, as HTML."""
    evals = evaluations(dict(card))
    metrics: Mapping[str, float] = evals[-1]["metrics"] if evals else {}
    rows = subgroup_rows(metrics)
    body = _calibration_line(metrics) + _subgroup_body(rows, metrics)
    sections = [section_html("subgroups", "Subgroups", body)]
    importance = importance_rows(metrics)
    if importance:
        body = image_html(importance_plot(importance), "permutation importance") + (
            '<p class="note">Drop in the consortium\'s c_windowed when one feature is permuted'
            " within each site's held-out rows (a keyed cyclic shift), from two secure sums of"
            " the final evaluation. Bars: 95% interval of the DP noise (the two C's share their"
            " patients, so their sampling errors largely cancel and are not included).</p>"
        )
        sections.append(section_html("importance", "Permutation importance", body))
    return sections


def _subgroup_body(rows: list[dict[str, Any]], metrics: Mapping[str, float]) -> str:
    if not rows:
        return (
            '<p class="note">The plan names no subgroups ([evaluation] subgroups), so the'
            " federation released no per-subgroup figures.</p>"
        )
    table = table_html(
        [
            "feature",
            "level",
            "patients",
            "events",
            "c_windowed (95% CI)",
            "ibs (95% CI)",
            "O/E (95% CI)",
        ],
        [
            [
                r["feature"],
                r["level"],
                _count(r.get("patients")),
                _count(r.get("events")),
                _with_interval(r, "c_windowed"),
                _with_interval(r, "ibs"),
                _with_interval(r, "oe_ratio"),
            ]
            for r in rows
        ],
    )
    gaps = subgroup_gaps(metrics)
    gap_table = gap_table_html(gaps, feature_column=True)
    figure = image_html(subgroup_plot(rows), "subgroup c_windowed, ibs and O/E")
    return (
        figure
        + table
        + '<p class="note">DP-noised consortium totals of the final evaluation, one secure sum'
        " per subgroup level (public levels and bands from the plan). Intervals: the known DP"
        " noise and the sampling error (federation/metric_intervals.py).</p>"
        + gap_table
        + '<p class="note">Gap: the largest minus the smallest level; flagged when both are'
        " resolvable and |gap| > 1.96 × the SE of the difference (the levels hold disjoint"
        " patients, so their errors are independent). O/E (oe_ratio): observed / expected"
        " events up to the horizon, the level's calibration in the large (1 = calibrated);"
        " IBS mixes calibration and discrimination.</p>"
    )


def _calibration_line(metrics: Mapping[str, float]) -> str:
    """The consortium's calibration in the large (O/E with its interval), when released."""
    if "oe_ratio" not in metrics:
        return ""
    return (
        f'<p class="note">Consortium calibration in the large, observed / expected events'
        f" (oe_ratio): {_with_interval(metrics, 'oe_ratio')}; 1 = calibrated, above 1 the"
        " model predicts too few events.</p>"
    )


def gap_table_html(gaps: Sequence[Mapping[str, Any]], *, feature_column: bool) -> str:
    """The gap table of `subgroup_gaps` rows (subgroups, or sites as the levels of one
    feature): highest against lowest level, the gap's interval and whether it is flagged."""
    head = ["metric", "highest", "lowest", "gap (95% CI)", "larger than its uncertainty"]
    return table_html(
        (["feature"] if feature_column else []) + head,
        [
            ([g["feature"]] if feature_column else [])
            + [
                g["metric"],
                g["highest"],
                g["lowest"],
                _gap_text(g),
                "⚠ yes" if g["flagged"] else "no",
            ]
            for g in gaps
        ],
    )


def _gap_text(gap: Mapping[str, Any]) -> str:
    if not gap["levels_resolvable"]:
        return f"not resolvable at this ε (± {Z95 * gap['se']:.3f})"
    low, high = gap["interval_95"]
    return f"{gap['gap']:.3f} ({low:.3f} to {high:.3f})"


def _with_interval(row: Mapping[str, Any], name: str) -> str:
    if name not in row or not math.isfinite(row[name]):
        return "—"
    if row.get(f"{name}_resolvable", 1.0) < 0.5:
        half = Z95 * row.get(f"{name}_se", math.nan)
        return f"not resolvable at this ε (± {half:.3f})"
    lo, hi = row.get(f"{name}_lo", math.nan), row.get(f"{name}_hi", math.nan)
    return f"{row[name]:.3f} ({lo:.3f}–{hi:.3f})"


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def subgroup_plot(rows: Sequence[Mapping[str, Any]]) -> str:
    """c_windowed, ibs and oe_ratio per subgroup level with their 95% intervals, as a base64
    PNG (O/E with its line of perfect calibration at 1)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH, max(HEIGHT * 0.6, 0.45 * len(rows) + 1.2)))
    labels = [f"{r['feature']} = {r['level']}" for r in rows]
    for ax, name in zip(axes, ("c_windowed", "ibs", "oe_ratio"), strict=True):
        if name == "oe_ratio":
            ax.axvline(1.0, color="#444", lw=0.8)
        for y, row in enumerate(rows):
            if name not in row or not math.isfinite(row[name]):
                continue
            lo, hi = row.get(f"{name}_lo", row[name]), row.get(f"{name}_hi", row[name])
            faint = row.get(f"{name}_resolvable", 1.0) < 0.5
            ax.plot([lo, hi], [y, y], color="#999" if faint else "#1f5f99", lw=2)
            ax.plot([row[name]], [y], "o", color="#999" if faint else "#1f5f99")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels if name == "c_windowed" else [""] * len(rows))
        ax.invert_yaxis()
        ax.set_xlabel(name + " (95% interval)")
        ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def importance_plot(rows: Sequence[Mapping[str, Any]]) -> str:
    """ΔC per permuted feature with its 95% DP-noise interval, as a base64 PNG."""
    plt = _pyplot()
    ordered = sorted(rows, key=lambda r: r["delta_c"])
    fig, ax = plt.subplots(figsize=(WIDTH, max(HEIGHT * 0.6, 0.4 * len(ordered) + 1.0)))
    values = [r["delta_c"] for r in ordered]
    errors = [Z95 * r.get("delta_c_se", 0.0) for r in ordered]
    ax.barh(range(len(ordered)), values, xerr=errors, color="#1f5f99", ecolor="#444")
    ax.set_yticks(range(len(ordered)))
    ax.set_yticklabels([r["feature"] for r in ordered])
    ax.axvline(0.0, color="#444", lw=0.8)
    ax.set_xlabel("ΔC = c_windowed − c_windowed with the feature permuted")
    return _png(fig)
