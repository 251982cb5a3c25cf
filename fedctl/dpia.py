"""`fedctl dpia plan.toml [--site-report check.json …] --out dpia.md [--html]`: a DPIA draft.

A data protection impact assessment (GDPR Art. 35) of one run plan, in the four parts Art. 35(7)
asks for, plus the DPO's part. It is generated rather than written by hand so that every figure in
it (purpose, features and bounds, ε and δ, accountant, training mode, secure-aggregation
thresholds) is the plan's own and cannot drift from what the sites will enforce; where a judgement
is needed (a feature's justification, a risk's likelihood, the decision) it leaves a form for the
DPO instead of guessing. Each measure names the tests that back it, so an assessor can check the
claim rather than trust it. Site reports are the JSON of `python -m site_agent check --plan …
--output json`: they add what only a site can know (rows read and excluded, k-anonymity, which
columns were not read). docs/privacy-impact-assessment.md is the system-level assessment.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedctl.dpia_evidence import EVIDENCE
from fedctl.errors import EXIT_OK, CliError
from fedctl.markdown_html import to_html
from federation.plan import PlanError, RunPlan, parse_plan
from federation.sessions import SessionRuleError, session_threshold

__all__ = ["EVIDENCE", "REQUIRED_REPORT_KEYS", "cmd_dpia", "register", "render_dpia", "to_html"]

REQUIRED_REPORT_KEYS = ("rows_read", "rows_valid", "excluded")
"""Keys every `site_agent check` JSON has (site_agent/quality.py `to_json`); others are optional."""


_ACCOUNTANTS = {
    "pld": "privacy loss distributions via Google's dp-accounting, pessimistic, the tightest",
    "rdp": "Rényi DP composition, looser than PLD",
    "prv": "privacy random variables (numerical composition)",
}
_FORM = "☐ low ☐ medium ☐ high"
_BLANK = "________"


def register(sub: Any) -> None:
    p = sub.add_parser("dpia", help="draft a GDPR Art. 35 DPIA from a plan (and site checks)")
    p.add_argument("plan", type=Path, help="the run plan (TOML, or JSON by its .json suffix)")
    p.add_argument(
        "--site-report",
        type=Path,
        action="append",
        default=[],
        help="a site's `python -m site_agent check --plan … --output json` (repeatable)",
    )
    p.add_argument("--out", type=Path, required=True, help="the Markdown file to write")
    p.add_argument("--html", action="store_true", help="also write OUT with a .html suffix")
    p.set_defaults(handler=cmd_dpia)


def _read_plan(path: Path) -> RunPlan:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    try:
        return parse_plan(text, "json" if path.suffix == ".json" else "toml")
    except PlanError as exc:
        raise CliError(f"{path}: {exc}") from None


def _read_report(path: Path) -> dict[str, Any]:
    """A site check JSON; the file name labels the site unless the report names one."""
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read site report {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"site report {path} is not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise CliError(f"site report {path} must be a JSON object (site_agent check --output json)")
    missing = [key for key in REQUIRED_REPORT_KEYS if key not in report]
    if missing:
        raise CliError(f"site report {path} lacks {missing}: is it `site_agent check` JSON?")
    report.setdefault("site", path.stem)
    return report


def cmd_dpia(args: argparse.Namespace) -> int:
    plan = _read_plan(args.plan)
    reports = [_read_report(Path(p)) for p in args.site_report or []]
    text = render_dpia(plan, reports)
    out = Path(args.out)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    if args.html:
        page = out.with_suffix(".html")
        page.write_text(to_html(text, f"DPIA: {plan.name}"), encoding="utf-8")
        print(f"wrote {page}")
    return EXIT_OK


def odds_factor(epsilon: float) -> str:
    """e^ε as a reader takes it in: three significant figures, thousands spelled out."""
    value = math.exp(epsilon)
    if value < 1000:
        return f"{value:.3g}"
    return f"{value:,.0f}" if value < 1e9 else f"{value:.2e}"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _evidence(measure: str) -> str:
    return "Evidence: " + "; ".join(f"`{t}`" for t in EVIDENCE[measure]) + "."


def _site_label(report: dict[str, Any], index: int) -> str:
    return str(report.get("site_id") or report.get("site") or f"site {index + 1}")


def _retention(report: dict[str, Any]) -> object:
    policy = report.get("policy")
    if isinstance(policy, dict) and "retention_days" in policy:
        return policy["retention_days"]
    return report.get("retention_days")


def _describe_feature(feature: Any) -> tuple[str, str]:
    if feature.kind == "numeric":
        detail = (
            f"bounds [{feature.min:g}, {feature.max:g}], out of bounds: {feature.out_of_bounds}"
        )
        if not feature.required:
            detail += f", optional (missing imputed as {feature.impute:g})"
        return "numeric", detail
    detail = "levels " + ", ".join(feature.levels) + f" (reference {feature.levels[0]})"
    return "categorical", detail + ("" if feature.required else ", optional")


def _section_a(plan: RunPlan, reports: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "## (a) Systematic description of the processing (Art. 35(7)(a))",
        "",
        f"- **Purpose**: `{plan.purpose}` (GDPR Art. 5(1)(b)). A site whose"
        " `policy.allowed_purposes` does not list it refuses the plan; rows without consent for it"
        " are excluded before anything is computed.",
        f"- **Processing**: training a `{plan.model.kind}` discrete-time survival model over"
        f" {plan.training.rounds} federated round(s) in `{plan.training.mode}` mode; no"
        " patient-level record leaves any site.",
        f"- **Time grid**: {plan.time_grid.n_intervals} intervals, cuts"
        f" {', '.join(f'{c:g}' for c in plan.time_grid.cuts)} {plan.time_unit} (public, fixed"
        " by the plan, never derived from patients' event times).",
        f"- **Sites**: {', '.join(plan.sites) if plan.sites else 'any roster site that accepts'}"
        f"; quorum {plan.quorum}.",
        "- **Data subjects**: the patients in each participating hospital's export (its cohort).",
        "",
        "Data categories (health data, GDPR Art. 9), besides follow-up time and event status, read"
        " from each site's export exactly as below:",
        "",
        "| feature | kind | bounds / levels |",
        "| --- | --- | --- |",
    ]
    for feature in plan.features:
        kind, detail = _describe_feature(feature)
        lines.append(f"| `{_cell(feature.name)}` | {kind} | {_cell(detail)} |")
    retention = [
        f"{_site_label(r, i)}: {_retention(r)} days"
        for i, r in enumerate(reports)
        if _retention(r) is not None
    ]
    lines += [
        "",
        "**Recipients**: the consortium coordinator receives only secure-aggregation sums over"
        " at least the session threshold of sites (DP-noised model updates, statistics and"
        " metrics), never one site's release; operators with an `admin` certificate receive the"
        " trained model and the noised aggregates; each site keeps its own privacy ledger, records"
        " of processing and audit log.",
        "",
        "**Retention**: "
        + (
            "; ".join(retention)
            if retention
            else "each site's `policy.retention_days` (default 365) for run state; records of"
            " processing and the audit log are kept for the life of the privacy ledger"
            " (docs/gdpr.md)."
        ),
        "",
    ]
    return lines


def _section_b(plan: RunPlan, reports: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "## (b) Necessity and proportionality (Art. 35(7)(b))",
        "",
        "**Minimisation.** A run reads, of each row, only the plan's features plus patient id,"
        " consent, time and event; every other cell is dropped as the row is parsed. The patient"
        " id becomes an HMAC pseudonym as it is read. `python -m site_agent check --plan` audits"
        " every column of the export (direct identifier, quasi-identifier, special category,"
        " other) and says which the plan uses; a direct identifier mapped as a feature is refused."
        f" {_evidence('minimisation')}",
        "",
        "Each feature needs a justification (why the purpose cannot be met without it):",
        "",
    ]
    for feature in plan.features:
        lines.append(f"- `{feature.name}`: justification: {_BLANK}")
    lines += [
        "",
        f"**Proportionality.** Each site spends at most ε = {plan.privacy.epsilon:g},"
        f" δ = {plan.privacy.delta:g} on the whole run, checked against its own per-run and"
        " lifetime caps before it accepts. Is a less intrusive alternative (published aggregates,"
        f" fewer features, smaller ε) adequate? {_BLANK}",
        "",
    ]
    if reports:
        lines += [
            "Site checks (`site_agent check`):",
            "",
            "| site | rows read | valid | excluded | columns not read | direct identifiers"
            " in export | plan accepted | ε this run |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for i, r in enumerate(reports):
            audit = r.get("data_audit") or {}
            unread = sum(1 for e in audit.values() if not e.get("used_by_plan"))
            direct = sum(1 for e in audit.values() if e.get("class") == "direct_identifier")
            excluded = ", ".join(f"{k}: {v}" for k, v in r["excluded"].items()) or "none"
            decision = r.get("plan") or {}
            accepted = decision.get("accepted", "—")
            if decision.get("plan_sha256") not in (None, plan.sha256()):
                accepted = f"{accepted} (**checked against another plan**)"
            lines.append(
                f"| {_cell(_site_label(r, i))} | {r['rows_read']} | {r['rows_valid']} |"
                f" {_cell(excluded)} | {unread if audit else '—'} | {direct if audit else '—'} |"
                f" {accepted} | {decision.get('epsilon_run', '—')} |"
            )
        lines.append("")
    return lines


def _k_summary(reports: Sequence[dict[str, Any]]) -> str:
    found = [
        f"{_site_label(r, i)}: k = {a['k']}, l = {a['l']} over {a['quasi_identifiers'] or 'none'}"
        for i, r in enumerate(reports)
        if isinstance(a := r.get("k_anonymity"), dict)
    ]
    return "; ".join(found) if found else "no site report gives k-anonymity"


def _section_c(plan: RunPlan, reports: Sequence[dict[str, Any]]) -> list[str]:
    eps = plan.privacy.epsilon
    posterior = math.exp(eps) / (1 + math.exp(eps))
    bound = f"bounded by DP: from a 50% prior, at most {posterior:.1%} certainty (δ aside)"
    risks = [
        ("Re-identification", "a released aggregate singles out a patient", _k_summary(reports)),
        ("Membership inference", "whether a given patient was in a site's data", bound),
        (
            "Attribute inference",
            "a patient's feature or outcome from the model",
            "DP bounds what one record adds; population-level associations (the purpose) remain",
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
    lines += [f"| {n} | {w} | {_cell(b)} | {_FORM} | {_FORM} |" for n, w, b in risks]
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


def _section_d(plan: RunPlan, reports: Sequence[dict[str, Any]]) -> list[str]:
    p, t = plan.privacy, plan.training
    odds = odds_factor(p.epsilon)
    if t.mode == "distributed":
        mode = (
            f"`distributed`: each round every site releases an integer gradient sum with a Skellam"
            f" noise share; with noise_shares = {p.noise_shares} each honest site adds at least"
            f" 1/{p.noise_shares} of the target noise, and more if its"
            " `policy.trusted_noise_sites` trusts fewer sites (a site refuses a session or an"
            " unmask with fewer participants than it trusts to add noise). "
            + _evidence("distributed")
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
        f" lifetime budget is refused. {_evidence('dp')}",
        "",
        f"**Accountant**: `{p.accountant}` ({_ACCOUNTANTS[p.accountant]}); distributed-mode"
        " (Skellam) releases are always composed in RDP. " + _evidence("accountant"),
        "",
        f"**Training mode**: {mode}",
        "",
        f"**Secure aggregation.** The coordinator sees only sums over at least t sites; c ="
        f" max_colluding_sites = {plan.secagg.max_colluding_sites}, t > (n + c)/2 and every site"
        " re-derives t itself (a site's `policy.min_session_sites`, default 3, can raise n):",
        "",
        *_thresholds(plan),
        "",
        _evidence("secagg"),
        "",
        "**Pseudonymisation**: patient ids become HMAC-SHA256 pseudonyms under a site key as"
        f" rows are read. {_evidence('pseudonymisation')}",
        "",
        f"**Consent and purpose**: purpose `{plan.purpose}` must be in each site's"
        " `allowed_purposes`; a consent column or registry excludes rows without consent for it."
        f" {_evidence('consent')}",
        "",
        "**Erasure and access**: `site_agent erase` / `subject-report`; later loads exclude the"
        f" patient. {_evidence('erasure')}",
        "",
        "**Retention and records of processing**: run state purged after"
        " `policy.retention_days`; `site_agent records` lists every accepted run."
        f" {_evidence('retention')}",
        "",
        "**Access control**: mutual TLS with consortium-CA certificates, a CA-signed roster"
        f" checked by coordinator and sites, optional manual approval. {_evidence('access')}",
        "",
        "**Audit**: hash-chained logs at the coordinator and every site; `fedctl audit verify`"
        f" detects an edited, deleted or reordered entry. {_evidence('audit')}",
        "",
        "**State at rest**: 0700/0600 state, cached releases and session secrets encrypted"
        f" (AES-256-GCM). {_evidence('state')}",
        "",
    ]
    if reports:
        lines += ["Site-check figures:", ""]
        for i, r in enumerate(reports):
            warnings = len(r.get("warnings") or [])
            lines.append(
                f"- {_site_label(r, i)}: {r['rows_read']} rows read, {r['rows_valid']} valid,"
                f" events {r.get('events', '—')}; {_k_summary([r]).split(': ', 1)[-1]};"
                f" {warnings} warning(s)"
            )
        lines.append("")
    return lines


def _section_e() -> list[str]:
    return [
        "## (e) Consultation and sign-off (Art. 35(2), 35(9), 36)",
        "",
        f"- DPO's advice (Art. 35(2)): {_BLANK}",
        f"- Views of data subjects or their representatives (Art. 35(9)), or why not sought:"
        f" {_BLANK}",
        f"- Residual risk after measures: {_FORM}; prior consultation needed (Art. 36): ☐ yes ☐ no",
        "",
        "| name | role | date | decision |",
        "| --- | --- | --- | --- |",
        f"| {_BLANK} | DPO | {_BLANK} | ☐ approve ☐ approve with conditions ☐ reject |",
        f"| {_BLANK} | controller | {_BLANK} | ☐ approve ☐ approve with conditions ☐ reject |",
        "",
    ]


def render_dpia(plan: RunPlan, site_reports: list[dict[str, Any]]) -> str:
    """The DPIA as Markdown: pure (no I/O, no clock), so the same plan gives the same text."""
    head = [
        f"# Data protection impact assessment: {plan.name}",
        "",
        f"Plan SHA-256 `{plan.sha256()}` (the hash every site pins and audits). Generated by"
        " `fedctl dpia` from the plan"
        + (f" and {len(site_reports)} site check report(s)" if site_reports else "")
        + "; the forms are for the DPO.",
        "",
    ]
    body = (
        _section_a(plan, site_reports)
        + _section_b(plan, site_reports)
        + _section_c(plan, site_reports)
        + _section_d(plan, site_reports)
        + _section_e()
    )
    return "\n".join(head + body)
