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
- **live** (`--output auto` on a terminal): one in-place view (rich): a progress bar over the
  rounds with its ETA, the stage, a per-site table (decision, alive, ε spent of the plan's ε),
  the latest metrics and the last few events.
- **json** (`--output json`): JSON Lines, one object per change and a final one. Field names and
  values are stable and lowercase (never protobuf enum spellings):

  `{"event": "status", ...}`, on every change of the run's status:
    `time` (UTC, ISO 8601, `Z`), `run_id`, `plan_name`, `state` (pending, running, completed,
    failed, stopped), `stage` (plan_offer, federated_stats, train, secagg_advertise_keys,
    secagg_share_keys, secagg_masked_input, secagg_consistency_check, secagg_unmask, aggregate,
    evaluate, done), `round` (1-based, 0 before the first), `total_rounds`, `attempt` (0 = first
    try of the round), `sites_alive`, `sites` (a list of `{"site", "decision" (pending, accepted,
    refused), "alive", "epsilon" (ε spent so far), "reason"}`), `metrics` (name → value, from the
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
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc

from fedctl.errors import EXIT_FAILED, EXIT_OK, CliError
from fedctl.remote import rpc_error
from federation.metric_intervals import SUFFIXES as METRIC_SUFFIXES
from federation.metric_intervals import Z95
from federation.wire.v1 import admin_pb2, federation_pb2

EXIT_INTERRUPTED = 130
TERMINAL = {
    federation_pb2.RUN_STATE_COMPLETED,
    federation_pb2.RUN_STATE_FAILED,
    federation_pb2.RUN_STATE_STOPPED,
}
KEY_METRICS = ("c_windowed", "ibs")  # the ones a status line shows; the summary shows all
EVENTS_SHOWN = 6  # the live view's "last events"
Clock = Callable[[], float]


# ---------------------------------------------------------------------- plain values
def state_name(status: admin_pb2.RunStatus) -> str:
    return str(federation_pb2.RunState.Name(status.state)).removeprefix("RUN_STATE_").lower()


def stage_name(status: admin_pb2.RunStatus) -> str:
    return str(admin_pb2.RunStage.Name(status.stage)).removeprefix("RUN_STAGE_").lower()


def decision_name(site: admin_pb2.SiteRunStatus) -> str:
    return str(admin_pb2.PlanDecision.Name(site.decision)).removeprefix("PLAN_DECISION_").lower()


def timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _offering(status: admin_pb2.RunStatus) -> bool:
    return status.stage == admin_pb2.RUN_STAGE_PLAN_OFFER or (
        status.state == federation_pb2.RUN_STATE_PENDING
    )


def answered(status: admin_pb2.RunStatus) -> int:
    return sum(1 for s in status.sites if s.decision in _ANSWERS)


_ANSWERS = {admin_pb2.PLAN_DECISION_ACCEPTED, admin_pb2.PLAN_DECISION_REFUSED}


def _participants(status: admin_pb2.RunStatus) -> list[admin_pb2.SiteRunStatus]:
    accepted = [s for s in status.sites if s.decision == admin_pb2.PLAN_DECISION_ACCEPTED]
    return accepted or list(status.sites)


def rounds_completed(status: admin_pb2.RunStatus) -> int:
    if status.state == federation_pb2.RUN_STATE_COMPLETED or (
        status.stage == admin_pb2.RUN_STAGE_DONE
    ):
        return status.round
    return max(status.round - 1, 0)


def _metrics_text(metrics: list[admin_pb2.Metric], only_key: bool) -> str:
    values = {m.name: m.value for m in metrics}
    names = [n for n in values if not _is_companion(n, values)]
    shown = [n for n in names if n in KEY_METRICS] if only_key else []
    return format_metrics(values, shown or names)


def format_metrics(values: Mapping[str, float], names: Iterable[str]) -> str:
    """`names` of `values` for a person: `c_windowed 0.620 ± 0.050` (± the 95 % half-width) or
    `c_windowed not resolvable at this ε (± 0.310)` when the coordinator sent the figure's
    uncertainty (`federation/metric_intervals.py`), so that noise is never read as a measurement;
    `name=0.620` for a figure without it. The companions (`_se`, `_lo`, `_hi`, `_resolvable`)
    are not listed on their own; JSON output keeps them all as numbers."""
    texts = [_metric_text(name, values) for name in names if name in values]
    with_interval = any(f"{name}_se" in values for name in names)
    return (", " if with_interval else " ").join(texts)


def _metric_text(name: str, values: Mapping[str, float]) -> str:
    value, se = values[name], values.get(f"{name}_se")
    if se is None:
        return f"{name}={value:.3f}"
    half = _number(Z95 * se)
    if values.get(f"{name}_resolvable", 1.0) < 0.5:
        return f"{name} not resolvable at this ε (± {half})"
    return f"{name} {_number(value)} ± {half}"


def _number(value: float) -> str:
    """Three decimals for the metrics in [0, 1], whole numbers for counts."""
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.0f}"


def _is_companion(name: str, values: Mapping[str, float]) -> bool:
    return any(name.endswith(s) and name[: -len(s)] in values for s in METRIC_SUFFIXES)


def _epsilon_text(status: admin_pb2.RunStatus) -> str:
    return " ".join(f"{s.site_id}={s.epsilon_spent:.2f}" for s in _participants(status))


def change_line(status: admin_pb2.RunStatus) -> str:
    """The status as one line, without its timestamp (what "a change" is compared on)."""
    state = state_name(status)
    head = status.run_id + ("" if state == "running" else f" {state}")
    head += f" round {status.round}/{status.total_rounds} {stage_name(status)}"
    if status.attempt:
        head += f" (attempt {status.attempt + 1})"
    parts = [head]
    if _offering(status):
        parts.append(f"sites answered {answered(status)}/{len(status.sites)}")
    else:
        parts.append(f"sites {status.sites_alive}/{len(_participants(status))} alive")
    if any(s.epsilon_spent for s in status.sites):
        parts.append(f"ε {_epsilon_text(status)}")
    if status.latest_metrics:
        metrics = _metrics_text(list(status.latest_metrics), only_key=True)
        parts.append(f"{metrics} (round {status.metrics_round})")
    if status.message and status.state in TERMINAL:
        parts.append(status.message)
    return " · ".join(parts)


def site_notes(status: admin_pb2.RunStatus, shown: set[tuple[str, str]]) -> list[str]:
    """A refusal's or a drop's reason, once per site and reason, so the operator can act on it."""
    notes = []
    for site in status.sites:
        if site.reason and (site.site_id, site.reason) not in shown:
            shown.add((site.site_id, site.reason))
            refused = site.decision == admin_pb2.PLAN_DECISION_REFUSED
            verb = "refused the plan" if refused else "dropped"
            notes.append(f"{status.run_id} {site.site_id} {verb}: {site.reason}")
    return notes


def event(status: admin_pb2.RunStatus, kind: str = "status") -> dict[str, Any]:
    """The JSON event of one status (without `time`); field names documented above."""
    return {
        "event": kind,
        "run_id": status.run_id,
        "plan_name": status.plan_name,
        "state": state_name(status),
        "stage": stage_name(status),
        "round": status.round,
        "total_rounds": status.total_rounds,
        "attempt": status.attempt,
        "sites_alive": status.sites_alive,
        "sites": [
            {
                "site": s.site_id,
                "decision": decision_name(s),
                "alive": s.alive,
                "epsilon": s.epsilon_spent,
                "reason": s.reason,
            }
            for s in status.sites
        ],
        "metrics": {m.name: m.value for m in status.latest_metrics},
        "metrics_round": status.metrics_round,
        "message": status.message,
    }


def summary(status: admin_pb2.RunStatus, plan_epsilon: float | None = None) -> list[str]:
    """The run's final summary: state, message, rounds, each site's ε, the latest metrics."""
    state = state_name(status)
    if status.state == federation_pb2.RUN_STATE_COMPLETED:
        head = f"run {status.run_id} completed: {status.round}/{status.total_rounds} rounds"
    elif status.state in TERMINAL:
        head = (
            f"run {status.run_id} {state} in round {status.round}/{status.total_rounds}"
            f" ({stage_name(status)}), {rounds_completed(status)} rounds completed"
        )
    else:
        head = (
            f"run {status.run_id} still {state} (round {status.round}/{status.total_rounds}):"
            f" the watch stream ended; re-attach with `fedctl watch {status.run_id}`"
        )
    lines = [head + (f" · {status.message}" if status.message else "")]
    of = f" (plan ε {plan_epsilon:g})" if plan_epsilon else ""
    lines.append(f"  ε spent: {_epsilon_text(status) or 'no site'}{of}")
    if status.latest_metrics:
        metrics = _metrics_text(list(status.latest_metrics), only_key=False)
        lines.append(f"  metrics (round {status.metrics_round}): {metrics}")
    else:
        lines.append("  metrics: none released")
    return lines


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


class LiveView:
    """The in-place terminal view (rich): progress over rounds, sites, metrics, last events."""

    def __init__(self, out: TextIO, clock: Clock, plan_epsilon: float | None) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.out, self.clock, self.plan_epsilon = out, clock, plan_epsilon
        self.console = Console(file=out)
        self.progress = Progress(
            TextColumn("rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.task = self.progress.add_task("rounds", total=None)
        self.status: admin_pb2.RunStatus | None = None
        self.metrics: list[admin_pb2.Metric] = []  # the latest released, kept between releases
        self.metrics_round = 0
        self.events: deque[str] = deque(maxlen=EVENTS_SHOWN)
        self._previous: str | None = None
        self._notes: set[tuple[str, str]] = set()
        self.live = Live(
            console=self.console, get_renderable=self._render, refresh_per_second=4, transient=False
        )

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        status = self.status
        if status is None:
            return Text("waiting for the coordinator…")
        head = f"{status.run_id} {status.plan_name} · {state_name(status)} · {stage_name(status)}"
        if status.attempt:
            head += f" (attempt {status.attempt + 1})"
        if _offering(status):
            head += f" · sites answered {answered(status)}/{len(status.sites)}"
        else:
            head += f" · sites {status.sites_alive}/{len(_participants(status))} alive"
        table = Table(box=None, pad_edge=False)
        for column in ("site", "decision", "alive", "ε spent", "reason"):
            table.add_column(column)
        of = f" / {self.plan_epsilon:g}" if self.plan_epsilon else ""
        for site in status.sites:
            alive = "yes" if site.alive else "no"
            table.add_row(
                site.site_id,
                decision_name(site),
                alive,
                f"{site.epsilon_spent:.2f}{of}",
                site.reason,
            )
        metrics = _metrics_text(self.metrics, only_key=False)
        metrics_line = f"metrics (round {self.metrics_round}): {metrics}" if metrics else ""
        return Group(
            Text(head, style="bold"),
            self.progress,
            table,
            Text(metrics_line or "metrics: none yet"),
            Text("\n".join(self.events), style="dim"),
        )

    def show(self, status: admin_pb2.RunStatus) -> None:
        self.status = status
        if status.latest_metrics:
            self.metrics, self.metrics_round = list(status.latest_metrics), status.metrics_round
        total = status.total_rounds or None
        self.progress.update(self.task, total=total, completed=rounds_completed(status))
        line = change_line(status)
        now = timestamp(self.clock())[11:19]
        if line != self._previous:
            self._previous = line
            self.events.append(f"{now} {line.removeprefix(status.run_id + ' ')}")
        for note in site_notes(status, self._notes):
            self.events.append(f"{now} {note}")
        self.live.refresh()

    def finish(self, final: admin_pb2.RunStatus, code: int, plan_epsilon: float | None) -> None:
        self.show(final)  # the last frame shows the final status (and GetRun's metrics)
        self.live.stop()  # idempotent; the summary goes below the last frame
        for line in summary(final, plan_epsilon):
            print(line, file=self.out, flush=True)

    def __enter__(self) -> LiveView:
        self.live.start(refresh=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()


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
    before the run did (a coordinator restart) or without metrics (`evaluate_every` > 1)."""
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
