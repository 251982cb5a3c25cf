"""The measured evidence a DPIA cites: the empirical privacy audit's figures and k-anonymity.

A DP claim is a theorem about the mechanism; the audit (`benchmarks/privacy_audit.py`,
docs/privacy-audit.md) is what attacks achieved against models trained by this code. The DPIA
cites both, side by side: the reported ε, the empirical lower bound with its confidence (which
must not exceed it), the membership-inference advantage and TPR at FPR = 0.01, and the
attribute-inference gain over guessing from the prior. A lower bound above the reported ε is
printed as a violation, never smoothed over. k-anonymity (`[privacy.k_anonymity]`, optional) is
read defensively, so this works with plans with and without the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AUDIT_KEYS = ("epsilon", "empirical_epsilon_lower", "mia_advantage", "tpr_at_fpr_0.01")
"""Keys every privacy-audit record has (benchmarks/privacy_audit.py `--json`)."""


def _num(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, int | float) else "—"


def _setting(record: dict[str, Any]) -> str:
    if record.get("control"):  # the positive control labels itself (e.g. no DP on tiny sites)
        return str(record.get("setting") or "positive control")
    eps = record.get("epsilon")
    return "no DP" if eps is None else f"ε = {eps:g}"


def audit_at(epsilon: float | None, audit: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The audit record of this ε (None: the no-DP one), if the audit ran it; a positive control
    (no DP on tiny sites, to show the attacks work) is never the plan's figure."""
    for record in audit:
        if record.get("control"):
            continue
        eps = record.get("epsilon")
        if (eps is None and epsilon is None) or (
            eps is not None and epsilon is not None and abs(float(eps) - epsilon) < 1e-9
        ):
            return record
    return None


def _held(record: dict[str, Any]) -> str:
    held = record.get("bound_held")
    if held is None and record.get("epsilon") is not None:
        reported = record.get("epsilon_spent", record["epsilon"])
        held = record["empirical_epsilon_lower"] <= reported
    if held is None:
        return "— (no DP)"
    return "yes" if held else "**NO: VIOLATED, a privacy bug to investigate**"


def mia_cell(epsilon: float, audit: Sequence[dict[str, Any]]) -> str:
    """Membership inference: what the audit measured at the plan's ε (and without DP)."""
    if not audit:
        return ""
    here, plain = audit_at(epsilon, audit), audit_at(None, audit)
    parts = []
    if here is not None:
        parts.append(
            f"measured at ε = {epsilon:g}: attack advantage {_num(here['mia_advantage'])},"
            f" TPR {_num(here['tpr_at_fpr_0.01'])} at FPR 0.01"
        )
    else:
        parts.append(f"the privacy audit did not run ε = {epsilon:g}")
    if plain is not None:
        parts.append(f"without DP {_num(plain['mia_advantage'])}")
    return "; " + "; ".join(parts) + " (privacy audit)"


def attribute_cell(epsilon: float, audit: Sequence[dict[str, Any]]) -> str:
    """Attribute inference: the audit's gain over the prior-only guess."""
    here, plain = audit_at(epsilon, audit), audit_at(None, audit)
    parts = []
    for record in (here, plain):
        if record is not None and "attribute_gain" in record:
            parts.append(
                f"{_setting(record)}: guessing `{record.get('attribute', 'the attribute')}`"
                f" gains {_num(record['attribute_gain'])} accuracy over the prior"
            )
    return ("; measured " + "; ".join(parts) + " (privacy audit)") if parts else ""


def audit_measure(
    plan_epsilon: float, audit: Sequence[dict[str, Any]], evidence: str = ""
) -> list[str]:
    """The DP measure's empirical evidence: one table row per audited setting; `evidence`
    names the tests that keep the audit itself honest."""
    if not audit:
        return [
            "**Empirical privacy audit**: none cited; run `benchmarks/privacy_audit.py --json"
            " audit.json` and pass `--privacy-audit audit.json` (docs/privacy-audit.md).",
            "",
        ]
    lines = [
        "**Empirical privacy audit** (docs/privacy-audit.md; membership inference, a canary"
        " audit and attribute inference against models trained by this code): the empirical"
        " lower bound on ε must not exceed the reported ε. A lower bound is what attacks"
        f" demonstrated, not a proof of safety. {evidence}".rstrip(),
        "",
        "| setting | reported ε | empirical lower bound on ε (confidence) | bound held |"
        " MIA advantage | TPR at FPR 0.01 | attribute-inference gain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for record in audit:
        reported = record.get("epsilon_spent", record.get("epsilon"))
        confidence = record.get("empirical_confidence", 0.95)
        marker = " (this plan)" if record.get("epsilon") == plan_epsilon else ""
        lines.append(
            f"| {_setting(record)}{marker} | {_num(reported)} |"
            f" {_num(record['empirical_epsilon_lower'])} ({confidence:.0%}) | {_held(record)} |"
            f" {_num(record['mia_advantage'])} | {_num(record['tpr_at_fpr_0.01'])} |"
            f" {_num(record.get('attribute_gain'))} |"
        )
    if any(_held(r).startswith("**NO") for r in audit):
        lines += [
            "",
            "**The audit found more leakage than the reported ε allows: do not rely on the DP"
            " figures above until this is explained.**",
        ]
    return [*lines, ""]


def k_layer(plan: Any) -> Any:
    """The plan's `[privacy.k_anonymity]`, or None (also on a checkout without the field)."""
    return getattr(plan.privacy, "k_anonymity", None)


def k_site_figures(report: dict[str, Any]) -> str:
    """One site's k-anonymity entry of its check report, as evidence."""
    entry = report.get("k_anonymity")
    if not isinstance(entry, dict):
        return ""
    text = f"k = {entry.get('k')}, l = {entry.get('l')} over {entry.get('quasi_identifiers')}"
    if "rows_suppressed" in entry:
        text += f", {entry['rows_suppressed']} row(s) suppressed"
    return text


def k_measure(plan: Any, reports: Sequence[dict[str, Any]], site_label: Any) -> list[str]:
    """The k-anonymity measure, if the plan turns the layer on."""
    layer = k_layer(plan)
    if layer is None:
        return []
    quasi = ", ".join(f"`{q}`" for q in getattr(layer, "quasi_identifiers", []))
    lines = [
        f"**k-anonymity**: each site generalises the quasi-identifiers {quasi} (numeric ones to"
        " public bands from the plan's bounds, categorical ones by declared hierarchies) and"
        f" suppresses the rows still in a class smaller than k = {layer.k} before any release."
        " It limits linkage through these columns; it does not bound membership or attribute"
        " inference (DP does).",
    ]
    figures = [
        f"{site_label(r, i)}: {text}" for i, r in enumerate(reports) if (text := k_site_figures(r))
    ]
    lines.append(
        "Site checks: " + "; ".join(figures) + "."
        if figures
        else "No site check report cited gives its k-anonymity yet (`site_agent check --plan`)."
    )
    return [" ".join(lines), ""]
