"""`fedctl audit [list|verify] --db PATH`: read and verify a hash-chained audit database.

`verify` checks the chain alone, and against a head recorded elsewhere: `--head-file COPY` (a
copy of the `<db>.head` file the log writes after every append), or `--expect-head HASH` and
`--expect-min-seq N`. With neither, the head file beside the database is used if there is one
(which only catches someone who forgot it: a copy kept elsewhere is the real check).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

from fedctl.errors import EXIT_FAILED, EXIT_OK, CliError
from federation.audit import AuditLog
from federation.audit_chain import AuditEntry
from federation.audit_head import AuditError, AuditHead, head_file_path, read_head_file


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "audit",
        help="list or verify an audit log",
        description=(
            "List the entries of a hash-chained audit database, or verify the chain (exit 0 ok,"
            " 1 tampered, 2 bad input). The chain alone detects edited, reordered or deleted"
            " entries; a cut tail or an emptied or replaced database is detected only against a"
            " head kept elsewhere: ship copies of the DB.head file and check with --head-file."
        ),
    )
    parser.add_argument("action", nargs="?", choices=("list", "verify"), default="list")
    parser.add_argument("--db", required=True, help="audit SQLite database file")
    parser.add_argument("--after", type=int, default=0, help="list entries after this seq")
    parser.add_argument("--limit", type=int, default=100, help="list at most this many entries")
    parser.add_argument("--output", choices=("text", "json"), default="text")
    parser.add_argument(
        "--head-file",
        type=Path,
        help="verify: a copy of the database's head file kept elsewhere (its seq and hash)",
    )
    parser.add_argument(
        "--expect-head", metavar="HASH", help="verify: the chain must contain this head hash"
    )
    parser.add_argument(
        "--expect-min-seq",
        metavar="N",
        type=int,
        help="verify: the chain must have at least N entries",
    )
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    try:
        with AuditLog(args.db, clock=time.time, create=False) as log:
            if args.action == "verify":
                expected, source = _expected_head(args)
                return _verify(log, args.output, expected, source)
            return _list(log, args.after, args.limit, args.output)
    except AuditError as exc:
        raise CliError(f"{args.db}: {exc}") from exc


def _expected_head(args: argparse.Namespace) -> tuple[AuditHead | None, str | None]:
    """The head to verify against and where it came from (None, None: the chain alone)."""
    if args.head_file is not None and args.expect_head is not None:
        raise CliError("give --head-file or --expect-head, not both")
    if args.expect_min_seq is not None and args.expect_min_seq < 0:
        raise CliError(f"--expect-min-seq must be >= 0, got {args.expect_min_seq}")
    minimum = args.expect_min_seq or 0
    if args.head_file is not None:
        head = read_head_file(args.head_file)
        return AuditHead(max(head.seq, minimum), head.hash, head.ts), str(args.head_file)
    if args.expect_head is not None or args.expect_min_seq is not None:
        digest = args.expect_head.lower() if args.expect_head is not None else None
        if digest is not None and (len(digest) != 64 or set(digest) - set("0123456789abcdef")):
            raise CliError("--expect-head must be 64 hex digits")
        return AuditHead(minimum, digest or ""), "the command line"
    beside = head_file_path(args.db)
    if beside.exists():
        note = f"{beside} (beside the database; a copy kept elsewhere is stronger)"
        return read_head_file(beside), note
    return None, None


def _verify(log: AuditLog, output: str, expected: AuditHead | None, source: str | None) -> int:
    if expected is None:
        result = log.verify()
    else:
        result = log.verify(expect_head=expected.hash or None, expect_min_seq=expected.seq)
    if output == "json":
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "checked": result.checked,
                    "head_seq": result.head_seq,
                    "head_hash": result.head_hash,
                    "problem": result.problem,
                    "expected_head": None
                    if expected is None
                    else {"seq": expected.seq, "hash": expected.hash or None, "from": source},
                    "expected_head_seq": result.expected_head_seq,
                }
            )
        )
    elif result.ok:
        print(f"audit chain OK: {result.checked} entries")
        print(f"head seq {result.head_seq} hash {result.head_hash}")
        if expected is not None:
            found = _expected_found(result.expected_head_seq, result.checked, expected.seq)
            print(f"checked against {source}: {found}")
    else:
        print(f"audit chain TAMPERED: {result.problem}")
        print(f"verified {result.checked} entries; recorded head seq {result.head_seq}")
        if expected is not None:
            print(f"checked against {source}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _expected_found(found: int | None, checked: int, minimum: int) -> str:
    if found is None:
        return f"at least {minimum} entries, as expected"
    since = checked - found
    return f"the expected head is seq {found}" + (
        f", {since} entries appended since" if since else " (the current head)"
    )


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
