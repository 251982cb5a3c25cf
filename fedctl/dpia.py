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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedctl.dpia_evidence import EVIDENCE
from fedctl.dpia_risks import (
    AUDIT_KEYS,
    BLANK,
    FORM,
    cell,
    evidence,
    odds_factor,
    section_c,
    section_d,
    site_label,
)
from fedctl.errors import EXIT_OK, CliError
from fedctl.markdown_html import to_html
from federation.plan import PlanError, RunPlan, parse_plan

__all__ = [
    "EVIDENCE",
    "REQUIRED_REPORT_KEYS",
    "cmd_dpia",
    "odds_factor",
    "read_privacy_audit",
    "register",
    "render_dpia",
    "to_html",
]

REQUIRED_REPORT_KEYS = ("rows_read", "rows_valid", "excluded")
"""Keys every `site_agent check` JSON has (site_agent/quality.py `to_json`); others are optional."""


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
    p.add_argument(
        "--privacy-audit",
        type=Path,
        default=None,
        help="the JSON of `benchmarks/privacy_audit.py --json`: its figures are cited as"
        " evidence (docs/privacy-audit.md)",
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


def read_privacy_audit(path: Path) -> list[dict[str, Any]]:
    """The privacy-audit records of an audit JSON (a list; records of another `kind`, such as a
    k-anonymity cost appended by another benchmark, are skipped)."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read privacy audit {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"privacy audit {path} is not JSON: {exc}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise CliError(
            f"privacy audit {path} must be a JSON list of records"
            " (benchmarks/privacy_audit.py --json writes one)"
        )
    audit = [r for r in records if r.get("kind", "privacy_audit") == "privacy_audit"]
    if not audit:
        raise CliError(f"privacy audit {path} has no privacy_audit record: rerun the benchmark")
    for i, record in enumerate(audit):
        missing = [key for key in AUDIT_KEYS if key not in record]
        if missing:
            raise CliError(
                f"privacy audit {path}, record {i + 1} lacks {missing}:"
                " is it benchmarks/privacy_audit.py --json output?"
            )
    return audit


def cmd_dpia(args: argparse.Namespace) -> int:
    plan = _read_plan(args.plan)
    reports = [_read_report(Path(p)) for p in args.site_report or []]
    audit_path = getattr(args, "privacy_audit", None)
    audit = read_privacy_audit(Path(audit_path)) if audit_path is not None else []
    text = render_dpia(plan, reports, audit)
    out = Path(args.out)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    if args.html:
        page = out.with_suffix(".html")
        page.write_text(to_html(text, f"DPIA: {plan.name}"), encoding="utf-8")
        print(f"wrote {page}")
    return EXIT_OK


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
        if feature.transform != "none":
            detail += f", the model sees {feature.transform}(value)"
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
        lines.append(f"| `{cell(feature.name)}` | {kind} | {cell(detail)} |")
    retention = [
        f"{site_label(r, i)}: {_retention(r)} days"
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
        f" {evidence('minimisation')}",
        "",
        "Each feature needs a justification (why the purpose cannot be met without it):",
        "",
    ]
    for feature in plan.features:
        lines.append(f"- `{feature.name}`: justification: {BLANK}")
    lines += [
        "",
        f"**Proportionality.** Each site spends at most ε = {plan.privacy.epsilon:g},"
        f" δ = {plan.privacy.delta:g} on the whole run, checked against its own per-run and"
        " lifetime caps before it accepts. Is a less intrusive alternative (published aggregates,"
        f" fewer features, smaller ε) adequate? {BLANK}",
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
                f"| {cell(site_label(r, i))} | {r['rows_read']} | {r['rows_valid']} |"
                f" {cell(excluded)} | {unread if audit else '—'} | {direct if audit else '—'} |"
                f" {accepted} | {decision.get('epsilon_run', '—')} |"
            )
        lines.append("")
    return lines


def _section_e() -> list[str]:
    return [
        "## (e) Consultation and sign-off (Art. 35(2), 35(9), 36)",
        "",
        f"- DPO's advice (Art. 35(2)): {BLANK}",
        f"- Views of data subjects or their representatives (Art. 35(9)), or why not sought:"
        f" {BLANK}",
        f"- Residual risk after measures: {FORM}; prior consultation needed (Art. 36): ☐ yes ☐ no",
        "",
        "| name | role | date | decision |",
        "| --- | --- | --- | --- |",
        f"| {BLANK} | DPO | {BLANK} | ☐ approve ☐ approve with conditions ☐ reject |",
        f"| {BLANK} | controller | {BLANK} | ☐ approve ☐ approve with conditions ☐ reject |",
        "",
    ]


def render_dpia(
    plan: RunPlan,
    site_reports: list[dict[str, Any]],
    privacy_audit: Sequence[dict[str, Any]] = (),
) -> str:
    """The DPIA as Markdown: pure (no I/O, no clock), so the same inputs give the same text."""
    head = [
        f"# Data protection impact assessment: {plan.name}",
        "",
        f"Plan SHA-256 `{plan.sha256()}` (the hash every site pins and audits). Generated by"
        " `fedctl dpia` from the plan"
        + (f" and {len(site_reports)} site check report(s)" if site_reports else "")
        + (" and an empirical privacy audit" if privacy_audit else "")
        + "; the forms are for the DPO.",
        "",
    ]
    body = (
        _section_a(plan, site_reports)
        + _section_b(plan, site_reports)
        + section_c(plan, site_reports, privacy_audit)
        + section_d(plan, site_reports, privacy_audit)
        + _section_e()
    )
    return "\n".join(head + body)
