"""`python -m site_agent approvals | approve | reject`: a person decides on a pending plan.

`approvals` lists the plans waiting (and decided) with their SHA-256; `approve` / `reject`
`--plan-sha256 HASH --by NAME [--reason TEXT]` record the decision, audited with who took it.
The running agent picks it up at its next poll of the offer. Exit 0 done, 2 bad input (unknown
hash, already decided, no name): one line, nothing changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from federation.audit import AuditLog
from federation.configfile import ConfigError
from site_agent.approvals import ApprovalError, ApprovalStore, Status
from site_agent.config import load_site_config

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def register(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `approvals`, `approve` and `reject`."""
    parser.add_argument("--config", type=Path, required=True, help="site.toml")
    if name == "approvals":
        parser.add_argument("--output", choices=("text", "json"), default="text")
    else:
        parser.add_argument("--plan-sha256", required=True, help="the plan's SHA-256 (hex)")
        parser.add_argument("--by", required=True, help="who decides (recorded and audited)")
        parser.add_argument("--reason", default="", help="why (recorded and audited)")
    parser.set_defaults(command=name)


def run(args: argparse.Namespace) -> int:
    """List, approve or reject; one line on stderr and exit 2 for bad input."""
    try:
        config = load_site_config(args.config)
    except ConfigError as exc:
        print(f"site_agent {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    store = ApprovalStore(config.state_dir / "site.sqlite")
    try:
        if args.command == "approvals":
            return _list(store, args.output)
        status: Status = "approved" if args.command == "approve" else "rejected"
        try:
            decided = store.decide(args.plan_sha256.strip().lower(), status, args.by, args.reason)
        except ApprovalError as exc:
            print(f"site_agent {args.command}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    finally:
        store.close()
    with AuditLog(config.state_dir / "audit.sqlite", clock=time.time) as audit:
        audit.append(
            config.site_id,
            f"plan_{status}",
            {"plan_sha256": decided.plan_sha256, "by": decided.decided_by, "reason": args.reason},
        )
    print(
        f"plan {decided.plan_name!r} ({decided.plan_sha256[:12]}) {status} by {decided.decided_by}"
    )
    return EXIT_OK


def _list(store: ApprovalStore, output: str) -> int:
    approvals = store.all()
    if output == "json":
        print(json.dumps([a.to_json() for a in approvals], indent=2))
        return EXIT_OK
    if not approvals:
        print("no plan has been offered under manual approval")
    for a in approvals:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.first_seen))
        decided = f" by {a.decided_by}" if a.decided_by else ""
        print(f"{a.status:<8} {a.plan_sha256}  {a.plan_name!r}  offered {when} UTC{decided}")
    return EXIT_OK
