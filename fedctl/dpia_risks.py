"""Sections (c) and (d) of `fedctl dpia`: the risks to data subjects and the measures against
them, each with its evidence, and the text helpers both halves of the DPIA use.

Apart from `fedctl/dpia.py` (the command, sections (a), (b), (e)) because this half is where the
evidence lives: the tests behind each measure (`fedctl/dpia_evidence.py`), the site checks'
k-anonymity, and the figures of the empirical privacy audit (`benchmarks/privacy_audit.py` JSON,
docs/privacy-audit.md): what an attacker actually achieved against models trained by this code,
next to the ε the accountant reports.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fedctl.dpia_audit import (
    AUDIT_KEYS,
    attribute_cell,
    audit_measure,
    k_layer,
    k_measure,
    k_site_figures,
    mia_cell,
)
from fedctl.dpia_evidence import EVIDENCE
from federation.plan import RunPlan
from federation.sessions import SessionRuleError, session_threshold

__all__ = ["AUDIT_KEYS", "BLANK", "FORM", "cell", "evidence", "odds_factor", "section_c"]
__all__ += ["section_d", "site_label"]

_ACCOUNTANTS = {
    "pld": "privacy loss distributions via Google's dp-accounting, pessimistic, the tightest",
    "rdp": "Rényi DP composition, looser than PLD",
    "prv": "privacy random variables (numerical composition)",
}
FORM = "☐ low ☐ medium ☐ high"
BLANK = "________"


def odds_factor(epsilon: float) -> str:
    """e^ε as a reader takes it in: three significant figures, thousands spelled out."""
    value = math.exp(epsilon)
    if value < 1000:
        return f"{value:.3g}"
    return f"{value:,.0f}" if value < 1e9 else f"{value:.2e}"


def cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def evidence(measure: str) -> str:
    return "Evidence: " + "; ".join(f"`{t}`" for t in EVIDENCE[measure]) + "."


def site_label(report: dict[str, Any], index: int) -> str:
    return str(report.get("site_id") or report.get("site") or f"site {index + 1}")


def k_summary(reports: Sequence[dict[str, Any]]) -> str:
    found = [
        f"{site_label(r, i)}: {k_site_figures(r)}"
        for i, r in enumerate(reports)
        if k_site_figures(r)
    ]
    return "; ".join(found) if found else "no site report gives k-anonymity"


def _reidentification(plan: RunPlan, reports: Sequence[dict[str, Any]]) -> str:
    layer = k_layer(plan)
    sites = k_summary(reports)
    if layer is None:
        return sites
    quasi = ", ".join(getattr(layer, "quasi_identifiers", []))
    return f"k-anonymity at k = {layer.k} over {quasi} (plan, enforced at each site); {sites}"


def section_c(
    plan: RunPlan, reports: Sequence[dict[str, Any]], audit: Sequence[dict[str, Any]] = ()
) -> list[str]:
    eps = plan.privacy.epsilon
    posterior = math.exp(eps) / (1 + math.exp(eps))
    bound = f"bounded by DP: from a 50% prior, at most {posterior:.1%} certainty (δ aside)"
    risks = [
        (
            "Re-identification",
            "a released aggregate singles out a patient",
            _reidentification(plan, reports),
        ),
        (
            "Membership inference",
            "whether a given patient was in a site's data",
            bound + mia_cell(eps, audit),
        ),
        (
            "Attribute inference",
            "a patient's feature or outcome from the model",
            "DP bounds what one record adds; population-level associations (the purpose) remain"
            + attribute_cell(eps, audit),
        ),
        (
            "Model inversion",
            "reconstructing records from the model or updates",
            f"one record moves any output's probability by at most e^ε ≈ {odds_factor(eps)};"
            " updates are seen only as secure sums",
        ),
        (
            "Cheating coordinator",
            "it chooses sessions, survivors, retries to isolate one site's release",
            "refused by every site (section d, secure aggregation)",
        ),
        (
            "Compromised site",
            "a site colluding with the coordinator against the others",
            f"tolerated up to max_colluding_sites = {plan.secagg.max_colluding_sites}; beyond,"
            " only DP remains",
        ),
        (
            "Data breach at a site",
            "the export or the agent's state is copied",
            "outside Concordia for the export; state 0600 and encrypted (section d)",
        ),
    ]
    lines = [
        "## (c) Risks to the rights and freedoms of data subjects (Art. 35(7)(c))",
        "",
        "| risk | what could happen | what the plan bounds | likelihood | severity |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {w} | {cell(b)} | {FORM} | {FORM} |" for n, w, b in risks]
    lines += [
        "",
        "Residual risks the system states (docs/threat-model.md): more colluding sites than"
        " assumed; a withheld newer roster (a revoked certificate trusted until the site sees it);"
        " a session summing as few as its threshold of sites; erasure cannot un-release a model"
        " already trained; a patient in two hospitals is two records; side channels and a"
        " compromised site host are out of scope.",
        "",
    ]
    return lines


def _thresholds(plan: RunPlan) -> list[str]:
    sizes = [plan.quorum] + ([len(plan.sites)] if plan.sites else [])
    rows = []
    for n in dict.fromkeys(sizes):
        try:
            t = str(session_threshold(plan, n))
        except SessionRuleError as exc:
            t = f"refused: {exc}"
        rows.append(f"| {n} | {t} |")
    table = ["| sites in a session (n) | threshold t |", "| --- | --- |", *rows]
    if 2 in sizes:
        table += [
            "",
            "A session of two reveals each site's release to the other (the aggregate minus its"
            " own): only DP protects it then, so a site refuses it unless its"
            " `policy.min_session_sites` is 2 (docs/threat-model.md).",
        ]
    return table


def section_d(
    plan: RunPlan, reports: Sequence[dict[str, Any]], audit: Sequence[dict[str, Any]] = ()
) -> list[str]:
    p, t = plan.privacy, plan.training
    odds = odds_factor(p.epsilon)
    if t.mode == "distributed":
        mode = (
            f"`distributed`: each round every site releases an integer gradient sum with a Skellam"
            f" noise share; with noise_shares = {p.noise_shares} each honest site adds at least"
            f" 1/{p.noise_shares} of the target noise, and more if its"
            " `policy.trusted_noise_sites` trusts fewer sites (a site refuses a session or an"
            " unmask with fewer participants than it trusts to add noise). "
            + evidence("distributed")
        )
    else:
        mode = (
            "`local`: each site runs its own DP-SGD and adds its full noise before anything leaves."
        )
    lines = [
        "## (d) Measures to address the risks, and their evidence (Art. 35(7)(d))",
        "",
        f"**Differential privacy.** Each site spends at most ε = {p.epsilon:g} and"
        f" δ = {p.delta:g} on the whole run (statistics, training and metrics). For one patient:"
        " an attacker's odds that a given patient was in the data rise at most by a factor"
        f" e^ε ≈ {odds} (e^{p.epsilon:g}), whatever else they know; δ = {p.delta:g} (about one in"
        f" {1 / p.delta:,.0f}) is the probability that this bound may fail. Every release is"
        " charged to the site's ledger before it can leave; one past the plan's ε or the site's"
        f" lifetime budget is refused. {evidence('dp')}",
        "",
        *audit_measure(p.epsilon, audit, evidence("privacy_audit")),
        *k_measure(plan, reports, site_label),
        f"**Accountant**: `{p.accountant}` ({_ACCOUNTANTS[p.accountant]}); distributed-mode"
        " (Skellam) releases are always composed in RDP. " + evidence("accountant"),
        "",
        f"**Training mode**: {mode}",
        "",
        f"**Secure aggregation.** The coordinator sees only sums over at least t sites; c ="
        f" max_colluding_sites = {plan.secagg.max_colluding_sites}, t > (n + c)/2 and every site"
        " re-derives t itself (a site's `policy.min_session_sites`, default 3, can raise n):",
        "",
        *_thresholds(plan),
        "",
        evidence("secagg"),
        "",
        "**Pseudonymisation**: patient ids become HMAC-SHA256 pseudonyms under a site key as"
        f" rows are read. {evidence('pseudonymisation')}",
        "",
        f"**Consent and purpose**: purpose `{plan.purpose}` must be in each site's"
        " `allowed_purposes`; a consent column or registry excludes rows without consent for it."
        f" {evidence('consent')}",
        "",
        "**Erasure and access**: `site_agent erase` / `subject-report`; later loads exclude the"
        f" patient. {evidence('erasure')}",
        "",
        "**Retention and records of processing**: run state purged after"
        " `policy.retention_days`; `site_agent records` lists every accepted run."
        f" {evidence('retention')}",
        "",
        "**Access control**: mutual TLS with consortium-CA certificates, a CA-signed roster"
        f" checked by coordinator and sites, optional manual approval. {evidence('access')}",
        "",
        "**Audit**: hash-chained logs at the coordinator and every site; `fedctl audit verify`"
        f" detects an edited, deleted or reordered entry. {evidence('audit')}",
        "",
        "**State at rest**: 0700/0600 state, cached releases and session secrets encrypted"
        f" (AES-256-GCM). {evidence('state')}",
        "",
    ]
    if reports:
        lines += ["Site-check figures:", ""]
        for i, r in enumerate(reports):
            warnings = len(r.get("warnings") or [])
            lines.append(
                f"- {site_label(r, i)}: {r['rows_read']} rows read, {r['rows_valid']} valid,"
                f" events {r.get('events', '—')}; {k_summary([r]).split(': ', 1)[-1]};"
                f" {warnings} warning(s)"
            )
        lines.append("")
    return lines
