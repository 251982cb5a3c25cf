"""What the round engine tells the rest of the coordinator, as plain values.

The engine (`coordinator/engine.py`) is a sans-I/O state machine in the style of h11: each input
(`start`, `on_result`, `tick`, `stop`, and `resume` after a restore) returns a list of *effects*,
frozen values saying what happened that the outside must act on: wake sites whose task changed,
log a decoded secure sum, audit progress, announce the end of a run. The application object
(`coordinator/app.py`) acts on them; nothing outside the engine reads its internals. How a run
looks at any moment is `RunEngine.progress()`, a `RunProgress` copy that changing cannot affect
the engine.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from federation.releases import Purpose
from secagg.config import Stage


class RunStatus(enum.StrEnum):
    """The operator-facing outcome of a run; one of the three terminal ones is final."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def terminal(self) -> bool:
        """Once terminal, a run only tells its sites it ended; nothing else changes it."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED)


class Phase(enum.StrEnum):
    """Where a run is: offer → stats → (train → evaluate)* → finishing → done.

    The values are the snapshot's spelling, so stored runs keep loading."""

    OFFER = "offer"
    STATS = "stats"
    TRAIN = "train"
    EVALUATE = "evaluate"
    FINISHING = "finishing"  # terminal status known; sites are being told
    DONE = "done"  # nothing left to send; the engine can be dropped

    @property
    def purpose(self) -> Purpose | None:
        """The release an aggregation phase collects; None for the phases that collect none."""
        return _PHASE_PURPOSE.get(self)


_PHASE_PURPOSE = {
    Phase.STATS: Purpose.STATS,
    Phase.TRAIN: Purpose.UPDATE,
    Phase.EVALUATE: Purpose.METRICS,
}


class StepPart(enum.StrEnum):
    """The two halves of every aggregation step: sites prepare their release locally, then one
    secure-aggregation session sums it. A restart mid-session retries the step (the session's
    secrets are never stored), a restart in the local half just carries on."""

    LOCAL = "local"
    SECAGG = "secagg"


@dataclass(frozen=True)
class RoundRecord:
    """One completed aggregation step, as the operator and the model card see it: who was asked,
    whose release is in the sum, and the consortium figures decoded from it."""

    purpose: Purpose
    round: int
    attempt: int
    participants: list[str]
    survivors: list[str]
    metrics: dict[str, float] = field(default_factory=dict)
    epsilon: dict[str, float] = field(default_factory=dict)
    """ε each site had reported spending in the run when the step was summed (its latest
    result's figure): the report's ε-over-rounds curve, without access to the audit log."""

    def to_json(self) -> dict[str, Any]:
        """The spelling in snapshots, audit entries and model cards (one for all three)."""
        return {
            "purpose": self.purpose.value,
            "round": self.round,
            "attempt": self.attempt,
            "participants": list(self.participants),
            "survivors": list(self.survivors),
            "metrics": dict(self.metrics),
            "epsilon": dict(self.epsilon),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Inverse of `to_json`, for snapshots written by any earlier coordinator."""
        return cls(
            purpose=Purpose(data["purpose"]),
            round=data["round"],
            attempt=data["attempt"],
            participants=list(data["participants"]),
            survivors=list(data["survivors"]),
            metrics=dict(data["metrics"]),
            epsilon=dict(data.get("epsilon", {})),  # absent before the field existed
        )


Decision = Literal["pending", "accepted", "refused"]


@dataclass(frozen=True)
class RunProgress:
    """A read-only copy of how a run stands, for status views, audit entries and fault points.

    It is a copy so that the servicers can hold it across an `await` while the engine moves on.
    """

    run_id: str
    status: RunStatus
    phase: Phase
    round: int
    attempt: int
    step: StepPart
    secagg_stage: Stage | None  # the open stage of the live session, if there is one
    message: str
    candidates: tuple[str, ...]
    accepted: tuple[str, ...]
    refusals: Mapping[str, str]
    awaiting: Mapping[str, str]  # candidates whose policy waits for a person's approval
    privacy: Mapping[str, Mapping[str, float]]
    sites_alive: tuple[str, ...]
    history: tuple[RoundRecord, ...]
    global_round: int

    @property
    def purpose(self) -> Purpose | None:
        """The kind of aggregation step under way (None while offering or finishing)."""
        return self.phase.purpose

    def decision(self, site: str) -> Decision:
        """A candidate's answer to the plan offer. Accepted wins over a later refusal: a site that
        refuses one task (say, its budget ran out) still accepted the plan."""
        if site in self.accepted:
            return "accepted"
        if site in self.refusals:
            return "refused"
        return "pending"

    def latest_metrics(self) -> RoundRecord | None:
        """The last evaluation with figures, the one an operator wants to see first."""
        for record in reversed(self.history):
            if record.purpose is Purpose.METRICS and record.metrics:
                return record
        return None

    def audit_detail(self) -> dict[str, Any]:
        """The `run_progress` audit entry: enough to replay a run's course from the log alone."""
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "phase": self.phase.value,
            "round": self.round,
            "attempt": self.attempt,
            "step": self.step.value,
            "message": self.message,
        }


@dataclass(frozen=True)
class TasksChanged:
    """These sites' outstanding task is new, replaced or withdrawn: wake their long-polls."""

    sites: tuple[str, ...]

    @classmethod
    def between(cls, before: Mapping[str, str], after: Mapping[str, str]) -> TasksChanged:
        """The sites whose task id differs between two {site: task id} maps."""
        sites = before.keys() | after.keys()
        return cls(tuple(sorted(s for s in sites if before.get(s) != after.get(s))))


@dataclass(frozen=True)
class StepAggregated:
    """A secure sum was decoded. `total` is the raw uint32 sum, exactly what the coordinator
    learned, kept in the store so an auditor can check it against what the sites released."""

    record: RoundRecord
    total: np.ndarray

    def row(self) -> tuple[str, int, int, list[str], np.ndarray]:
        """The store's `aggregates` row: purpose, round, attempt, survivors, the raw sum."""
        r = self.record
        return (r.purpose.value, r.round, r.attempt, r.survivors, self.total)

    def log_line(self, run_id: str) -> str:
        """What the coordinator logs for it: the step, its attempt, and who dropped out."""
        r = self.record
        dropped = sorted(set(r.participants) - set(r.survivors))
        return (
            f"run {run_id}: {r.purpose.value} round {r.round} aggregated (attempt {r.attempt + 1})"
            f" over {len(r.survivors)} of {len(r.participants)} sites"
            + (f"; dropped {', '.join(dropped)}" if dropped else "")
        )


@dataclass(frozen=True)
class ProgressChanged:
    """Status, phase, round, attempt or step moved; `progress` is the state after the input."""

    progress: RunProgress


@dataclass(frozen=True)
class RunFinished:
    """The run reached a terminal status (its sites are told next, by RUN_FINISHED tasks)."""

    status: RunStatus
    message: str


@dataclass(frozen=True)
class DuplicateResult:
    """A site re-sent the result it last had accepted (a retry after a lost answer). Nothing
    changed; the site is told so (`PushAck.duplicate`) instead of being refused."""

    site: str
    task_id: str


Effect = TasksChanged | StepAggregated | ProgressChanged | RunFinished | DuplicateResult
