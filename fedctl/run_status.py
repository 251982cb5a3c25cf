"""A run's status in words: the one-line change, the JSON event, the final summary.

Shared by every way `fedctl run` / `watch` shows a run (`fedctl/progress.py`: text lines and
JSON Lines; `fedctl/live_view.py`: the terminal view) and by `fedctl status`/`runs`, so a run
reads the same everywhere. Enum values are words from `fedctl/wire_names.py`, never protobuf
spellings; the JSON event's fields are listed in `fedctl/progress.py` and docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from fedctl.wire_names import PLAN_DECISIONS, RUN_STAGES, RUN_STATES, word
from federation.metric_intervals import SUFFIXES as METRIC_SUFFIXES
from federation.metric_intervals import Z95
from federation.wire.v1 import admin_pb2, federation_pb2

TERMINAL = {
    federation_pb2.RUN_STATE_COMPLETED,
    federation_pb2.RUN_STATE_FAILED,
    federation_pb2.RUN_STATE_STOPPED,
}
KEY_METRICS = ("c_windowed", "ibs", "oe_ratio")  # what a status line shows; the summary all


# ---------------------------------------------------------------------- plain values
def state_name(status: admin_pb2.RunStatus) -> str:
    return word(RUN_STATES, status.state)


def stage_name(status: admin_pb2.RunStatus) -> str:
    return word(RUN_STAGES, status.stage)


def decision_name(site: admin_pb2.SiteRunStatus) -> str:
    return word(PLAN_DECISIONS, site.decision)


def timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def offering(status: admin_pb2.RunStatus) -> bool:
    return status.stage == admin_pb2.RUN_STAGE_PLAN_OFFER or (
        status.state == federation_pb2.RUN_STATE_PENDING
    )


def answered(status: admin_pb2.RunStatus) -> int:
    return sum(1 for s in status.sites if s.decision in _ANSWERS)


_ANSWERS = {admin_pb2.PLAN_DECISION_ACCEPTED, admin_pb2.PLAN_DECISION_REFUSED}


def participants(status: admin_pb2.RunStatus) -> list[admin_pb2.SiteRunStatus]:
    accepted = [s for s in status.sites if s.decision == admin_pb2.PLAN_DECISION_ACCEPTED]
    return accepted or list(status.sites)


def rounds_completed(status: admin_pb2.RunStatus) -> int:
    if status.state == federation_pb2.RUN_STATE_COMPLETED or (
        status.stage == admin_pb2.RUN_STAGE_DONE
    ):
        return status.round
    return max(status.round - 1, 0)


def metrics_text(metrics: list[admin_pb2.Metric], only_key: bool) -> str:
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
    """`_se/_lo/_hi/_resolvable` of a shown figure, and O/E's own counts (`observed`,
    `expected`) when `oe_ratio` is shown: the line stays readable, JSON keeps them all."""
    if name in ("observed", "expected") and "oe_ratio" in values:
        return True
    return any(name.endswith(s) and name[: -len(s)] in values for s in METRIC_SUFFIXES)


def epsilon_text(status: admin_pb2.RunStatus) -> str:
    return " ".join(f"{s.site_id}={s.epsilon_spent:.2f}" for s in participants(status))


def change_line(status: admin_pb2.RunStatus) -> str:
    """The status as one line, without its timestamp (what "a change" is compared on)."""
    state = state_name(status)
    head = status.run_id + ("" if state == "running" else f" {state}")
    head += f" round {status.round}/{status.total_rounds} {stage_name(status)}"
    if status.attempt:
        head += f" (attempt {status.attempt + 1})"
    parts = [head]
    if offering(status):
        parts.append(f"sites answered {answered(status)}/{len(status.sites)}")
    else:
        parts.append(f"sites {status.sites_alive}/{len(participants(status))} alive")
    if any(s.epsilon_spent for s in status.sites):
        parts.append(f"ε {epsilon_text(status)}")
    if status.latest_metrics:
        metrics = metrics_text(list(status.latest_metrics), only_key=True)
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
                "epsilon_lifetime": s.epsilon_lifetime,
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
    lines.append(f"  ε spent: {epsilon_text(status) or 'no site'}{of}")
    if status.latest_metrics:
        overall = [m for m in status.latest_metrics if ":" not in m.name]
        metrics = metrics_text(overall, only_key=False)
        lines.append(f"  metrics (round {status.metrics_round}): {metrics}")
        lines += breakdown_lines(list(status.latest_metrics))
    else:
        lines.append("  metrics: none released")
    return lines


def breakdown_lines(metrics: list[admin_pb2.Metric]) -> list[str]:
    """One line per subgroup level or permuted feature (figure names `subgroup:sex=F:ibs`,
    `importance:age:delta_c`), in the order released: a few readable lines rather than dozens
    of figures on the metrics line."""
    groups: dict[str, dict[str, float]] = {}
    for metric in metrics:
        group, sep, name = metric.name.rpartition(":")
        if sep:
            groups.setdefault(group, {})[name] = metric.value
    lines = []
    for group, values in groups.items():
        kind, _, label = group.partition(":")
        names = [n for n in values if not _is_companion(n, values)]
        lines.append(f"    {kind} {label}: {format_metrics(values, names)}")
    return lines
