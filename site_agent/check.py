"""`python -m site_agent check`: read the data exactly as a run would, send nothing anywhere.

A hospital's data team runs it before joining a run (and after every new export): it prints the
data-quality report (rows, exclusions by reason, per-feature missing / imputed / clipped shares,
levels, events, follow-up, the hold-out split, warnings) and, given a plan, whether the site would
accept it, every reason if not, the ε the plan would spend here and what would remain of the
lifetime budget. Exit 0: valid (and accepted); 1: refused, or (without a plan) data no plan
could use; 2: bad input (config, data, plan). It sends nothing and writes no state, except the
split salt, which loading site.toml creates once when none is configured (the hold-out split
needs it).

The data audit (site_agent/data_audit.py) is part of `check` only: it reads the header and a
bounded sample of *every* column to classify it (direct identifier, quasi-identifier, special
category, other) and says which the plan uses (`data_audit`); for the plan's quasi-identifiers it
reports k-anonymity and l-diversity of the event (`k_anonymity`). A direct identifier mapped as a
feature is bad input (exit 2, naming the column and why). No cell value is ever printed. A run
never reads unmapped columns.

A plan with a `[privacy.k_anonymity]` layer is checked on the rows the layer leaves, exactly as a
run would read them (site_agent/anonymity.py): `k_anonymity` then covers the layer's
quasi-identifiers and adds `k_target`, `k_before` (exact values, before the layer) and
`rows_suppressed`; whether the site would accept is judged on the remaining rows. The data
quality report above it (rows read, valid, excluded) describes the export before the layer.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from federation.configfile import ConfigError
from federation.plan import DEFAULT_PURPOSE, PlanError, RunPlan, parse_plan
from site_agent.anonymity import AnonymisedDataset, anonymise
from site_agent.config import SiteConfig, load_site_config
from site_agent.data import DataError, LocalDataset, RowGate, load_local_data
from site_agent.data_audit import audit_columns, k_anonymity
from site_agent.policy import check_plan
from site_agent.pseudonyms import pseudonym_key
from site_agent.quality import data_refusals
from survival.schema import FeatureSchema

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def register(parser: argparse.ArgumentParser, name: str = "check") -> None:
    """The `check` subcommand's arguments."""
    del name
    parser.add_argument("--config", type=Path, required=True, help="site.toml")
    parser.add_argument("--plan", type=Path, help="a run plan (TOML) to check against")
    parser.add_argument("--output", choices=("text", "json"), default="text")


def run(args: argparse.Namespace) -> int:
    """Build the report, print it, and return the exit code."""
    try:
        config = load_site_config(args.config)
        plan = _read_plan(args.plan) if args.plan else None
        report = build_report(config, plan)
    except (ConfigError, PlanError, DataError) as exc:
        print(f"site_agent check: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    identifiers = identifier_features(report["data_audit"])
    if identifiers:
        for line in identifiers:
            print(f"site_agent check: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.output == "json":
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_text(report))
    if report["plan"] is not None:
        accepted = bool(report["plan"]["accepted"])
    else:
        accepted = not report["refusals"] and report["rows_valid"] > 0
    return EXIT_OK if accepted else EXIT_REFUSED


def _read_plan(path: Path) -> RunPlan:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror}") from None
    return parse_plan(text, "json" if path.suffix == ".json" else "toml")


def build_report(config: SiteConfig, plan: RunPlan | None) -> dict[str, Any]:
    """The JSON report (documented keys: rows_read, rows_valid, excluded, features, events,
    plan, warnings, …). Without a plan, every feature the site maps is read as optional."""
    policy = config.policy
    gate = _gate(config, plan)
    if plan is not None:
        data = load_local_data(
            config.data,
            plan.feature_schema,
            time_unit=plan.time_unit,
            horizon=plan.time_grid.horizon,
            small_cell=policy.small_cell_threshold,
            gate=gate,
        )
    else:
        data = load_local_data(config.data, _mapped_schema(config), gate=gate)
    assert data.quality is not None
    report = data.quality.to_json(policy.small_cell_threshold)
    report["data_audit"] = audit_columns(config.data, _uses(config, plan))
    for name, why in data.identifier_features.items():  # as the agent sees it at the offer
        column = config.data.local_column(name)
        entry = report["data_audit"].get(column)
        if entry is not None and entry["class"] != "direct_identifier":
            entry.update({"class": "direct_identifier", "why": why})
    report["k_anonymity"] = None
    rows = anonymise(plan, data) if plan is not None else data  # as a run of the plan reads
    anonymity = rows.anonymity if isinstance(rows, AnonymisedDataset) else None
    if anonymity is not None:
        report["k_anonymity"] = anonymity.to_json()
        quasi = anonymity.quasi_identifiers
        left = [name for name in _audited_quasi(config, report, plan) if name not in quasi]
        if left:
            report["warnings"].append(
                f"the data audit classifies plan features {left} as quasi-identifiers, but the"
                " plan's k-anonymity layer does not generalise them: k holds over"
                f" {quasi} only"
            )
        if anonymity.l == 1:
            report["warnings"].append(
                "l-diversity is 1 after the k-anonymity layer: in some class every patient has"
                " the same event value, which k-anonymity does not hide from someone who knows a"
                " patient is in that class (docs/gdpr.md, k-anonymity)"
            )
    elif plan is not None:
        quasi = _audited_quasi(config, report, plan)
        report["k_anonymity"] = k_anonymity(plan.feature_schema, data.raw, data.event, quasi)
    if report["k_anonymity"] is not None:
        k = report["k_anonymity"]["k"]
        if k is not None and k < policy.small_cell_threshold:
            report["warnings"].append(
                f"k-anonymity over the plan's quasi-identifiers {quasi} is {k}, below"
                f" policy.small_cell_threshold {policy.small_cell_threshold}: a released"
                " aggregate is protected by differential privacy, not by k"
            )
    report["refusals"] = data_refusals(data.quality)
    report["plan"] = None if plan is None else _plan_decision(config, plan, rows)
    return report


def _audited_quasi(config: SiteConfig, report: dict[str, Any], plan: RunPlan | None) -> list[str]:
    """The plan features whose column the data audit classifies as a quasi-identifier."""
    if plan is None:
        return []
    return [
        f.name
        for f in plan.features
        if report["data_audit"].get(config.data.local_column(f.name), {}).get("class")
        == "quasi_identifier"
    ]


def _gate(config: SiteConfig, plan: RunPlan | None) -> RowGate:
    """The run's row gate, read without creating state: the erasure list if the site has one,
    and the pseudonym key if it exists (else a throwaway one: registry entries by id still
    match, and no stored pseudonym can exist without the key)."""
    from site_agent.records import ProcessingRecords

    key = pseudonym_key(config.state_dir, create=False) or secrets.token_hex(32).encode()
    erased: frozenset[str] = frozenset()
    db = config.state_dir / "site.sqlite"
    if db.exists():
        records = ProcessingRecords(db)
        try:
            erased = records.erased()
        finally:
            records.close()
    return RowGate(plan.purpose if plan is not None else DEFAULT_PURPOSE, key, erased)


def _uses(config: SiteConfig, plan: RunPlan | None) -> dict[str, str]:
    """Local column → what the run uses it for (the plan's features, or without a plan the
    features the site maps)."""
    data = config.data
    names = [f.name for f in plan.features] if plan is not None else list(data.columns)
    uses = {data.time_column: "time", data.event_column: "event"}
    if data.id_column is not None:
        uses[data.id_column] = "patient id (pseudonymised at load)"
    if data.consent_column is not None:
        uses[data.consent_column] = "consent"
    uses.update({data.local_column(name): f"feature {name}" for name in names})  # wins: checked
    return uses


def identifier_features(audit: dict[str, dict[str, Any]]) -> list[str]:
    """One line per direct identifier mapped as a feature: the column and why (never values)."""
    return [
        f"column {column!r} ({entry['used_by_plan']}) is a direct identifier: {entry['why']};"
        " a direct identifier is never a model feature (remove it from [data.columns] or the plan)"
        for column, entry in audit.items()
        if entry["class"] == "direct_identifier"
        and str(entry["used_by_plan"] or "").startswith("feature ")
    ]


def _mapped_schema(config: SiteConfig) -> FeatureSchema:
    """Without a plan, the outcome alone decides a row (features need a plan's bounds)."""
    del config
    return FeatureSchema.model_construct(features=[])


def _plan_decision(config: SiteConfig, plan: RunPlan, data: LocalDataset) -> dict[str, Any]:
    from site_agent.ledger import PrivacyLedger

    policy = config.policy
    ledger_path = config.state_dir / "site.sqlite"
    spent = 0.0
    if ledger_path.exists():  # read only what is there: check creates no state
        ledger = PrivacyLedger(ledger_path, clock=lambda: 0.0)
        try:
            spent = ledger.epsilon_lifetime(policy.max_delta)
        finally:
            ledger.close()
    reason = check_plan(plan, policy, data.n_train, spent)
    assert data.quality is not None
    refusals = data_refusals(data.quality)
    if refusals:
        reason = "; ".join([*refusals, *([reason] if reason else [])])
    epsilon_run = min(plan.privacy.epsilon, policy.max_epsilon_per_run)
    return {
        "name": plan.name,
        "plan_sha256": plan.sha256(),
        "accepted": reason is None,
        "reasons": [] if reason is None else reason.split("; "),
        "epsilon_run": epsilon_run,
        "epsilon_spent": round(spent, 6),
        "epsilon_remaining": round(max(policy.lifetime_epsilon - spent - epsilon_run, 0.0), 6),
        "delta": plan.privacy.delta,
    }


def format_text(report: dict[str, Any]) -> str:
    """The report for a person: one section per question a data team asks."""
    lines = [
        f"rows read {report['rows_read']}, valid {report['rows_valid']}",
        f"events {report['events']} (rate {report['event_rate']:.1%}); follow-up in"
        f" {report['time_unit']}: median {report['followup']['median']:g},"
        f" range {report['followup']['min']:g}-{report['followup']['max']:g}",
        f"hold-out split: {report['holdout']['train']} training,"
        f" {report['holdout']['holdout']} held out; followed past the plan's horizon:"
        f" {report['beyond_horizon']}",
    ]
    if report["excluded"]:
        lines.append("excluded (a row failing several checks counts under each):")
        lines += [f"  {reason}: {n}" for reason, n in report["excluded"].items()]
    if report["features"]:
        lines.append("features:")
    for f in report["features"]:
        column = f["column"] if f["column"] is not None else "(not in the export: imputed)"
        lines.append(
            f"  {f['name']} <- {column}: missing {f['missing_share']:.1%},"
            f" imputed {f['imputed_share']:.1%}, clipped {f['clipped_share']:.1%}"
        )
        if f["levels"] is not None:
            levels = ", ".join(f"{level} {n}" for level, n in f["levels"].items())
            lines.append(f"    levels: {levels}")
        if f["unknown_levels"]:
            unknown = ", ".join(f"{v!r} {n}" for v, n in f["unknown_levels"].items())
            lines.append(f"    unknown values (rows excluded): {unknown}")
    plan = report["plan"]
    if plan is not None:
        verdict = "ACCEPTED" if plan["accepted"] else "REFUSED"
        lines.append(f"plan {plan['name']!r} ({plan['plan_sha256'][:12]}): {verdict}")
        lines += [f"  - {reason}" for reason in plan["reasons"]]
        lines.append(
            f"  ε this run {plan['epsilon_run']:g} (δ {plan['delta']:g}); lifetime spent"
            f" {plan['epsilon_spent']:g}, remaining after it {plan['epsilon_remaining']:g}"
        )
    if report["plan"] is None and report["refusals"]:
        lines.append("the data cannot be used:")
        lines += [f"  - {reason}" for reason in report["refusals"]]
    audit = report.get("data_audit") or {}
    if audit:
        lines.append("data audit (class of every column; values never shown):")
        for column, entry in audit.items():
            use = f", used as {entry['used_by_plan']}" if entry["used_by_plan"] else ", not read"
            lines.append(f"  {column}: {entry['class'].replace('_', ' ')} ({entry['why']}){use}")
    anonymity = report.get("k_anonymity")
    if anonymity is not None:
        lines.append(
            f"k-anonymity over {anonymity['quasi_identifiers'] or 'no quasi-identifier'}:"
            f" k = {anonymity['k']}, l = {anonymity['l']} (event) in {anonymity['classes']}"
            " classes"
        )
        if "k_target" in anonymity:
            lines.append(
                f"  the plan's k-anonymity layer (target k = {anonymity['k_target']}): k"
                f" {anonymity['k_before']} before it, {anonymity['k']} after generalisation and"
                f" suppression; rows suppressed {anonymity['rows_suppressed']} (site-local:"
                " this count is never sent)"
            )
    if report["warnings"]:
        lines.append("warnings:")
        lines += [f"  ! {warning}" for warning in report["warnings"]]
    return "\n".join(lines)
