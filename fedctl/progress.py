"""How `fedctl run` and `fedctl watch` show a run while it goes: lines, JSON events or a live view.

`follow` reads the coordinator's WatchRun stream and renders it one of three ways:

- **text** (`--output text`, and `--output auto` whenever stdout is not a terminal): one
  timestamped line per *change*, e.g.
  `2026-12-01T12:00:03Z run-x round 3/10 train · sites 3/3 alive · ε a=1.20 b=1.20 · …`.
  A line equal to the previous one (the timestamp aside) is never printed, so a stream that
  repeats a status prints nothing for it. During the plan offer the sites part reads
  `sites answered k/n`. A metric the coordinator sent with its uncertainty reads
  `c_windowed 0.620 ± 0.050` (± the 95 % half-width of DP noise and sampling), or
  `c_windowed not resolvable at this ε (± 0.310)` when that interval is too wide to tell
  anything (`federation/metric_intervals.py`); summaries and the live view print them alike.
- **live** (`--output auto` on a terminal): one in-place view (rich, `fedctl/live_view.py`): a
  progress bar over the rounds with its ETA, the stage, a per-site table (decision, alive, last
  seen, ε spent / the run's limit, lifetime ε), the latest metrics and the last few events.
- **json** (`--output json`): JSON Lines, one object per change and a final one. Field names and
  values are stable and lowercase (never protobuf enum spellings):

  `{"event": "status", ...}`, on every change of the run's status:
    `time` (UTC, ISO 8601, `Z`), `run_id`, `plan_name`, `state` (pending, running, completed,
    failed, stopped), `stage` (plan_offer, federated_stats, train, secagg_advertise_keys,
    secagg_share_keys, secagg_masked_input, secagg_consistency_check, secagg_unmask, aggregate,
    evaluate, done), `round` (1-based, 0 before the first), `total_rounds`, `attempt` (0 = first
    try of the round), `sites_alive`, `sites` (a list of `{"site", "decision" (pending, accepted,
    refused), "alive", "epsilon" (ε spent so far in this run), "epsilon_lifetime" (the site's
    lifetime ε spent, as of its last answer), "reason"}`), `metrics` (name → value, from the
    latest federated evaluation), `metrics_round` (the round those metrics belong to), `message`.
  `{"event": "finished", ...}`, once, when following ends: the same fields for the final status
    (`metrics` completed from a final GetRun when the last streamed status had none), plus
    `rounds_completed` and `exit_code` (0 completed, 1 otherwise).

All three end with the run's summary (state, message, rounds, each site's ε, the latest metrics);
text and live print the same summary. Ctrl-C stops following, not the run: stderr says how to
re-attach (`fedctl watch RUN`) or stop it (`fedctl stop RUN`), and the exit code is 130.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from fedctl.errors import EXIT_FAILED, EXIT_OK, CliError
from fedctl.remote import rpc_error
from fedctl.run_status import (
    KEY_METRICS,
    TERMINAL,
    answered,
    change_line,
    event,
    format_metrics,
    rounds_completed,
    site_notes,
    summary,
    timestamp,
)
from federation.wire.v1 import admin_pb2, federation_pb2

if TYPE_CHECKING:
    from fedctl.live_view import LiveView

__all__ = [
    "KEY_METRICS",
    "TERMINAL",
    "TextView",
    "answered",
    "change_line",
    "choose_mode",
    "event",
    "follow",
    "format_metrics",
    "summary",
]

EXIT_INTERRUPTED = 130
Clock = Callable[[], float]


# ---------------------------------------------------------------------- renderers
class TextView:
    """One timestamped line per change; JSON Lines when `as_json`."""

    def __init__(self, out: TextIO, clock: Clock, as_json: bool = False) -> None:
        self.out, self.clock, self.as_json = out, clock, as_json
        self._previous: str | None = None
        self._notes: set[tuple[str, str]] = set()

    def _emit(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def show(self, status: admin_pb2.RunStatus) -> None:
        if self.as_json:
            key = json.dumps(event(status), sort_keys=True)
            if key != self._previous:
                self._previous = key
                self._emit(json.dumps({"time": timestamp(self.clock()), **event(status)}))
            return
        line = change_line(status)
        now = timestamp(self.clock())
        if line != self._previous:
            self._previous = line
            self._emit(f"{now} {line}")
        for note in site_notes(status, self._notes):
            self._emit(f"{now} {note}")

    def finish(self, final: admin_pb2.RunStatus, code: int, plan_epsilon: float | None) -> None:
        if self.as_json:
            record = {"time": timestamp(self.clock()), **event(final, "finished")}
            record.update(rounds_completed=rounds_completed(final), exit_code=code)
            self._emit(json.dumps(record))
            return
        for line in summary(final, plan_epsilon):
            self._emit(line)

    def __enter__(self) -> TextView:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def choose_mode(output: str, out: TextIO) -> str:
    """ "json", "live" (auto on a terminal, rich installed) or "text"."""
    if output in ("json", "text"):
        return output
    if not (hasattr(out, "isatty") and out.isatty()) or os.environ.get("TERM") == "dumb":
        return "text"
    try:
        import rich  # noqa: F401
    except ImportError:
        return "text"
    return "live"


# ---------------------------------------------------------------------- follow
def follow(
    stub: Any,
    run_id: str,
    output: str = "auto",
    *,
    plan_epsilon: float | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    clock: Clock = time.time,
    detachable: bool = True,
) -> int:
    """Follow a run until it ends; returns 0 completed, 1 otherwise, 130 on Ctrl-C. With
    `detachable` False (the demo, which stops its federation on the way out) Ctrl-C propagates."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    mode = choose_mode(output, out)
    view: TextView | LiveView
    if mode == "live":
        from fedctl.live_view import LiveView

        view = LiveView(out, clock, plan_epsilon)
    else:
        view = TextView(out, clock, as_json=mode == "json")
    last: admin_pb2.RunStatus | None = None
    metrics: admin_pb2.RunStatus | None = None  # the last status that carried metrics
    stream = None
    try:
        with view:
            stream = stub.WatchRun(admin_pb2.WatchRunRequest(run_id=run_id))
            for status in stream:
                last = status
                if status.latest_metrics:
                    metrics = status
                view.show(status)
            if last is None:
                raise CliError(f"no status for run {run_id}", exit_code=EXIT_FAILED)
            final = _final(stub, run_id, last, metrics)
            code = EXIT_OK if final.state == federation_pb2.RUN_STATE_COMPLETED else EXIT_FAILED
            view.finish(final, code, plan_epsilon)
            return code
    except grpc.RpcError as exc:
        raise rpc_error(exc) from None
    except KeyboardInterrupt:
        cancel = getattr(stream, "cancel", None)
        if callable(cancel):
            cancel()
        if not detachable:
            raise
        print(
            f"\nfedctl: stopped following {run_id}; the run continues on the coordinator.\n"
            f"  re-attach: fedctl watch {run_id}\n"
            f"  stop it:   fedctl stop {run_id}",
            file=err,
            flush=True,
        )
        return EXIT_INTERRUPTED


def _final(
    stub: Any,
    run_id: str,
    last: admin_pb2.RunStatus,
    metrics: admin_pb2.RunStatus | None,
) -> admin_pb2.RunStatus:
    """The status to summarise: the last one streamed, completed by a GetRun when the stream ended
    before the run did (a coordinator restart) or without metrics (a status between
    evaluations: by default the final model's is the only one)."""
    final = last
    if last.state not in TERMINAL or not last.latest_metrics:
        try:
            final = stub.GetRun(admin_pb2.GetRunRequest(run_id=run_id))
        except grpc.RpcError:
            if last.state not in TERMINAL:
                raise
    if not final.latest_metrics and metrics is not None:
        copy = admin_pb2.RunStatus()
        copy.CopyFrom(final)
        final = copy
        final.latest_metrics.extend(metrics.latest_metrics)
        final.metrics_round = metrics.metrics_round
    return final
