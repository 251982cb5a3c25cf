"""The in-place terminal view of a run (rich), for `fedctl run` / `watch` on a terminal.

A progress bar over the rounds with its ETA, the stage, a per-site table (decision with any
refusal reason, alive, last seen, ε spent in this run / the run's limit, which is the plan's ε,
and the site's lifetime ε spent as of its last answer), the latest metrics with their intervals,
and the last few events. Only loaded when a terminal is
there and rich is installed (`fedctl.progress.choose_mode`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

from fedctl.run_status import (
    answered,
    change_line,
    decision_name,
    metrics_text,
    offering,
    participants,
    rounds_completed,
    site_notes,
    stage_name,
    state_name,
    summary,
    timestamp,
)
from federation.wire.v1 import admin_pb2

EVENTS_SHOWN = 6  # the live view's "last events"
BREAKDOWN = (
    ":"  # in per-subgroup / per-feature figure names: `subgroup:sex=F:ibs`, `importance:age`
)
Clock = Callable[[], float]


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
        if offering(status):
            head += f" · sites answered {answered(status)}/{len(status.sites)}"
        else:
            head += f" · sites {status.sites_alive}/{len(participants(status))} alive"
        table = Table(box=None, pad_edge=False)
        for column in (
            "site",
            "decision",
            "alive",
            "last seen",
            "ε spent / run limit",
            "lifetime ε",
        ):
            table.add_column(column)
        limit = f"{self.plan_epsilon:g}" if self.plan_epsilon else "?"
        now_ms = self.clock() * 1000
        for site in status.sites:
            table.add_row(
                site.site_id,
                decision_name(site) + (f": {site.reason}" if site.reason else ""),
                "yes" if site.alive else "no",
                last_seen(site.last_seen_unix_ms, now_ms),
                f"{site.epsilon_spent:.2f} / {limit}",
                f"{site.epsilon_lifetime:.2f}" if site.epsilon_lifetime else "-",
            )
        overall = [m for m in self.metrics if BREAKDOWN not in m.name]
        metrics = metrics_text(overall, only_key=False)
        metrics_line = f"metrics (round {self.metrics_round}): {metrics}" if metrics else ""
        breakdown = len({m.name for m in self.metrics} - {m.name for m in overall})
        if metrics_line and breakdown:
            # dozens of per-subgroup figures would push the table off the screen; the summary
            # below the last frame and `--output json` carry them all
            metrics_line += f" (+{breakdown} subgroup/feature figures in the summary)"
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


def last_seen(unix_ms: int, now_ms: float) -> str:
    """How long ago the coordinator last heard from a site: `4s ago`, `3m05s ago`, `-` never."""
    if unix_ms <= 0:
        return "-"
    seconds = max(0, int((now_ms - unix_ms) / 1000))
    if seconds < 60:
        return f"{seconds}s ago"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s ago"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m ago"
