"""How the site answers each task: the plan offer, its three local releases, and the end of a run.

`TaskHandlers.handle` is the one entry point (the connection loop in `site_agent.agent` calls it
in a worker thread; the adversarial harness calls it directly). The rules it keeps:

- A run exists here only once its plan was accepted under the local policy; the plan is kept
  (hash-pinned) in `state_dir/plans`, and every later task of the run is checked against it
  (`site_agent.verify`), never against what the coordinator says.
- Every release (statistics, model update, metrics) is charged to the privacy ledger *before* it
  is computed for release; the ledger refuses anything over a cap, and nothing is cached to mask.
- A prepared release that was never masked is reused by a retried step at no new charge
  (`ReleaseCache.reusable`); a masked one never is (`site_agent.cache`).
- Every refusal is a task error with a reason and an audit entry; nothing leaves the site but
  through the secure-aggregation adapter (`site_agent.secagg_adapter`), except, where the site's
  own policy says so, its separately noised and charged final figures
  (`site_agent.published_metrics`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from federation import distributed
from federation.audit import AuditLog
from federation.distributed import is_distributed
from federation.evaluation_release import EvaluationRelease
from federation.faults import Faults
from federation.noise import stats_noise_multiplier
from federation.plan_evaluation import feature_columns
from federation.releases import (
    MAX_SITES,
    Purpose,
    StatsLayout,
    UpdateLayout,
    stats_vector,
)
from federation.tasks import PURPOSE_FROM_WIRE, TaskKind, task_kind_from_wire
from federation.vectors import Float32Array, vector_sha256
from federation.wire.v1 import federation_pb2
from secagg.quantize import quantize
from site_agent import verify
from site_agent.approvals import ApprovalStore
from site_agent.cache import ReleaseCache, SessionStore
from site_agent.charging import ReleaseCharging
from site_agent.cohort import holdout_rows, holds_out, training_rows
from site_agent.config import SiteConfig
from site_agent.distributed import DistributedTraining, noise_share
from site_agent.errors import TaskFailed
from site_agent.ledger import PrivacyLedger
from site_agent.model import predict
from site_agent.offer import PlanOffers, RunContext
from site_agent.published_metrics import OwnMetricsPublishing
from site_agent.records import ProcessingRecords
from site_agent.releases import consortium_censoring, evaluation_blocks, gaussian_noise
from site_agent.secagg_adapter import SecaggAdapter
from site_agent.site_baseline import SiteBaselines

log = logging.getLogger("concordia.site")
K = federation_pb2


def kind_label(value: int) -> str:
    """A task kind for logs and crash points (`train`, `secagg_unmask`, …; the number if this
    build does not know it), from `federation.tasks` rather than the wire enum's spelling."""
    kind = task_kind_from_wire(value)
    return kind.value if kind is not None else str(int(value))


def _audit_kind(value: int) -> str:
    """The wire enum name (`TASK_KIND_TRAIN`): the spelling `task_refused` entries have always
    used, kept so that audit logs read the same across versions."""
    try:
        return str(K.TaskKind.Name(value))
    except ValueError:
        return str(int(value))


class TaskHandlers(PlanOffers, ReleaseCharging, OwnMetricsPublishing):
    """Answers every task kind for one site, over the site's ledger, release cache and audit log."""

    def __init__(
        self,
        config: SiteConfig,
        *,
        ledger: PrivacyLedger,
        cache: ReleaseCache,
        sessions: SessionStore,
        audit: AuditLog,
        secagg: SecaggAdapter,
        plans_dir: Path,
        faults: Faults,
        records: ProcessingRecords,
        pseudonym_key: bytes | None,
        clock: Callable[[], float] = time.time,
        approvals: ApprovalStore | None = None,
    ) -> None:
        self.config = config
        self.approvals = (
            approvals
            if approvals is not None
            else ApprovalStore(Path(config.state_dir) / "site.sqlite")
        )
        self.site_id = config.site_id
        self.records = records
        self.pseudonym_key = pseudonym_key
        self.clock = clock
        self.coordinator_id: str | None = None
        """The coordinator's id from its last Hello (SiteAgent sets it): the records of
        processing name it as where the run's results went."""
        self.ledger = ledger
        self.cache = cache
        self.sessions = sessions
        self.audit = audit
        self.secagg = secagg
        self.plans_dir = plans_dir
        self.faults = faults
        self.runs: dict[str, RunContext] = {}
        self.baselines = SiteBaselines(plans_dir)

    # ------------------------------------------------------------------ dispatch
    def handle(self, task: federation_pb2.Task) -> federation_pb2.TaskResult:
        """Answer one task; never raises (one bad task must not stop the agent). A refusal is a
        TaskResult error with a reason, audited; the result carries the run's ε so far."""
        kind = task_kind_from_wire(task.kind)
        self._crash_if_asked(task, kind)
        result = federation_pb2.TaskResult(task_id=task.task_id, kind=task.kind)
        dry_run = kind is TaskKind.PLAN_OFFER and task.plan_offer.dry_run
        try:
            result.payload = self._dispatch(task, kind)
            self._attach_published(task, kind, result)  # only under policy.publish_own_metrics
        except TaskFailed as exc:
            result.error.code = exc.code  # type: ignore[assignment]
            result.error.message = exc.message
            if not exc.audited:
                detail: dict[str, object] = {"run_id": task.run_id, "kind": _audit_kind(task.kind)}
                if dry_run:
                    detail["dry_run"] = True  # a check only: no run of this plan was refused
                detail["reason"] = exc.message
                self.audit.append(self.site_id, "task_refused", detail)
        except Exception as exc:  # never let one bad task kill the agent
            # The detail (it may hold a local path or a value) stays in the site log.
            log.exception("task %s failed", _audit_kind(task.kind))
            result.error.code = K.TASK_ERROR_INTERNAL
            result.error.message = f"internal error ({type(exc).__name__}); see the site log"
        run = self.runs.get(task.run_id)
        if dry_run:
            self.dry_run_estimate(task, result)  # accepted or refused: no run here to report
        elif run is not None:
            delta = run.plan.privacy.delta
            result.privacy.epsilon_spent_run = self.ledger.epsilon_run(task.run_id, delta)
            result.privacy.epsilon_spent_lifetime = self.ledger.epsilon_lifetime(delta)
            result.privacy.delta = delta
        return result

    def _crash_if_asked(self, task: federation_pb2.Task, kind: TaskKind | None) -> None:
        """The end-to-end tests' crash points (kind value, secagg purpose value or None, round);
        the default `Faults()` never matches."""
        if kind is None:
            return
        purpose = PURPOSE_FROM_WIRE.get(task.secagg.purpose) if task.HasField("secagg") else None
        self.faults.crash_if_asked(kind.value, purpose.value if purpose else None, task.round)

    def _dispatch(self, task: federation_pb2.Task, kind: TaskKind | None) -> bytes:
        """The payload of the answer (empty for the local steps, whose output stays cached)."""
        if kind is TaskKind.PLAN_OFFER:
            self._plan_offer(task)
            return b""
        if kind is TaskKind.RUN_FINISHED:
            self._run_finished(task)
            return b""
        run = self._run(task.run_id)
        if kind is TaskKind.FEDERATED_STATS:
            self._federated_stats(task, run)
        elif kind is TaskKind.TRAIN:
            self._train(task, run)
        elif kind is TaskKind.EVALUATE:
            self._evaluate(task, run)
        elif task.HasField("secagg"):
            return self.secagg.handle(task, run.plan)
        else:
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, f"unknown task kind {task.kind}")
        return b""

    # ------------------------------------------------------------------ the three releases
    def _federated_stats(self, task: federation_pb2.Task, run: RunContext) -> None:
        """Counts, bounded moments and interval counts of the training rows, noised (Gaussian,
        or a Skellam share in distributed mode) and charged before noising; cached to be masked
        by the statistics session."""
        verify.check_stats_spec(task.federated_stats.spec_json, run.plan)
        if self.cache.reusable(task.run_id, Purpose.STATS.value, task.round):
            return
        plan = run.plan
        rows = training_rows(plan, run.data)
        events, at_risk = plan.time_grid.interval_counts(rows.time, rows.event)
        layout = StatsLayout.for_schema(plan.feature_schema, plan.time_grid.n_intervals)
        sigma = stats_noise_multiplier(plan)
        values = stats_vector(rows.raw, events, at_risk, plan.feature_schema)
        if is_distributed(plan):
            encoding = distributed.encoding(plan, Purpose.STATS)
            share = noise_share(plan, self.config.policy, sigma, encoding)
            self._charge(task, run, Purpose.STATS, rows.partition, sigma, 1.0, 1, share)
            self._cache(task, Purpose.STATS, self._integers(values, encoding, share))
            return
        self._charge(task, run, Purpose.STATS, rows.partition, sigma, 1.0, 1)
        values = values + gaussian_noise(values.size, sigma * layout.sensitivity)
        self._cache(task, Purpose.STATS, quantize(values, layout.quantization(MAX_SITES)))

    def _train(self, task: federation_pb2.Task, run: RunContext) -> None:
        """One round of DP-SGD from the verified global vector, charged before its first step:
        local mode, the site's own DP-SGD and its (weighted) update; distributed mode, one
        Poisson batch's clipped gradient sum with a noise share. Cached for the round's session."""
        vector = self._global_vector(task, task.train.global_vector, run)
        verify.check_standardisation(task.train.standardisation, run.plan)
        if self.cache.reusable(task.run_id, Purpose.UPDATE.value, task.round):
            return
        means = list(task.train.standardisation.mean)
        scales = list(task.train.standardisation.scale)
        training = self._training(task.run_id, run)
        vector = self._with_site_baseline(task, run, vector)
        if isinstance(training, DistributedTraining):
            released = training.release(
                vector,
                means,
                scales,
                charge=lambda share, q, n: self._charge(
                    task,
                    run,
                    Purpose.UPDATE,
                    training.partition,
                    share.noise_multiplier,
                    q,
                    n,
                    share,
                ),
            )
            self._cache(task, Purpose.UPDATE, released)
            return
        delta = training.train_round(
            vector,
            means,
            scales,
            charge=lambda s, q, n: self._charge(
                task, run, Purpose.UPDATE, training.partition, s, q, n
            ),
        )
        delta = self._keep_site_baseline(task, run, vector, delta)  # per-site: stays here
        s = run.plan.secagg
        weighted = run.plan.training.aggregation == "weighted"
        layout = UpdateLayout(delta.size, s.clip_norm, s.coord_bound, s.scale_bits, weighted)
        release = delta
        if weighted:
            release = layout.weighted_release(delta, self._cohort_weight(task, run))
        quantised = quantize(release, layout.quantization(MAX_SITES))
        self._cache(task, Purpose.UPDATE, quantised)
        self.faults.record(f"{self.site_id}-{task.run_id}-r{task.round}", quantised)

    def _evaluate(self, task: federation_pb2.Task, run: RunContext) -> None:
        """Windowed concordance and Brier sufficient statistics of the global model on the
        held-out rows, weighted, noised and charged to the held-out partition."""
        body = task.evaluate
        plan = run.plan
        if not holds_out(plan, run.data):  # nothing to evaluate on, nothing computed
            raise TaskFailed(
                K.TASK_ERROR_NO_HOLDOUT,
                f"this site holds nothing out: fewer than training.holdout_min_site_rows"
                f" = {plan.training.holdout_min_site_rows} rows",
            )
        vector = self._global_vector(task, body.global_vector, run)
        verify.check_standardisation(body.standardisation, run.plan)
        verify.check_interval_counts(body.events, body.at_risk, run.plan)
        if self.cache.reusable(task.run_id, Purpose.METRICS.value, task.round):
            return
        rows = holdout_rows(run.data)
        if rows.size < 2:
            raise TaskFailed(K.TASK_ERROR_DATA, "the held-out split has fewer than 2 patients")
        vector = self._with_site_baseline(task, run, vector)
        means, scales = list(body.standardisation.mean), list(body.standardisation.scale)
        release = EvaluationRelease.for_round(plan, task.round)
        censoring = consortium_censoring(
            plan.time_grid, np.asarray(body.events), np.asarray(body.at_risk)
        )
        blocks = evaluation_blocks(
            rows.raw,
            rows.time,
            rows.event,
            lambda raw: predict(plan, vector, raw, means, scales),
            plan.time_grid,
            censoring,
            release,
            feature_columns(plan.feature_schema),
            tie_key=f"{self.site_id}|{task.run_id}".encode(),
        )
        sigma = plan.privacy.metrics_noise_multiplier
        if is_distributed(plan):
            encoding = distributed.encoding(plan, Purpose.METRICS, task.round)
            share = noise_share(plan, self.config.policy, sigma, encoding)
            self._charge(task, run, Purpose.METRICS, "holdout", sigma, 1.0, 1, share)
            released = self._integers(release.encode(blocks), encoding, share)
            self._cache(task, Purpose.METRICS, released)
            self._publish_own(task, run, release, blocks)  # a separate, site-local Gaussian
            return
        # Gaussian, noise multiplier σ on the release's whole sensitivity Δ (blocks included):
        # the ledger entry is the mechanism run (federation/evaluation_release.py)
        self._charge(task, run, Purpose.METRICS, "holdout", sigma, 1.0, 1)
        values = release.encode(blocks)
        values = values + gaussian_noise(values.size, sigma * release.sensitivity)
        self._cache(task, Purpose.METRICS, quantize(values, release.quantization(MAX_SITES)))
        self._keep_own_metrics(task, run, release, values)
        self._publish_own(task, run, release, blocks)  # policy.publish_own_metrics, final only

    # ------------------------------------------------------------------ helpers
    def _global_vector(
        self, task: federation_pb2.Task, message: federation_pb2.GlobalVector, run: RunContext
    ) -> Float32Array:
        """The verified global vector; its hash is logged so the site can say which model it
        trained or evaluated."""
        vector = verify.global_vector(message, run.plan)
        log.info(
            "%s %s round %d: global vector sha256 %s (%d values) accepted",
            task.run_id,
            kind_label(task.kind),
            task.round,
            vector_sha256(vector),
            vector.size,
        )
        return vector

    def _cache(self, task: federation_pb2.Task, purpose: Purpose, quantised: np.ndarray) -> None:
        """Keep the charged, quantised release for the step's secure-aggregation session."""
        self.cache.put(task.run_id, purpose.value, task.round, quantised, {"attempt": task.attempt})
