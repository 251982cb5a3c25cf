"""An engine to and from the store: one JSON state plus named float32 vectors.

The state is one document here; the store keeps it as rows (a head, a part per site, the round
records: `coordinator/state_parts.py`) and writes only those a change touched.

The application saves a snapshot after every engine change, in the same transaction as the
change's audit entries, so a coordinator killed at any instant restarts from the last change it
answered for. The in-flight secure-aggregation session is deliberately *not* saved: its secrets
must not outlive the process, so `restore` retries a step that was in secure aggregation with
fresh keys (`RunEngine.resume`); sites themselves refuse to reuse a release that reached Unmask.

The JSON keys are the ones earlier coordinators wrote, so a store survives an upgrade.
"""

from __future__ import annotations

import base64
import json
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from coordinator.effects import Effect, Phase, RoundRecord, RunStatus, StepPart
from coordinator.engine import RunEngine
from coordinator.messages import PendingTask, new_task_id
from federation.plan import RunPlan
from federation.releases import ConsortiumStats, Purpose
from federation.tasks import TaskKind
from survival.schema import Standardization

GLOBAL_VECTOR = "global_vector"


def dump(
    engine: RunEngine, changing: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(JSON-able state, named vectors): everything `load` needs except the live session.
    Vectors are kept apart from the JSON so the store can skip rewriting unchanged megabytes.

    The plan's and the history's JSON are built once and reused (`_FixedParts`): the plan is
    fixed at submission and the history only grows by frozen records, and rebuilding both on
    every save made a save O(rounds), a run O(rounds²) (distributed mode runs hundreds of
    one-step rounds). The reused dicts are shared between dumps: nothing may change them.

    `changing`: `changing_state(engine)` when the caller has just built it (for `restart_key`),
    so that one save encodes the per-site fields once, not twice."""
    fixed = _FIXED.get(engine)
    if fixed is None or fixed.plan is not engine.plan:
        fixed = _FIXED[engine] = _FixedParts(engine.plan, engine.plan.model_dump(mode="json"))
    state: dict[str, Any] = {
        "run_id": engine.run_id,
        "plan": fixed.plan_json,
        "dry_run": engine.dry_run,
        **(changing_state(engine) if changing is None else changing),
        "history": fixed.history_json(engine.history),
    }
    vectors: dict[str, np.ndarray] = dict(engine.optimizer.state())
    if engine.global_vector is not None:
        vectors[GLOBAL_VECTOR] = engine.global_vector
    return state, vectors


class _FixedParts:
    """One engine's plan JSON, and the JSON of its history records so far (see `dump`)."""

    def __init__(self, plan: RunPlan, plan_json: dict[str, Any]) -> None:
        self.plan = plan
        self.plan_json = plan_json
        self._records: list[RoundRecord] = []
        self._json: list[dict[str, Any]] = []

    def history_json(self, history: list[RoundRecord]) -> list[dict[str, Any]]:
        """The JSON of `history`, converting only the records appended since the last call; if
        the list is not an extension of the one seen (never, for an engine), all of it."""
        known = len(self._records)
        if known > len(history) or (known and history[known - 1] is not self._records[-1]):
            self._records, self._json, known = [], [], 0
        for record in history[known:]:
            self._records.append(record)
            self._json.append(record.to_json())
        return list(self._json)


_FIXED: weakref.WeakKeyDictionary[RunEngine, _FixedParts] = weakref.WeakKeyDictionary()


def changing_state(engine: RunEngine) -> dict[str, Any]:
    """The part of `dump`'s state that is not fixed at submission (run id, plan, dry run) and
    not the append-only history: what `restart_key` compares."""
    stats = engine.stats
    state: dict[str, Any] = {
        "status": engine.status.value,
        "message": engine.message,
        "phase": engine.phase.value,
        "round": engine.round,
        "attempt": engine.attempt,
        "step": engine.step.value,
        "step_deadline": engine.step_deadline,
        "candidates": engine.candidates,
        "accepted": engine.accepted,
        "refusals": engine.refusals,
        "awaiting": engine.awaiting,
        "acked": engine.acked,
        "session_sites": {str(k): v for k, v in engine.session_sites.items()},
        "tasks": [task_to_json(t) for t in engine.tasks.values()]
        if resumable_tasks(engine)
        else [],
        "answered": engine.answered,
        # copies, not the engine's own dicts: the store compares a site's part with the one it
        # last wrote (`coordinator/run_rows.py`), which must not change under it in place
        "privacy": {site: dict(p) for site, p in engine.privacy.items()},
        "published": {site: dict(p) for site, p in engine.published.items()},
        "global_round": engine.global_round,
        "stats": None
        if stats is None
        else {
            "count": stats.count,
            "standardization": stats.standardization.model_dump(),
            "events": stats.events.tolist(),
            "at_risk": stats.at_risk.tolist(),
        },
    }
    if engine.optimizer.steps:
        state["optimizer_steps"] = engine.optimizer.steps
    return state


def resumable_tasks(engine: RunEngine) -> bool:
    """Whether a restart would use the engine's pending tasks. Tasks of a live secure-aggregation
    session die with the process (`RunEngine.resume` discards them), so they are not stored:
    every result of a session would otherwise rewrite every site's whole session message, which
    grows as n² per snapshot and n³ per round."""
    return not (engine.step is StepPart.SECAGG and not engine.status.terminal)


def restart_key(engine: RunEngine, changing: dict[str, Any] | None = None) -> str:
    """A text that changes exactly when what a restart would act on changes: whether it did
    decides whether a result rewrites the run's row (and re-reads its vectors).

    Inside a live session it leaves out who has answered (the session's results die with it),
    so its n results per stage write only their audit entries, not n copies of the state. It
    also leaves out what cannot change: the run id, the plan and the dry-run flag are fixed at
    submission, and the history only grows by frozen records, so its length stands for it.
    That keeps the per-result cost to the small changing part, where encoding the whole state
    (the plan and a record of every round's participants) made each result O(n · rounds)."""
    state = changing_state(engine) if changing is None else changing
    keyed = {k: v for k, v in state.items() if k != "answered" or resumable_tasks(engine)}
    keyed["history_length"] = len(engine.history)
    return json.dumps(keyed, sort_keys=True)


def load(
    state: Mapping[str, Any],
    vectors: Mapping[str, np.ndarray],
    ids: Callable[[], str] = new_task_id,
) -> RunEngine:
    """The engine `dump` described, exactly as it was (without its session): for read-only
    views of finished runs, and the first half of `restore`."""
    # a restarted coordinator must not turn a dry run into a real one (absent before dry runs)
    dry_run = bool(state.get("dry_run", False))
    engine = RunEngine(state["run_id"], RunPlan.model_validate(state["plan"]), ids, dry_run=dry_run)
    engine.status = RunStatus(state["status"])
    engine.message = state["message"]
    engine.phase = Phase(state["phase"])
    engine.round = state["round"]
    engine.attempt = state["attempt"]
    engine.step = StepPart(state["step"])
    engine.step_deadline = state["step_deadline"]
    engine.candidates = list(state["candidates"])
    engine.accepted = list(state["accepted"])
    engine.refusals = dict(state["refusals"])
    engine.awaiting = dict(state.get("awaiting", {}))  # absent in snapshots of older versions
    engine.acked = list(state["acked"])
    engine.session_sites = {int(k): v for k, v in state["session_sites"].items()}
    engine.tasks = {t["site"]: task_from_json(t) for t in state["tasks"]}
    engine.answered = dict(state["answered"])
    engine.history = [RoundRecord.from_json(r) for r in state["history"]]
    engine.privacy = {k: dict(v) for k, v in state["privacy"].items()}
    engine.published = {k: dict(v) for k, v in state.get("published", {}).items()}
    engine.global_round = state["global_round"]
    if state["stats"] is not None:
        stats = state["stats"]
        engine.stats = ConsortiumStats(
            count=stats["count"],
            standardization=Standardization.model_validate(stats["standardization"]),
            events=np.asarray(stats["events"]),
            at_risk=np.asarray(stats["at_risk"]),
        )
    floats = {name: np.asarray(value, dtype=np.float32) for name, value in vectors.items()}
    if GLOBAL_VECTOR in floats:
        engine.global_vector = floats[GLOBAL_VECTOR]
    # A store written before the step count was kept: one optimiser step per update round.
    steps = int(state.get("optimizer_steps", engine.global_round))
    engine.optimizer.load(steps, floats)
    return engine


def restore(
    state: Mapping[str, Any],
    vectors: Mapping[str, np.ndarray],
    now: float,
    ids: Callable[[], str] = new_task_id,
) -> tuple[RunEngine, list[Effect]]:
    """A stored run, ready to go on after a restart, and the effects of going on."""
    engine = load(state, vectors, ids)
    return engine, engine.resume(now)


def task_to_json(task: PendingTask) -> dict[str, Any]:
    """A pending task as stored: secagg bytes in base64 (the state is JSON).

    Built once per task (a task is frozen) and shared by every later snapshot: a stage's n
    tasks stay pending while its n results arrive, and re-encoding all of them (base64 of
    their secure-aggregation messages) at every result was O(n) of each result's cost. Callers
    must not change the returned document."""
    cached = _TASK_JSON.get(task)
    if cached is None:
        cached = _TASK_JSON[task] = _task_json(task)
    return cached


_TASK_JSON: weakref.WeakKeyDictionary[PendingTask, dict[str, Any]] = weakref.WeakKeyDictionary()


def _task_json(task: PendingTask) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "site": task.site,
        "kind": task.kind.value,
        "round": task.round,
        "attempt": task.attempt,
        "deadline": task.deadline,
        "purpose": task.purpose.value if task.purpose else None,
        "secagg_message": _b64(task.secagg_message),
        "session_config": _b64(task.session_config),
        "participants": [list(p) for p in task.participants],
    }


def task_from_json(data: Mapping[str, Any]) -> PendingTask:
    """Inverse of `task_to_json`."""
    return PendingTask(
        task_id=data["task_id"],
        site=data["site"],
        kind=TaskKind(data["kind"]),
        round=data["round"],
        attempt=data["attempt"],
        deadline=data["deadline"],
        purpose=Purpose(data["purpose"]) if data["purpose"] else None,
        secagg_message=_unb64(data["secagg_message"]),
        session_config=_unb64(data["session_config"]),
        participants=tuple((int(i), str(s)) for i, s in data["participants"]),
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))
