"""`fedctl audit [list|verify] --db PATH`: read and verify a hash-chained audit database."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import Any

from fedctl.cli import EXIT_FAILED, EXIT_OK, CliError
from federation.audit import AuditEntry, AuditError, AuditLog


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "audit",
        help="list or verify an audit log",
        description=(
            "List the entries of a hash-chained audit database, or verify the chain (exit 0 ok,"
            " 1 tampered, 2 bad input). Record the printed head hash elsewhere: only an"
            " externally kept head detects a database rewritten as a whole."
        ),
    )
    parser.add_argument("action", nargs="?", choices=("list", "verify"), default="list")
    parser.add_argument("--db", required=True, help="audit SQLite database file")
    parser.add_argument("--after", type=int, default=0, help="list entries after this seq")
    parser.add_argument("--limit", type=int, default=100, help="list at most this many entries")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        with AuditLog(args.db, clock=time.time, create=False) as log:
            if args.action == "verify":
                return _verify(log, args.output)
            return _list(log, args.after, args.limit, args.output)
    except AuditError as exc:
        raise CliError(f"{args.db}: {exc}") from exc


def _verify(log: AuditLog, output: str) -> int:
    result = log.verify()
    if output == "json":
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "checked": result.checked,
                    "head_seq": result.head_seq,
                    "head_hash": result.head_hash,
                    "problem": result.problem,
                }
            )
        )
    elif result.ok:
        print(f"audit chain OK: {result.checked} entries")
        print(f"head seq {result.head_seq} hash {result.head_hash}")
    else:
        print(f"audit chain TAMPERED: {result.problem}")
        print(f"verified {result.checked} entries; recorded head seq {result.head_seq}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _list(log: AuditLog, after: int, limit: int, output: str) -> int:
    entries = log.entries(after=after, limit=limit)
    if output == "json":
        print(json.dumps([e.to_json_dict() for e in entries]))
        return EXIT_OK
    for entry in entries:
        print(_format(entry))
    return EXIT_OK


def _format(entry: AuditEntry) -> str:
    when = dt.datetime.fromtimestamp(entry.ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    detail = json.dumps(entry.detail, sort_keys=True, separators=(",", ":"))
    return f"{entry.seq:>6}  {when}  {entry.actor}  {entry.action}  {detail}"
