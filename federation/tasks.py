"""The names both sides give to tasks and sessions, and their one explicit map to the wire.

- `TaskKind`: what a site is asked to do (one value per wire `TaskKind`, no string building).
- `Purpose` (federation/releases.py): which of the three aggregation steps a release belongs to —
  statistics, model update, metrics. The engine's phases, the ledger's purpose column and the wire's
  `SecaggPurpose` all use it.
- `SessionKey`: one secure-aggregation session of one run — (run id, purpose, round, attempt) —
  with one text form, `run/purpose/round/attempt`, used in the wire's `session_id`, the site's
  state and both audit logs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from federation.releases import Purpose
from federation.wire.v1 import federation_pb2 as pb


class TaskKind(enum.StrEnum):
    """A task a site is asked to do; `.value` is the spelling in logs, JSON and crash points."""

    PLAN_OFFER = "plan_offer"
    FEDERATED_STATS = "federated_stats"
    TRAIN = "train"
    EVALUATE = "evaluate"
    ADVERTISE_KEYS = "secagg_advertise_keys"
    SHARE_KEYS = "secagg_share_keys"
    MASKED_INPUT = "secagg_masked_input"
    CONSISTENCY_CHECK = "secagg_consistency_check"
    UNMASK = "secagg_unmask"
    RUN_FINISHED = "run_finished"

    @property
    def is_secagg(self) -> bool:
        """Whether this task is a secure-aggregation stage (handled by the secagg adapter and
        the server session rather than by a local step)."""
        return self in SECAGG_TASK_KINDS


SECAGG_TASK_KINDS = frozenset(
    {
        TaskKind.ADVERTISE_KEYS,
        TaskKind.SHARE_KEYS,
        TaskKind.MASKED_INPUT,
        TaskKind.CONSISTENCY_CHECK,
        TaskKind.UNMASK,
    }
)

TASK_KIND_TO_WIRE: dict[TaskKind, int] = {
    TaskKind.PLAN_OFFER: pb.TASK_KIND_PLAN_OFFER,
    TaskKind.FEDERATED_STATS: pb.TASK_KIND_FEDERATED_STATS,
    TaskKind.TRAIN: pb.TASK_KIND_TRAIN,
    TaskKind.EVALUATE: pb.TASK_KIND_EVALUATE,
    TaskKind.ADVERTISE_KEYS: pb.TASK_KIND_SECAGG_ADVERTISE_KEYS,
    TaskKind.SHARE_KEYS: pb.TASK_KIND_SECAGG_SHARE_KEYS,
    TaskKind.MASKED_INPUT: pb.TASK_KIND_SECAGG_MASKED_INPUT,
    TaskKind.CONSISTENCY_CHECK: pb.TASK_KIND_SECAGG_CONSISTENCY_CHECK,
    TaskKind.UNMASK: pb.TASK_KIND_SECAGG_UNMASK,
    TaskKind.RUN_FINISHED: pb.TASK_KIND_RUN_FINISHED,
}
TASK_KIND_FROM_WIRE: dict[int, TaskKind] = {v: k for k, v in TASK_KIND_TO_WIRE.items()}

PURPOSE_TO_WIRE: dict[Purpose, int] = {
    Purpose.STATS: pb.SECAGG_PURPOSE_FEDERATED_STATS,
    Purpose.UPDATE: pb.SECAGG_PURPOSE_MODEL_UPDATE,
    Purpose.METRICS: pb.SECAGG_PURPOSE_METRICS,
}
PURPOSE_FROM_WIRE: dict[int, Purpose] = {v: k for k, v in PURPOSE_TO_WIRE.items()}

LOCAL_TASK_KIND: dict[Purpose, TaskKind] = {
    Purpose.STATS: TaskKind.FEDERATED_STATS,
    Purpose.UPDATE: TaskKind.TRAIN,
    Purpose.METRICS: TaskKind.EVALUATE,
}
"""The local step that prepares each purpose's release."""


def task_kind_from_wire(value: int) -> TaskKind | None:
    """The TaskKind of a wire value; None for IDLE, UNSPECIFIED or a value this build lacks."""
    return TASK_KIND_FROM_WIRE.get(int(value))


class SessionKeyError(ValueError):
    """A session key text that does not parse."""


@dataclass(frozen=True)
class SessionKey:
    """One secure-aggregation session: a step of a run, in one attempt."""

    run_id: str
    purpose: Purpose
    round: int
    attempt: int

    @property
    def text(self) -> str:
        """The one spelling: `run/purpose/round/attempt`."""
        return f"{self.run_id}/{self.purpose.value}/{self.round}/{self.attempt}"

    def __str__(self) -> str:
        return self.text

    @classmethod
    def parse(cls, text: str) -> SessionKey:
        """The key of a `run/purpose/round/attempt` text (a run id may itself contain "/");
        SessionKeyError if it is not one, so a stored or relayed id is never half-read."""
        parts = text.split("/")
        if len(parts) < 4:
            raise SessionKeyError(f"{text!r} is not run/purpose/round/attempt")
        run_id = "/".join(parts[:-3])
        purpose, round_, attempt = parts[-3:]
        try:
            return cls(run_id, Purpose(purpose), int(round_), int(attempt))
        except ValueError:
            raise SessionKeyError(f"{text!r} is not run/purpose/round/attempt") from None
