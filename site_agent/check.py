"""`python -m site_agent check`: read the data exactly as a run would, send nothing anywhere.

A hospital's data team runs it before joining a run (and after every new export): it prints the
data-quality report (rows, exclusions by reason, per-feature missing / imputed / clipped shares,
levels, events, follow-up, the hold-out split, warnings) and, given a plan, whether the site would
accept it, every reason if not, the ε the plan would spend here and what would remain of the
lifetime budget. Exit 0: valid (and accepted); 1: refused, or (without a plan) data no plan
could use; 2: bad input (config, data, plan). It sends nothing and writes no state, except the
split salt, which loading site.toml creates once when none is configured (the hold-out split
needs it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from federation.configfile import ConfigError
from federation.plan import PlanError, RunPlan, parse_plan
from site_agent.config import SiteConfig, load_site_config
from site_agent.data import DataError, LocalDataset, load_local_data
from site_agent.policy import check_plan
from site_agent.quality import data_refusals
from survival.schema import FeatureSchema

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT = 0, 1, 2


def register(parser: argparse.ArgumentParser) -> None:
    """The `check` subcommand's arguments."""
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
    if plan is not None:
        data = load_local_data(
            config.data,
            plan.feature_schema,
            time_unit=plan.time_unit,
            horizon=plan.time_grid.horizon,
            small_cell=policy.small_cell_threshold,
        )
    else:
        data = load_local_data(config.data, _mapped_schema(config))
    assert data.quality is not None
    report = data.quality.to_json(policy.small_cell_threshold)
    report["refusals"] = data_refusals(data.quality)
    report["plan"] = None if plan is None else _plan_decision(config, plan, data)
    return report


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
    if report["warnings"]:
        lines.append("warnings:")
        lines += [f"  ! {warning}" for warning in report["warnings"]]
    return "\n".join(lines)
