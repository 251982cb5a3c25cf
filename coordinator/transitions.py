"""How a run moves from step to step: the transitions of `RunEngine` (coordinator/engine.py).

A run is a sequence of aggregation steps, all alike (the engine's docstring): a step begins with
every accepted site's local task, opens one secure-aggregation session over the sites that
acknowledged, relays its stages, and ends with the decoded sum, an abort (retried with attempt + 1
and fresh keys, up to `secagg.max_attempts`) or the deadline. This mixin holds those rules; the
engine holds the inputs (results, the clock, stop) and the state they act on, declared below so
that both halves are type-checked against one another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from coordinator import aggregation
from coordinator.aggregation import Aborted, SecureSum, Summed
from coordinator.effects import (
    Effect,
    Phase,
    RoundRecord,
    RunFinished,
    RunStatus,
    StepAggregated,
    StepPart,
)
from coordinator.messages import PendingTask
from coordinator.optimizers import ServerOptimizer
from federation.plan import RunPlan
from federation.releases import ConsortiumStats, Purpose
from federation.sessions import minimum_session_size
from federation.site_metrics import record_metrics
from federation.tasks import LOCAL_TASK_KIND, TaskKind

FINISH_TIMEOUT_S = 60.0


class RunTransitions:
    """The step rules of one run (see the module docstring); mixed into `RunEngine`."""

    run_id: str
    plan: RunPlan
    dry_run: bool
    _ids: Callable[[], str]
    status: RunStatus
    message: str
    phase: Phase
    round: int
    attempt: int
    step: StepPart
    step_deadline: float | None
    candidates: list[str]
    accepted: list[str]
    refusals: dict[str, str]
    acked: list[str]
    no_holdout: set[str]
    session_sites: dict[int, str]
    tasks: dict[str, PendingTask]
    history: list[RoundRecord]
    published: dict[str, dict[str, float]]
    privacy: dict[str, dict[str, float]]
    stats: ConsortiumStats | None
    global_vector: np.ndarray | None
    global_round: int
    optimizer: ServerOptimizer
    _session: SecureSum | None
    _effects: list[Effect]

    def _assign(self, site: str, kind: TaskKind, deadline: float | None, **fields: Any) -> None:
        """Give `site` a fresh task (`fields`: PendingTask's purpose and secagg payloads)."""
        self.tasks[site] = PendingTask(
            self._ids(), site, kind, self.round, self.attempt, deadline, **fields
        )

    # ------------------------------------------------------------------ transitions
    def _advance(self, now: float) -> None:
        for _ in range(100):  # each pass makes progress or returns; bounded for safety
            if not self._advance_once(now):
                return

    def _advance_once(self, now: float) -> bool:
        if self.status.terminal:
            if self.phase is Phase.FINISHING and (
                not self.tasks or (self.step_deadline is not None and now > self.step_deadline)
            ):
                self.tasks.clear()
                self.phase = Phase.DONE
            return False
        deadline_passed = self.step_deadline is not None and now > self.step_deadline
        if self.phase is Phase.OFFER:
            if self.tasks and not deadline_passed:
                return False
            self.tasks.clear()
            if self.dry_run:
                self._finish_dry_run(now)
                return True
            if len(self.accepted) < self.plan.quorum:
                refused = "; ".join(f"{s}: {r}" for s, r in sorted(self.refusals.items()))
                self._finish(
                    RunStatus.FAILED,
                    f"only {len(self.accepted)} of the {self.plan.quorum} sites needed accepted"
                    + (f" ({refused})" if refused else ""),
                    now,
                )
                return True
            self.status = RunStatus.RUNNING
            self._begin_step(Phase.STATS, 0, now)
            return True
        if self.step is StepPart.LOCAL:
            if self.tasks and not deadline_passed:
                return False
            self.tasks.clear()
            return self._start_session(now)
        return self._advance_session(now)

    def _purpose(self) -> Purpose:
        purpose = self.phase.purpose
        assert purpose is not None, f"no aggregation step in phase {self.phase}"
        return purpose

    def _begin_step(self, phase: Phase, round_: int, now: float, attempt: int = 0) -> None:
        self.phase, self.round, self.attempt = phase, round_, attempt
        self.step = StepPart.LOCAL
        self.acked = []
        self.published = {}
        self.session_sites = {}
        self._session = None
        self.step_deadline = now + self.plan.secagg.train_timeout_s
        purpose = self._purpose()
        for site in self.accepted:
            self._assign(site, LOCAL_TASK_KIND[purpose], self.step_deadline, purpose=purpose)

    def _retry_step(self, reason: str, now: float) -> bool:
        if self.attempt + 1 >= self.plan.secagg.max_attempts:
            self._finish(
                RunStatus.FAILED,
                f"{self.phase} round {self.round} failed {self.attempt + 1} times: {reason}",
                now,
            )
            return True
        self.message = f"retrying {self.phase} round {self.round}: {reason}"
        self._begin_step(self.phase, self.round, now, self.attempt + 1)
        return True

    def _start_session(self, now: float) -> bool:
        sites = sorted(set(self.acked))
        minimum = minimum_session_size(self.plan)
        purpose = self._purpose()
        if len(sites) < minimum:
            if purpose is Purpose.METRICS and len(self.accepted) - len(self.no_holdout) < minimum:
                # Too few sites hold anything out (training.holdout_min_site_rows): a retry
                # cannot change that, and a run is not a failure for lack of a metric.
                self.message = (
                    f"round {self.round} not evaluated: {len(sites)} sites hold data out,"
                    f" {minimum} needed"
                )
                self._after_step(purpose, now)
                return True
            return self._retry_step(f"{len(sites)} sites ready, {minimum} needed", now)
        self.session_sites = {index + 1: site for index, site in enumerate(sites)}
        self._session = SecureSum(
            self.plan, self.run_id, purpose, self.round, self.attempt, self.session_sites, now
        )
        self.step = StepPart.SECAGG
        self.step_deadline = None
        config = self._session.config.to_bytes()
        roster = tuple(self.session_sites.items())
        deadline = now + self.plan.secagg.stage_timeout_s
        for site in self.session_sites.values():
            self._assign(
                site,
                TaskKind.ADVERTISE_KEYS,
                deadline,
                purpose=purpose,
                session_config=config,
                participants=roster,
            )
        return True

    def _advance_session(self, now: float) -> bool:
        session = self._session
        if session is None:  # restored mid-session: the session died with the old process
            return self._retry_step("coordinator restarted during secure aggregation", now)
        outcome = session.advance(now)
        if outcome is None:
            return False
        self.tasks.clear()  # a stage ended: whoever gets no new task has dropped out
        if isinstance(outcome, Aborted):
            return self._retry_step(outcome.reason, now)
        if isinstance(outcome, Summed):
            self._complete_step(outcome, now)
            return True
        deadline = now + self.plan.secagg.stage_timeout_s
        for site, kind, message in outcome.messages:
            self._assign(site, kind, deadline, purpose=self._purpose(), secagg_message=message)
        return True

    def _complete_step(self, summed: Summed, now: float) -> None:
        purpose = self._purpose()
        n, total = len(self.session_sites), summed.total
        metrics: dict[str, float] = {}
        if purpose is Purpose.STATS:
            self.stats = aggregation.decode_stats_sum(self.plan, total, n)
            self.global_vector = aggregation.initial_model(self.plan, self.stats)
            self.global_round = 0
            metrics = {"patients": round(self.stats.count, 1)}
        elif purpose is Purpose.UPDATE:
            assert self.global_vector is not None
            assert self.stats is not None
            delta = aggregation.mean_update(
                self.plan, total, n, len(summed.survivors), self.stats.count
            )
            self.global_vector = self.optimizer.step(self.global_vector, delta)
            self.global_round = self.round
        else:
            metrics = aggregation.evaluation_metrics(self.plan, summed, n, self.round)
            # what sites published themselves, beside the sum (federation/site_metrics.py)
            metrics.update(record_metrics(self.published))
        record = RoundRecord(
            purpose=purpose,
            round=self.round,
            attempt=self.attempt,
            participants=sorted(self.session_sites.values()),
            survivors=list(summed.survivors),
            metrics=metrics,
            epsilon={s: p["epsilon_run"] for s, p in self.privacy.items() if "epsilon_run" in p},
        )
        self.history.append(record)
        self._effects.append(StepAggregated(record, total))
        self._after_step(purpose, now)

    def _after_step(self, purpose: Purpose, now: float) -> None:
        """The step that follows a finished (or skipped) step of `purpose`.

        The final model is always evaluated; earlier rounds only when the plan asks for it
        (`training.evaluate_every` = k ≥ 1: every k-th round; 0, the default: none), because
        each evaluation is one more metrics release (`federation/metrics_noise.py`)."""
        every = self.plan.training.evaluate_every
        if purpose is Purpose.STATS:
            self._begin_step(Phase.TRAIN, 1, now)
        elif purpose is Purpose.UPDATE and (
            (every > 0 and self.round % every == 0) or self.round == self.plan.training.rounds
        ):
            self._begin_step(Phase.EVALUATE, self.round, now)
        elif self.round >= self.plan.training.rounds:
            self._finish(RunStatus.COMPLETED, "completed", now)
        else:
            self._begin_step(Phase.TRAIN, self.round + 1, now)

    def _finish_dry_run(self, now: float) -> None:
        """The end of a dry run's offer phase: its answer is how many would accept."""
        would, of = len(self.accepted), len(self.candidates)
        status = RunStatus.COMPLETED if would >= self.plan.quorum else RunStatus.FAILED
        silent = sorted(set(self.candidates) - set(self.accepted) - set(self.refusals))
        message = f"dry run: {would} of {of} sites would accept (quorum {self.plan.quorum})"
        if self.refusals:
            message += "; refused: " + ", ".join(sorted(self.refusals))
        if silent:
            message += "; no answer: " + ", ".join(silent)
        self._finish(status, message, now)

    def _finish(self, status: RunStatus, message: str, now: float) -> None:
        self.status = status
        self.message = message
        self._session = None
        self.tasks.clear()
        self.phase = Phase.FINISHING
        self.step_deadline = now + FINISH_TIMEOUT_S
        # A dry run's sites saved no plan and hold nothing of it: no RunFinished to send.
        for site in [] if self.dry_run else self.accepted or self.candidates:
            self._assign(site, TaskKind.RUN_FINISHED, self.step_deadline)
        self._effects.append(RunFinished(status, message))
