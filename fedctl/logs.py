"""`fedctl logs RUN [--follow] [--site S]`: one run's story, read from the coordinator's audit log.

`fedctl watch` shows how a run stands now; when a run went wrong an operator wants to know what
happened, in order: who offered the plan, which sites accepted or refused it (with their refusal
codes), each step's aggregation and who survived it, retries, and how it ended. All of that is
already in the hash-chained audit log the coordinator keeps, so this command only reads the Admin
`GetAudit` pages (`after_seq` cursor, oldest first) and keeps the entries whose detail names the
run. It needs no new RPC and shows exactly what an auditor would later verify.

`--follow` keeps reading from the last sequence number it saw, and stops once `GetRun` says the run
is terminal (after one last read, so entries written before the end are not missed). Entries are
also de-duplicated by sequence number, so a page boundary that moves between polls never prints
an event twice.

The coordinator audits the clock's progress (`run_progress`) but not progress caused by a site's
result, so a run that completes on a result may have no entry saying "completed". When the log
holds no terminal `run_progress` for a terminal run, a last line built from `GetRun` says how it
ended (`action` "run_finished", `seq` null in JSON): the operator always sees the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from fedctl.errors import EXIT_OK
from fedctl.progress import TERMINAL
from fedctl.remote import add_config_argument, admin_stub, rpc_error
from federation.identity import URI_PREFIX
from federation.wire.v1 import admin_pb2, federation_pb2

PAGE = 1000
"""Entries per GetAudit call: the coordinator's own maximum, so a long log needs few calls."""
POLL_S = 1.0
"""How often `--follow` asks for new entries: a run's steps take seconds, not milliseconds."""
EXIT_INTERRUPTED = 130

_PURPOSE_STEP = {"stats": "stats", "update": "train", "metrics": "evaluate"}
"""An aggregation's purpose (the release it sums) as the step an operator knows it by."""
_TERMINAL_NAMES = {"completed", "failed", "stopped"}


def register(sub: Any) -> None:
    p = sub.add_parser(
        "logs",
        help="a run's events from the coordinator's audit log",
        description=(
            "Print a run's audit events one per line, oldest first: submission, plan decisions,"
            " site results and refusals with their codes, aggregations and survivors, retries,"
            " and the end. --follow keeps printing until the run ends (exit 0)."
        ),
    )
    p.add_argument("run_id")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")
    p.add_argument("--site", default=None, help="only this site's entries")
    add_config_argument(p)
    p.set_defaults(handler=cmd_logs)


# ---------------------------------------------------------------------- events
@dataclass(frozen=True)
class Event:
    """One audit entry of the run, in the shape both outputs print. `seq` is None only for the
    closing line built from GetRun (see the module docstring)."""

    seq: int | None
    ts: float
    actor: str
    action: str
    run_id: str
    site: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The JSON Lines record; these field names are the stable interface for scripts."""
        return {
            "seq": self.seq,
            "time": _iso(self.ts, millis=True),
            "actor": self.actor,
            "action": self.action,
            "run_id": self.run_id,
            "site": self.site,
            "detail": self.detail,
        }


def site_of(actor: str) -> str | None:
    """The site an actor is, if it is one: the store writes `site:NAME`, the authorisation
    layer writes the certificate's URI (`urn:concordia:site:NAME`)."""
    bare = actor.removeprefix(URI_PREFIX)
    return bare.removeprefix("site:") if bare.startswith("site:") else None


def event_of(entry: admin_pb2.AuditEntry) -> Event | None:
    """An audit entry as an Event, or None when its detail is not a JSON object naming a run
    (hellos, denials, roster loads: coordinator-wide, not part of any one run's story)."""
    try:
        detail = json.loads(entry.detail_json)
    except ValueError:
        return None
    if not isinstance(detail, dict) or not isinstance(detail.get("run_id"), str):
        return None
    return Event(
        seq=int(entry.seq),
        ts=float(entry.ts),
        actor=entry.actor,
        action=entry.action,
        run_id=detail["run_id"],
        site=site_of(entry.actor),
        detail=detail,
    )


def matches(event: Event, run_id: str, site: str | None) -> bool:
    """`--site` keeps the site's own entries (its results and refusals), not the coordinator's
    entries that merely list it: those are the run's, and `fedctl logs RUN` shows them."""
    return event.run_id == run_id and (site is None or event.site == site)


# ---------------------------------------------------------------------- reading
class AuditReader:
    """Reads the audit log forward from a cursor, page by page, never yielding a seq twice.

    The cursor is the `after_seq` of GetAudit; the `seen` set guards against a coordinator that
    returns an entry again (a page that overlaps the previous one)."""

    def __init__(self, stub: Any, run_id: str, site: str | None) -> None:
        self.stub = stub
        self.run_id = run_id
        self.site = site
        self.after = 0
        self.seen: set[int] = set()
        self.finished_logged = False

    def drain(self) -> Iterator[Event]:
        """Every new matching entry, until a page comes back short (the end of the log now)."""
        while True:
            response = self.stub.GetAudit(
                admin_pb2.GetAuditRequest(after_seq=self.after, limit=PAGE)
            )
            entries = list(response.entries)
            for entry in entries:
                seq = int(entry.seq)
                self.after = max(self.after, seq)
                if seq in self.seen:
                    continue
                self.seen.add(seq)
                event = event_of(entry)
                if event is None or event.run_id != self.run_id:
                    continue
                if event.action == "run_progress" and event.detail.get("status") in (
                    _TERMINAL_NAMES
                ):
                    self.finished_logged = True
                if matches(event, self.run_id, self.site):
                    yield event
            if len(entries) < PAGE:
                return


def closing_event(status: admin_pb2.RunStatus) -> Event:
    """How a terminal run ended, from GetRun, for when the log itself does not say so."""
    state = federation_pb2.RunState.Name(status.state).removeprefix("RUN_STATE_").lower()
    ts = status.updated_unix_ms / 1000 if status.updated_unix_ms else time.time()
    detail: dict[str, Any] = {
        "run_id": status.run_id,
        "status": state,
        "round": status.round,
        "total_rounds": status.total_rounds,
        "message": status.message,
        "source": "GetRun",
    }
    return Event(None, ts, "coordinator", "run_finished", status.run_id, None, detail)


def stream(
    stub: Any,
    run_id: str,
    *,
    site: str | None = None,
    follow: bool = False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Event]:
    """The run's events, oldest first; with `follow`, until the run is terminal.

    GetRun is asked *before* each read, so when it says terminal the read that follows holds
    every entry written up to the end. It is also the first call, so an unknown run fails at
    once (NOT_FOUND) instead of printing nothing."""
    reader = AuditReader(stub, run_id, site)
    while True:
        status = stub.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
        yield from reader.drain()
        terminal = status.state in TERMINAL
        if terminal or not follow:
            break
        sleep(POLL_S)
    if terminal and not reader.finished_logged and site is None:
        yield closing_event(status)


# ---------------------------------------------------------------------- formatting
def _iso(ts: float, *, millis: bool = False) -> str:
    when = dt.datetime.fromtimestamp(ts, dt.UTC)
    if millis:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def who(event: Event) -> str:
    """The actor as an operator reads it: a site's name, `coordinator`, `operator:NAME`."""
    if event.site is not None:
        return event.site
    bare = event.actor.removeprefix(URI_PREFIX)
    if bare.startswith("operator:"):
        return ":".join(bare.split(":")[:2])  # the role is in the certificate, not the story
    return bare


def _step(name: str, round_: Any) -> str:
    words = str(name).replace("_", " ")
    return f"{words} round {round_}" if isinstance(round_, int) and round_ > 0 else words


def _attempt(detail: dict[str, Any]) -> str:
    attempt = detail.get("attempt")
    return f" (attempt {attempt + 1})" if isinstance(attempt, int) and attempt > 0 else ""


def _metrics(metrics: Any) -> str:
    if not isinstance(metrics, dict) or not metrics:
        return ""
    return " · " + " ".join(
        f"{k}={v:.4g}" if isinstance(v, int | float) else f"{k}={v}"
        for k, v in sorted(metrics.items())
    )


def summary(event: Event) -> str:
    """The human half of a line, per action; an action this build does not know is shown as
    its detail, so a newer coordinator's entries are never hidden."""
    d = event.detail
    action = event.action
    if action == "run_submitted":
        candidates = d.get("candidates") or []
        plan = str(d.get("plan_sha256", ""))[:12]
        return f"plan {plan} offered to {len(candidates)} sites ({', '.join(candidates)})"
    if action == "result":
        step = _step(d.get("kind", "?"), d.get("round"))
        if d.get("error"):
            message = f": {d['message']}" if d.get("message") else ""
            return f"{step}: refused ({d['error']}{message})"
        eps = d.get("epsilon_run")
        return f"{step}: accepted" + (f" (ε run {eps:.2f})" if isinstance(eps, int | float) else "")
    if action == "result_rejected":
        return f"result rejected: {d.get('reason', '')}"
    if action == "aggregated":
        purpose = str(d.get("purpose", "?"))
        step = _step(_PURPOSE_STEP.get(purpose, purpose), d.get("round"))
        participants = list(d.get("participants") or [])
        survivors = list(d.get("survivors") or [])
        dropped = sorted(set(participants) - set(survivors))
        text = f"{step}{_attempt(d)}: {len(survivors)} of {len(participants)} sites"
        text += f" ({', '.join(survivors)})" if survivors else ""
        text += f", dropped {', '.join(dropped)}" if dropped else ""
        return text + _metrics(d.get("metrics"))
    if action in ("run_progress", "run_finished"):
        state = str(d.get("status", "?"))
        if action == "run_finished" or state in _TERMINAL_NAMES:
            rounds = f" in round {d['round']}" if d.get("round") else ""
            message = f": {d['message']}" if d.get("message") else ""
            return f"run {state}{rounds}{message}"
        where = _step(d.get("phase", "?"), d.get("round")) + _attempt(d)
        message = f": {d['message']}" if d.get("message") else ""
        return f"{state}, {where}{message}"
    if action == "run_stopped":
        return f"stop requested: {d.get('reason') or 'no reason given'}"
    if action == "run_resumed":
        return "run resumed after a coordinator restart"
    rest = {k: v for k, v in d.items() if k != "run_id"}
    return json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def action_label(event: Event) -> str:
    """Short lowercase labels for the text column; JSON keeps the audit log's action names."""
    return {"run_progress": "progress", "result_rejected": "rejected"}.get(
        event.action, event.action
    )


def text_line(event: Event) -> str:
    """`TIME  WHO  ACTION  SUMMARY`, the two first columns padded so the stream lines up."""
    return f"{_iso(event.ts)}  {who(event):<14}  {action_label(event):<13}  {summary(event)}"


def json_line(event: Event) -> str:
    return json.dumps(event.to_json(), sort_keys=True, ensure_ascii=False)


# ---------------------------------------------------------------------- command
def print_events(events: Iterator[Event], output: str) -> None:
    render = json_line if output == "json" else text_line
    for event in events:
        print(render(event), flush=True)


def cmd_logs(args: argparse.Namespace) -> int:
    """Ctrl-C is how an operator ends `--follow` early: exit 130 without a message (the run
    goes on; this command only reads)."""
    stub, _channel = admin_stub(args.config)
    try:
        print_events(stream(stub, args.run_id, site=args.site, follow=args.follow), args.output)
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    except KeyboardInterrupt:
        sys.stdout.flush()
        return EXIT_INTERRUPTED
    return EXIT_OK
