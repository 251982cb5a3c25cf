"""Operator commands over the Admin service: run, watch, status, runs, sites, stop, export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedctl import json_output, progress
from fedctl.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, CliError
from fedctl.remote import add_config_argument, admin_stub, rpc_error
from fedctl.run_status import decision_name, stage_name, state_name
from fedctl.wire_names import SITE_STATES, word
from federation.plan import PlanError, RunPlan, parse_plan
from federation.vectors import VectorError, decode_vector
from federation.wire.v1 import admin_pb2

TERMINAL = progress.TERMINAL


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="validate and submit a plan, then follow it")
    p.add_argument("plan", type=Path, help="run plan (TOML, or JSON with a .json suffix)")
    p.add_argument("--validate-only", action="store_true", help="check the plan, submit nothing")
    p.add_argument("--detach", action="store_true", help="submit and return without following")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="ask every connected site whether it would accept the plan (its reasons and ε"
        " estimate), print a per-site table; nothing is released, charged or recorded as a run."
        " Exit 0 if at least the quorum would accept, else 1",
    )
    p.add_argument(
        "--allow-concurrent",
        action="store_true",
        help="start the run even if some of its sites are in a live run (each run spends from"
        " the same site budgets; without this such a plan is refused with the combined ε)",
    )
    add_config_argument(p, follows=True)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("watch", help="follow a run until it ends (exit 0 completed, 1 otherwise)")
    p.add_argument("run_id")
    add_config_argument(p, follows=True)
    p.set_defaults(handler=cmd_watch)

    p = sub.add_parser("status", help="one run's status")
    p.add_argument("run_id")
    add_config_argument(p)
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--limit", type=int, default=20)
    add_config_argument(p)
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("sites", help="list sites, their state and policy")
    add_config_argument(p)
    p.set_defaults(handler=cmd_sites)

    p = sub.add_parser("stop", help="stop a run")
    p.add_argument("run_id")
    p.add_argument("--reason", default="")
    add_config_argument(p)
    p.set_defaults(handler=cmd_stop)

    p = sub.add_parser("export", help="export a run's global model and model card")
    p.add_argument("run_id")
    p.add_argument("--round", type=int, default=0, help="round to export (default: latest)")
    p.add_argument("--out", type=Path, required=True, help="folder for model.pt + model_card.json")
    add_config_argument(p)
    p.set_defaults(handler=cmd_export)


# ---------------------------------------------------------------------- formatting
def status_line(status: admin_pb2.RunStatus) -> str:
    state, stage = state_name(status), stage_name(status)
    eps = _epsilon_summary(status)
    values = {m.name: m.value for m in status.latest_metrics}
    metrics = progress.format_metrics(values, progress.KEY_METRICS)
    accepted = sum(1 for s in status.sites if s.decision == admin_pb2.PLAN_DECISION_ACCEPTED)
    parts = [
        f"{status.run_id}",
        f"{state}",
        f"round {status.round}/{status.total_rounds}",
        f"{stage}" + (f" (attempt {status.attempt + 1})" if status.attempt else ""),
        (
            f"sites answered {progress.answered(status)}/{len(status.sites)}"
            if status.stage == admin_pb2.RUN_STAGE_PLAN_OFFER
            else f"sites alive {status.sites_alive}/{accepted or len(status.sites)}"
        ),
    ]
    if eps:
        parts.append(f"ε {eps}")
    if metrics:
        parts.append(f"round {status.metrics_round}: {metrics}")
    if status.message and status.state in TERMINAL:
        parts.append(status.message)
    return " · ".join(parts)


NAMED_EPSILON_SITES = 6
"""Up to this many sites the status line names each site's ε; past it, one line per status
would run to thousands of characters at a hundred sites, so it gives the range instead
(`fedctl sites` and `--output json` still have every figure)."""


def _epsilon_summary(status: admin_pb2.RunStatus) -> str:
    spent = [(s.site_id, s.epsilon_spent) for s in status.sites if s.epsilon_spent]
    if len(spent) <= NAMED_EPSILON_SITES:
        return " ".join(f"{site}={eps:.2f}" for site, eps in spent)
    low, high = min(e for _, e in spent), max(e for _, e in spent)
    span = f"{low:.2f}" if f"{low:.2f}" == f"{high:.2f}" else f"{low:.2f}–{high:.2f}"
    return f"{span} at {len(spent)} sites"


def _json(message: Any) -> str:
    """`--output json` of a reply: fields by name and enum words (fedctl/json_output.py)."""
    if isinstance(message, admin_pb2.RunStatus):
        return json_output.dumps(json_output.run_json(message))
    if isinstance(message, admin_pb2.ListRunsResponse):
        return json_output.dumps(json_output.runs_json(message))
    if isinstance(message, admin_pb2.ListSitesResponse):
        return json_output.dumps(json_output.sites_json(message))
    if isinstance(message, admin_pb2.SubmitRunResponse):
        return json_output.dumps(json_output.submit_json(message))
    raise TypeError(f"no JSON form for {type(message).__name__}")


def follow(
    stub: Any,
    run_id: str,
    output: str,
    *,
    plan_epsilon: float | None = None,
    detachable: bool = True,
) -> int:
    """Follow a run until it ends (0 completed, 1 otherwise, 130 on Ctrl-C): `fedctl.progress`."""
    return progress.follow(stub, run_id, output, plan_epsilon=plan_epsilon, detachable=detachable)


DRY_RUN_ANSWER: dict[int, str] = {
    admin_pb2.PLAN_DECISION_ACCEPTED: "would accept",
    admin_pb2.PLAN_DECISION_REFUSED: "refuses",
}


def dry_run_table(status: admin_pb2.RunStatus) -> str:
    """A dry run's answer, one row per candidate site: would it accept, the ε the plan would
    spend there, its lifetime ε spent so far, and its reason (a refusal's, or a note such as
    "needs manual approval"). The reason comes last: it is the one column of unbounded width."""
    header = ("site", "answer", "ε run", "ε lifetime", "reason")
    rows = [
        (
            site.site_id,
            DRY_RUN_ANSWER.get(site.decision, "no answer"),
            f"{site.epsilon_spent:.2f}"
            if site.decision != admin_pb2.PLAN_DECISION_PENDING
            else "-",
            f"{site.epsilon_lifetime:.2f}"
            if site.decision != admin_pb2.PLAN_DECISION_PENDING
            else "-",
            site.reason or "-",
        )
        for site in status.sites
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = [
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4]]
        ).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join([*lines, status.message])


def _follow_dry_run(stub: Any, run_id: str, output: str) -> int:
    """Follow a dry run to its end, then print its per-site table (the JSON status with
    `--output json`). The exit code is `follow`'s: the coordinator completes a dry run only
    if at least the plan's quorum would accept."""
    code = follow(stub, run_id, output if output == "json" else "text")
    if code not in (EXIT_OK, EXIT_FAILED):
        return code  # interrupted: the table is not final yet
    try:
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    print(_json(status) if output == "json" else dry_run_table(status), flush=True)
    return code


# ---------------------------------------------------------------------- commands
def cmd_run(args: argparse.Namespace) -> int:
    try:
        text = args.plan.read_text()
    except FileNotFoundError:
        raise CliError(f"{args.plan}: no such plan file") from None
    fmt = admin_pb2.PLAN_FORMAT_JSON if args.plan.suffix == ".json" else admin_pb2.PLAN_FORMAT_TOML
    stub, _channel = admin_stub(args.config)
    try:
        response = stub.SubmitRun(
            admin_pb2.SubmitRunRequest(
                format=fmt,
                plan_text=text,
                validate_only=args.validate_only,
                allow_concurrent=args.allow_concurrent,
                dry_run=args.dry_run,
            )
        )
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    if response.errors:
        for error in response.errors:
            print(f"fedctl: error: {error.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.validate_only:
        print(
            _json(response) if args.output == "json" else f"plan OK (sha256 {response.plan_sha256})"
        )
        return EXIT_OK
    if args.output == "json":
        print(_json(response), flush=True)
    else:
        what = "dry run" if args.dry_run else "submitted"
        print(f"{what} {response.run_id} (plan sha256 {response.plan_sha256[:16]})", flush=True)
    if args.detach:
        return EXIT_OK
    if args.dry_run:
        return _follow_dry_run(stub, response.run_id, args.output)
    return follow(stub, response.run_id, args.output, plan_epsilon=_plan_epsilon(text, fmt))


def _plan_epsilon(text: str, fmt: int) -> float | None:
    """The plan's per-site ε, for "ε spent of ε" (None if this fedctl cannot read the plan: the
    coordinator, which accepted it, is the judge)."""
    try:
        plan = parse_plan(text, "json" if fmt == admin_pb2.PLAN_FORMAT_JSON else "toml")
    except PlanError:
        return None
    return plan.privacy.epsilon


def cmd_watch(args: argparse.Namespace) -> int:
    stub, _channel = admin_stub(args.config)
    return follow(stub, args.run_id, args.output)


def cmd_status(args: argparse.Namespace) -> int:
    stub, _channel = admin_stub(args.config)
    try:
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=args.run_id))
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    if args.output == "json":
        print(_json(status))
        return EXIT_OK
    print(status_line(status))
    for site in status.sites:
        decision = decision_name(site)
        alive = "alive" if site.alive else "-"
        line = f"  {site.site_id:<20} {decision:<9} {alive:<6} ε={site.epsilon_spent:.3f}"
        print(line + (f"  {site.reason}" if site.reason else ""))
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    stub, _channel = admin_stub(args.config)
    try:
        response = stub.ListRuns(admin_pb2.ListRunsRequest(limit=args.limit))
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    if args.output == "json":
        print(_json(response))
    else:
        for status in response.runs:
            print(status_line(status))
        if not response.runs:
            print("no runs")
    return EXIT_OK


def cmd_sites(args: argparse.Namespace) -> int:
    stub, _channel = admin_stub(args.config)
    try:
        response = stub.ListSites(admin_pb2.ListSitesRequest())
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    if args.output == "json":
        print(_json(response))
        return EXIT_OK
    if not response.sites:
        print("no site has connected yet")
        return EXIT_OK
    print(f"online = last call < {response.online_timeout_s:g} s ago")
    for site in response.sites:
        state = word(SITE_STATES, site.state)
        policy = site.policy
        line = (
            f"{site.site_id:<20} {state:<8} seen {format_age(site.last_seen_age_s):>7} ago "
            f"agent {site.agent_version or '?':<10} "
            f"max ε/run {policy.max_epsilon_per_run:g} "
            f"lifetime ε {policy.lifetime_epsilon_spent:.2f}"
            f"/{policy.lifetime_epsilon_budget:g}"
        )
        if site.run_id:
            line += f" · {site.run_id} ε {site.run_epsilon_spent:.2f}"
        print(line)
    return EXIT_OK


def format_age(seconds: float) -> str:
    """A last-seen age as an operator reads it: 4s, 3m05s, 2h07m, 3d04h."""
    total = max(0, int(seconds))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def cmd_stop(args: argparse.Namespace) -> int:
    stub, _channel = admin_stub(args.config)
    try:
        status = stub.StopRun(admin_pb2.StopRunRequest(run_id=args.run_id, reason=args.reason))
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    print(_json(status) if args.output == "json" else status_line(status))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    stub, _channel = admin_stub(args.config)
    try:
        response = stub.ExportRun(admin_pb2.ExportRunRequest(run_id=args.run_id, round=args.round))
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    paths = write_export(response, args.out)
    if args.output == "json":
        print(json.dumps({k: str(v) for k, v in paths.items()}))
    else:
        print(
            f"exported {response.run_id} round {response.round}: {paths['model']} {paths['card']}"
        )
    return EXIT_OK


def exported_vector(response: admin_pb2.ExportRunResponse, plan: RunPlan) -> np.ndarray:
    """The export's global vector, decoded by the one wire codec (`federation/vectors.py`): a
    truncated, altered or non-finite vector, or one of another length than the plan's model, is
    refused with one line instead of becoming a model file."""
    from survival.spec import parameter_count

    expected = parameter_count(
        plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    )
    try:
        return decode_vector(response.global_vector, expected_length=expected)
    except VectorError as exc:
        raise CliError(f"run {response.run_id}: exported model: {exc}", EXIT_FAILED) from None


def write_export(response: admin_pb2.ExportRunResponse, out: Path) -> dict[str, Path]:
    """model.pt (a torch state dict) and model_card.json, from an ExportRun answer."""
    import torch

    from survival.models import build_model, load_flat_parameters

    card = json.loads(response.model_card_json)
    plan = RunPlan.model_validate(card["plan"])
    vector = exported_vector(response, plan)
    model = build_model(plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals)
    load_flat_parameters(model, vector)
    out.mkdir(parents=True, exist_ok=True)
    model_path, card_path = out / "model.pt", out / "model_card.json"
    torch.save(model.state_dict(), model_path)
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return {"model": model_path, "card": card_path}
