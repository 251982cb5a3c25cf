"""What passes between the engine and the application about one site and one task.

The engine hands out `PendingTask`s (one per site at most: what it should do now) and takes
`SiteResult`s (a site's answer, already tied to the peer certificate). A result it will not take
is refused with `ResultRejected`, which leaves the engine unchanged. `coordinator/convert.py`
turns these into protobuf and back; `coordinator/snapshot.py` stores pending tasks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from federation.releases import Purpose
from federation.site_metrics import PublishedFigures
from federation.tasks import TaskKind


class ResultRejected(Exception):
    """A site result the engine will not take; the engine is unchanged and the caller audits
    `reason`. `code` picks the gRPC answer: "stale" (a replay, or no such task), "late" (after
    its deadline), "invalid" (malformed)."""

    def __init__(self, reason: str, code: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True)
class PendingTask:
    """The one thing a site should do now. It carries only what the engine decides; the vectors
    a Train or Evaluate task ships are the engine's current ones, added by the wire conversion."""

    task_id: str
    site: str
    kind: TaskKind
    round: int
    attempt: int
    deadline: float | None
    purpose: Purpose | None = None
    secagg_message: bytes = b""
    session_config: bytes = b""  # only on ADVERTISE_KEYS, with `participants`
    participants: tuple[tuple[int, str], ...] = ()

    def check(self, site: str, result: SiteResult, now: float) -> None:
        """Raise ResultRejected unless `result` (for this task's id) is of this task's kind and
        in time: a late answer belongs to a stage that may already have gone on without it."""
        if result.kind != self.kind:
            raise ResultRejected(
                f"site {site}: result kind {result.kind.value} answers a {self.kind.value} task",
                "invalid",
            )
        if self.deadline is not None and now > self.deadline:
            raise ResultRejected(
                f"site {site}: result for {self.kind.value} after deadline", "late"
            )


@dataclass(frozen=True)
class SiteResult:
    """A site's answer to its outstanding task, already tied to the peer certificate's site, so
    the engine never trusts a site name from the message."""

    task_id: str
    kind: TaskKind
    payload: bytes = b""
    error_code: str | None = None  # e.g. "policy_refused", "budget_exhausted"
    error_message: str = ""
    epsilon_run: float | None = None
    epsilon_lifetime: float | None = None
    published: PublishedFigures | None = None  # an evaluation's site-published figures, checked
    published_refused: bool = False  # it sent some that failed the check (audited, not taken)


def new_task_id() -> str:
    """Unguessable task ids: a result is accepted only for the id its task carried."""
    return secrets.token_hex(16)
