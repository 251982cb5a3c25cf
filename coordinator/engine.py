"""The round engine: one run's state machine, sans-I/O.

Driven only by site results (`on_result`), the clock (`tick(now)`) and operator commands (`stop`);
it owns no sockets, threads or files, so every fault can be replayed in a unit test. Each input
returns a list of effects (`coordinator/effects.py`) for the application object to act on; what
a site should be doing now is `task_for(site)`, how the run stands is `progress()`. The
application persists the engine (`coordinator/snapshot.py`) after every change, so a coordinator
killed at any moment resumes from the store.

A run is a sequence of *aggregation steps*, all alike: the sites do local work and acknowledge it
(federated statistics, training, evaluation), then the acknowledging sites run one secure-
aggregation session over the vector they prepared, and the engine decodes the sum:

    offer → stats → [train_r → (evaluate_r)] for r = 1..R → finished

A *dry run* (`fedctl run --dry-run`) is the offer phase alone: its offers ask each site only to
check the plan (PlanOffer.dry_run), and when the phase closes the run finishes — COMPLETED if at
least the quorum would accept, FAILED otherwise, the same rule a real run's offer phase applies —
without a statistics step or a RunFinished task (the sites kept nothing of it to clean up).

A step whose session aborts (fewer than t survivors) or that is interrupted by a coordinator
restart is retried from its local part with attempt + 1 and fresh secagg keys; sites decide
themselves whether their cached release may be reused (never after they answered an Unmask).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from coordinator import aggregation
from coordinator.aggregation import Aborted, SecureSum, Summed
from coordinator.effects import (
    DuplicateResult,
    Effect,
    Phase,
    ProgressChanged,
    RoundRecord,
    RunFinished,
    RunProgress,
    RunStatus,
    StepAggregated,
    StepPart,
    TasksChanged,
)
from coordinator.messages import PendingTask, ResultRejected, SiteResult, new_task_id
from coordinator.optimizers import ServerOptimizer, server_optimizer
from federation.plan import RunPlan
from federation.releases import ConsortiumStats, Purpose
from federation.sessions import minimum_session_size
from federation.tasks import LOCAL_TASK_KIND, TaskKind

FINISH_TIMEOUT_S = 60.0


class RunEngine:
    """One run. Construct with `start`, or `coordinator.snapshot.restore` after a restart.

    The attributes are the run's state; `snapshot.py` persists them, everyone else reads
    `progress()` and `task_for()` and feeds inputs."""

    def __init__(
        self,
        run_id: str,
        plan: RunPlan,
        ids: Callable[[], str] = new_task_id,
        *,
        dry_run: bool = False,
    ) -> None:
        self.run_id = run_id
        self.plan = plan
        self.dry_run = dry_run
        self._ids = ids
        self.status = RunStatus.PENDING
        self.message = ""
        self.phase = Phase.OFFER
        self.round = 0
        self.attempt = 0
        self.step = StepPart.LOCAL
        self.step_deadline: float | None = None
        self.candidates: list[str] = []
        self.accepted: list[str] = []
        self.refusals: dict[str, str] = {}
        self.awaiting: dict[str, str] = {}  # site -> why its answer to the offer waits
        self.acked: list[str] = []
        self.no_holdout: set[str] = set()  # sites that hold nothing out (not persisted: they
        # say so again when a restarted coordinator retries the evaluation)
        self.session_sites: dict[int, str] = {}
        self.tasks: dict[str, PendingTask] = {}
        self.answered: dict[str, str] = {}  # site -> task id of its last accepted result
        self.history: list[RoundRecord] = []
        self.privacy: dict[str, dict[str, float]] = {}
        self.stats: ConsortiumStats | None = None
        self.global_vector: np.ndarray | None = None
        self.global_round = 0
        self.optimizer: ServerOptimizer = server_optimizer(plan.training)
        self._session: SecureSum | None = None
        self._effects: list[Effect] = []

    # ------------------------------------------------------------------ inputs
    @classmethod
    def start(
        cls,
        run_id: str,
        plan: RunPlan,
        candidates: list[str],
        now: float,
        ids: Callable[[], str] = new_task_id,
        *,
        dry_run: bool = False,
    ) -> tuple[RunEngine, list[Effect]]:
        """A new run: offer the plan to every candidate site the plan does not exclude (a dry
        run: ask them only whether they would accept it)."""
        engine = cls(run_id, plan, ids, dry_run=dry_run)
        wanted = set(plan.sites) if plan.sites is not None else None

        def offer() -> None:
            engine.candidates = sorted(s for s in candidates if wanted is None or s in wanted)
            engine.step_deadline = now + plan.secagg.offer_timeout_s
            for site in engine.candidates:
                engine._assign(site, TaskKind.PLAN_OFFER, engine.step_deadline)
            engine._advance(now)

        return engine, engine._collect(offer)

    def resume(self, now: float) -> list[Effect]:
        """Carry on after `snapshot.load`: the old process's secagg session died with it (its
        secrets were never stored), so a step caught in secure aggregation is retried."""

        def carry_on() -> None:
            if self.step is StepPart.SECAGG and not self.status.terminal:
                self.tasks.clear()  # those tasks belong to a session that no longer exists
            self._advance(now)

        return self._collect(carry_on)

    def stop(self, reason: str, now: float) -> list[Effect]:
        """An operator ends the run; the sites are told. Stopping an ended run changes nothing."""
        if self.status.terminal:
            return []
        return self._collect(lambda: self._finish(RunStatus.STOPPED, reason, now))

    def on_result(self, site: str, result: SiteResult, now: float) -> list[Effect]:
        """Take a site's result; an identical re-push of its last one gives `DuplicateResult`.

        Raises ResultRejected (state unchanged) for a result that answers no outstanding task
        (e.g. a replay from an earlier round), arrives after its deadline, or is malformed.
        """
        task = self.tasks.get(site)
        if task is None or task.task_id != result.task_id:
            if self.answered.get(site) == result.task_id:
                return [DuplicateResult(site, result.task_id)]
            raise ResultRejected(
                f"site {site}: result for task {result.task_id[:12]} is not outstanding", "stale"
            )
        task.check(site, result, now)
        if (
            task.kind is TaskKind.PLAN_OFFER
            and result.error_code == "approval_pending"
            and self.dry_run
        ):
            # A dry run waits for nobody: "needs a person's approval" is an accept with a note
            # (kept where a pending approval's reason is, so the operator reads it per site).
            result = dataclasses.replace(result, error_code=None)
            self.awaiting[site] = result.error_message or "needs manual approval at the site"
        if task.kind is TaskKind.PLAN_OFFER and result.error_code == "approval_pending":
            # The site's policy waits for a person's approval: the offer stays outstanding (the
            # site answers it again once decided) until the offer deadline closes the phase.
            def wait() -> None:
                self.awaiting[site] = result.error_message or "awaiting approval at the site"

            return self._collect(wait)
        if task.kind.is_secagg and result.error_code is None:
            if self._session is None:
                raise ResultRejected(f"site {site}: no secure-aggregation session for it", "stale")
            self._session.receive(site, result.payload, now)  # may raise: nothing changed yet

        def take() -> None:
            if result.epsilon_run is not None:
                self.privacy[site] = {
                    "epsilon_run": float(result.epsilon_run),
                    "epsilon_lifetime": float(result.epsilon_lifetime or 0.0),
                }
            del self.tasks[site]
            self.answered[site] = task.task_id
            self._record_local(site, task, result)
            self._advance(now)

        return self._collect(take)

    def tick(self, now: float) -> list[Effect]:
        """Close stages whose deadline passed. The clock is an input like any other, so every
        timeout can be replayed in a unit test with a fake `now`."""
        if self.status.terminal and not self.tasks:
            return []
        return self._collect(lambda: self._advance(now))

    # ------------------------------------------------------------------ queries
    def task_for(self, site: str) -> PendingTask | None:
        """What `site` should do now, or None: what PullTask hands out."""
        return self.tasks.get(site)

    def knows_task(self, site: str, task_id: str) -> bool:
        """Whether `task_id` is the site's outstanding task or its last answered one, so that a
        retried answer reaches the engine that can acknowledge it as a duplicate."""
        task = self.tasks.get(site)
        return (task is not None and task.task_id == task_id) or self.answered.get(site) == task_id

    def progress(self) -> RunProgress:
        """How the run stands now, as a copy (see RunProgress)."""
        session = self._session
        open_stage = None
        if self.step is StepPart.SECAGG and session is not None and not self.status.terminal:
            open_stage = session.stage
        return RunProgress(
            run_id=self.run_id,
            status=self.status,
            phase=self.phase,
            round=self.round,
            attempt=self.attempt,
            step=self.step,
            secagg_stage=open_stage,
            message=self.message,
            candidates=tuple(self.candidates),
            accepted=tuple(self.accepted),
            refusals=dict(self.refusals),
            awaiting=dict(self.awaiting),
            privacy={site: dict(p) for site, p in self.privacy.items()},
            sites_alive=tuple(self._sites_alive()),
            history=tuple(self.history),
            global_round=self.global_round,
        )

    def _sites_alive(self) -> list[str]:
        if self.phase is Phase.OFFER:
            return sorted(self.tasks)
        if self.step is StepPart.SECAGG:
            return sorted(self.session_sites.values())
        return sorted(set(self.acked) | set(self.tasks))

    # ------------------------------------------------------------------ effects
    def _collect(self, change: Callable[[], None]) -> list[Effect]:
        """Run one input and return its effects: those raised on the way (aggregates, the end
        of the run), then which sites' tasks changed and whether the progress moved."""
        before_tasks = {site: task.task_id for site, task in self.tasks.items()}
        before = self._progress_key()
        self._effects = []
        change()
        effects, self._effects = self._effects, []
        after_tasks = {site: task.task_id for site, task in self.tasks.items()}
        if before_tasks != after_tasks:
            effects.append(TasksChanged.between(before_tasks, after_tasks))
        if self._progress_key() != before:
            effects.append(ProgressChanged(self.progress()))
        return effects

    def _progress_key(self) -> tuple[object, ...]:
        return (self.status, self.phase, self.round, self.attempt, self.step)

    # ------------------------------------------------------------------ bookkeeping
    def _record_local(self, site: str, task: PendingTask, result: SiteResult) -> None:
        if task.kind is TaskKind.PLAN_OFFER:
            if result.error_code is None:
                self.accepted.append(site)
                self.accepted.sort()
            else:
                self.refusals[site] = result.error_message or result.error_code
        elif task.kind in LOCAL_TASK_KIND.values():
            if result.error_code is None:
                self.acked.append(site)
            elif result.error_code == "no_holdout":
                self.no_holdout.add(site)  # nothing to evaluate there: not a refusal
            else:
                self.refusals[site] = result.error_message or result.error_code
                if result.error_code == "budget_exhausted" and site in self.accepted:
                    self.accepted.remove(site)  # it can release nothing more in this run
        elif task.kind.is_secagg and result.error_code is not None:
            # a site that refuses a secagg step (e.g. it caught the coordinator cheating) drops
            self.refusals[site] = result.error_message or result.error_code

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
            metrics = aggregation.decode_metrics_sum(self.plan, total, n, len(summed.survivors))
        record = RoundRecord(
            purpose=purpose,
            round=self.round,
            attempt=self.attempt,
            participants=sorted(self.session_sites.values()),
            survivors=list(summed.survivors),
            metrics=metrics,
        )
        self.history.append(record)
        self._effects.append(StepAggregated(record, total))
        self._after_step(purpose, now)

    def _after_step(self, purpose: Purpose, now: float) -> None:
        """The step that follows a finished (or skipped) step of `purpose`."""
        if purpose is Purpose.STATS:
            self._begin_step(Phase.TRAIN, 1, now)
        elif purpose is Purpose.UPDATE and (
            self.round % self.plan.training.evaluate_every == 0
            or self.round == self.plan.training.rounds
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
