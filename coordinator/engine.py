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

import numpy as np

from coordinator.aggregation import SecureSum
from coordinator.effects import (
    DuplicateResult,
    Effect,
    Phase,
    ProgressChanged,
    RoundRecord,
    RunProgress,
    RunStatus,
    StepPart,
    TasksChanged,
)
from coordinator.messages import PendingTask, ResultRejected, SiteResult, new_task_id
from coordinator.optimizers import ServerOptimizer, server_optimizer
from coordinator.transitions import RunTransitions
from federation.plan import RunPlan
from federation.releases import ConsortiumStats
from federation.site_metrics import REFUSED_KEY
from federation.tasks import LOCAL_TASK_KIND, TaskKind


class RunEngine(RunTransitions):
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
        self.restart_state_moved: bool | None = None
        """Whether the last `on_result` changed what a restart reads, where that is known
        without comparing snapshots (None: not known). True for a result taken outside a
        session: its task leaves the stored tasks. False for `answer_only`."""
        self.answer_only = False
        """Whether the last `on_result` only recorded a session answer: the site's task is done,
        no stage advanced, nothing else moved. Nothing a restart reads changed then (the
        session's answers die with the process), so the application need not look
        (`snapshot.restart_key`): at n sites a stage has n such results."""
        self.published: dict[str, dict[str, float]] = {}  # this step's site-published figures
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
        self.answer_only, self.restart_state_moved = False, None
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
        in_session = task.kind.is_secagg and result.error_code is None
        if in_session:
            if self._session is None:
                raise ResultRejected(f"site {site}: no secure-aggregation session for it", "stale")
            self._session.receive(site, result.payload, now)  # may raise: nothing changed yet
        privacy_before = self.privacy.get(site)
        tasks_stored = self.step is not StepPart.SECAGG or self.status.terminal

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

        effects = self._collect(take)
        self.answer_only = (
            in_session
            and self.step is StepPart.SECAGG
            and self.privacy.get(site) == privacy_before
            and effects == [TasksChanged((site,))]
            and site not in self.tasks
        )
        self.restart_state_moved = False if self.answer_only else (True if tasks_stored else None)
        return effects

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
                if result.published is not None:  # kept for the record, never in the sum
                    self.published[site] = result.published.figures()
                elif result.published_refused:
                    self.published[site] = {REFUSED_KEY: 1.0}
            elif result.error_code == "no_holdout":
                self.no_holdout.add(site)  # nothing to evaluate there: not a refusal
            else:
                self.refusals[site] = result.error_message or result.error_code
                if result.error_code == "budget_exhausted" and site in self.accepted:
                    self.accepted.remove(site)  # it can release nothing more in this run
        elif task.kind.is_secagg and result.error_code is not None:
            # a site that refuses a secagg step (e.g. it caught the coordinator cheating) drops
            self.refusals[site] = result.error_message or result.error_code
