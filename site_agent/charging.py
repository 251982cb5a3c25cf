"""Charging a release to the ledger, and the run state a release is computed from.

Split from `site_agent.handlers` (whose `TaskHandlers` inherits it): these are the steps every
release shares before anything is computed for it — the run's training (σ calibrated once), the
prior that calibration leaves room for, the weighted-FedAvg weight, a distributed release's
range check, and the ledger charge with its audit entry. A charge always comes first: the
ledger refuses anything over a cap, and then nothing is made.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from federation.audit import AuditLog
from federation.distributed import is_distributed
from federation.evaluation_release import EvaluationRelease
from federation.integer_release import IntegerEncoding
from federation.noise import stats_noise_multiplier
from federation.releases import MAX_SITES, Purpose, StatsLayout, decode_stats
from federation.subgroup_metrics import release_metrics
from federation.wire.v1 import federation_pb2
from secagg.quantize import dequantize_sum
from site_agent.accounting import Entry
from site_agent.cache import ReleaseCache
from site_agent.cohort import Partition
from site_agent.config import SiteConfig
from site_agent.distributed import DistributedTraining, NoiseShare, noisy_integers
from site_agent.errors import TaskFailed
from site_agent.ledger import BudgetExceeded, PrivacyLedger
from site_agent.offer import RunContext
from site_agent.records import ProcessingRecords
from site_agent.site_baseline import SiteBaselines
from site_agent.train import RunTraining, TrainingError
from survival.spec import baseline_logits, shared_offset

K = federation_pb2


class ReleaseCharging:
    """The charging half of `TaskHandlers` (which sets these attributes)."""

    config: SiteConfig
    site_id: str
    ledger: PrivacyLedger
    cache: ReleaseCache
    audit: AuditLog
    records: ProcessingRecords
    clock: Callable[[], float]
    baselines: SiteBaselines

    def _check_not_erased(self, task: federation_pb2.Task, run: RunContext) -> None:
        """Refuse a release for a run whose data holds an erased patient (`PlanOffers`)."""
        raise NotImplementedError

    def _training(self, run_id: str, run: RunContext) -> RunTraining | DistributedTraining:
        """The run's training, built (σ calibrated) once; rebuilt only if the statistics prior
        σ was calibrated against has changed, which keeps σ what a fresh calibration gives."""
        prior = tuple(self._stats_entries(run_id))
        if run.training is None or run.training.prior != prior:
            if is_distributed(run.plan):
                run.training = DistributedTraining(run.plan, run.data, self.config.policy, prior)
            else:
                run.training = RunTraining(run.plan, run.data, prior)
        return run.training

    def _stats_entries(self, run_id: str) -> list[Entry]:
        """The run's statistics releases on the training rows (under the site's assumption): the
        fixed prior that σ is calibrated against (earlier training rounds are part of the plan σ
        covers, not prior)."""
        return [
            Entry(
                r["noise_multiplier"],
                r["sample_rate"],
                r["steps"],
                mechanism=r.get("mechanism") or "gaussian",
                l2_sensitivity=r.get("l2_sensitivity"),
                l1_sensitivity=r.get("l1_sensitivity"),
            )
            for r in self.ledger.releases(run_id, purpose=Purpose.STATS.value)
            if r["partition"] in ("train", "both")
        ]

    def _cohort_weight(self, task: federation_pb2.Task, run: RunContext) -> float:
        """This site's weighted-FedAvg weight: its own DP-noised cohort size, as released in
        the run's statistics (post-processing of a charged release, no new cost), over the
        consortium's noised size the task carries (which only rescales a clipped update; the
        weight goes into the sum too, and the coordinator divides by the summed weights)."""
        consortium = float(task.train.consortium_count)
        if not (math.isfinite(consortium) and consortium >= 1.0):
            raise TaskFailed(
                K.TASK_ERROR_INVALID_TASK,
                "weighted aggregation needs the consortium's cohort size in the train task"
                " (train.consortium_count); a coordinator older than this site sends none",
            )
        cached = self.cache.get(task.run_id, Purpose.STATS.value, 0)
        if cached is None or cached.vector is None:
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, "no statistics release of this run here")
        layout = StatsLayout.for_schema(run.plan.feature_schema, run.plan.time_grid.n_intervals)
        own = float(dequantize_sum(cached.vector, layout.quantization(MAX_SITES))[0])
        return min(max(own, 1.0) / consortium, 1.0)

    def _integers(self, values: np.ndarray, encoding: IntegerEncoding, share: NoiseShare) -> Any:
        """A distributed-mode release, refused (nothing cached) if it leaves the sum's range."""
        try:
            return noisy_integers(values, encoding, share)
        except TrainingError as exc:
            raise TaskFailed(K.TASK_ERROR_DATA, str(exc)) from None

    def _charge(
        self,
        task: federation_pb2.Task,
        run: RunContext,
        purpose: Purpose | str,
        partition: Partition,
        sigma: float,
        q: float,
        steps: int,
        share: NoiseShare | None = None,
    ) -> None:
        """Record the release in the ledger before it is computed for release (a refusal is a
        budget error and nothing is made); audit what was charged. A distributed release
        (`share`) is a Skellam mechanism, charged under the site's assumption and from its own
        share alone; the budget counts the view the policy names."""
        self._check_not_erased(task, run)
        privacy = run.plan.privacy
        policy = self.config.policy
        skellam: dict[str, Any] = {}
        if share is not None:
            skellam = {
                "mechanism": "skellam",
                "l2_sensitivity": share.l2_sensitivity,
                "l1_sensitivity": share.l1_sensitivity,
                "own_noise_multiplier": share.own_noise_multiplier,
            }
        try:
            # one durable commit for the charge and the run's ε in its record of processing
            # (they share the ledger's connection when the agent built them)
            with self.ledger.transaction():
                charge = self.ledger.charge(
                    run_id=task.run_id,
                    purpose=str(purpose),  # a Purpose, or a release of its own (published metrics)
                    round=task.round,
                    attempt=task.attempt,
                    partition=partition,
                    noise_multiplier=sigma,
                    sample_rate=q,
                    steps=steps,
                    delta=privacy.delta,
                    run_epsilon_cap=min(privacy.epsilon, policy.max_epsilon_per_run),
                    lifetime_epsilon_cap=policy.lifetime_epsilon,
                    accountant=privacy.accountant,
                    budget_view="own" if policy.budget_epsilon == "worst_case" else "assumed",
                    **skellam,
                )
                self.records.spent(task.run_id, charge.epsilon_run, self.clock())
        except BudgetExceeded as exc:
            raise TaskFailed(K.TASK_ERROR_BUDGET_EXHAUSTED, str(exc)) from None
        self.audit.append(
            self.site_id,
            "release_charged",
            {
                "run_id": task.run_id,
                "purpose": str(purpose),
                "round": task.round,
                "attempt": task.attempt,
                "partition": partition,
                "noise_multiplier": sigma,
                "sample_rate": q,
                "steps": steps,
                "epsilon_run": charge.epsilon_run,
                "epsilon_lifetime": charge.epsilon_lifetime,
                **(
                    {
                        "mechanism": "skellam",
                        "own_noise_multiplier": share.own_noise_multiplier,
                        "trusted_noise_sites": share.trusted_sites,
                        "epsilon_run_own": charge.epsilon_run_own,
                        "epsilon_lifetime_own": charge.epsilon_lifetime_own,
                    }
                    if share is not None
                    else {}
                ),
            },
        )

    def _keep_own_metrics(
        self,
        task: federation_pb2.Task,
        run: RunContext,
        release: EvaluationRelease,
        noised: np.ndarray,
    ) -> None:
        """The site's own figures, decoded from its own DP-noised release (post-processing of
        what was just charged: no new cost), kept in its local audit log: a site always sees its
        own evaluation, per subgroup too, even though only the consortium's sum leaves it (its
        policy may publish a separately noised release: site_agent/published_metrics.py)."""
        sigma = run.plan.privacy.metrics_noise_multiplier
        figures = release_metrics(release, release.decode(noised), sigma * release.sensitivity)
        self.audit.append(
            self.site_id,
            "own_metrics",
            {
                "run_id": task.run_id,
                "round": task.round,
                "dp_noised": True,
                "metrics": {k: round(float(v), 6) for k, v in figures.items() if math.isfinite(v)},
            },
        )

    def _with_site_baseline(
        self, task: federation_pb2.Task, run: RunContext, vector: np.ndarray
    ) -> np.ndarray:
        """The global vector with this site's own baseline in place of the consortium's, under
        `model.baseline = "per-site"` (unchanged otherwise)."""
        plan = run.plan
        k = shared_offset(plan.model, plan.time_grid.n_intervals)
        if k == 0:
            return vector
        start_round = task.round if task.kind == K.TASK_KIND_TRAIN else task.round + 1
        own = self.baselines.before(
            task.run_id, start_round, lambda: self._initial_baseline(task.run_id, run)
        )
        local = np.array(vector, dtype=np.float32, copy=True)
        local[:k] = own
        return local

    def _keep_site_baseline(
        self, task: federation_pb2.Task, run: RunContext, start: np.ndarray, delta: np.ndarray
    ) -> np.ndarray:
        """Keep the baseline part of a round's update here (durably); the rest is released."""
        plan = run.plan
        k = shared_offset(plan.model, plan.time_grid.n_intervals)
        if k == 0:
            return delta
        self.baselines.keep(task.run_id, task.round, start[:k] + delta[:k])
        shared: np.ndarray = delta[k:]
        return shared

    def _initial_baseline(self, run_id: str, run: RunContext) -> np.ndarray:
        """This site's starting baseline: the logits of its own DP-noised interval counts, read
        back from its statistics release (post-processing of a charged release)."""
        plan = run.plan
        cached = self.cache.get(run_id, Purpose.STATS.value, 0)
        if cached is None or cached.vector is None:
            raise TaskFailed(K.TASK_ERROR_INVALID_TASK, "no statistics release of this run here")
        layout = StatsLayout.for_schema(plan.feature_schema, plan.time_grid.n_intervals)
        own = decode_stats(
            dequantize_sum(cached.vector, layout.quantization(MAX_SITES)),
            plan.feature_schema,
            plan.time_grid.n_intervals,
            stats_noise_multiplier(plan) * layout.sensitivity,
        )
        return baseline_logits(own.events, own.at_risk)
