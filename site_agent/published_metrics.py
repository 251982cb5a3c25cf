"""A site's own evaluation figures, published only where its policy says so (default: never).

Every evaluation already leaves the site inside a secure sum, and the site keeps its own decoded
figures in its local audit log (`own_metrics`). `policy.publish_own_metrics = true` adds, at the
run's **final** evaluation only (round = `training.rounds`: with `evaluate_every` = 0, the only
one), a second, separate release that leaves in plaintext on the EVALUATE result
(`TaskResult.published_metrics`):

- what: the consortium block of that evaluation (`MetricsLayout`: patients, events, the Brier sum
  and the windowed pair counts, weighted; no subgroup or importance blocks, whose per-site figures
  would be noise at hospital scale and would only cost precision), on this site's held-out rows;
- noise: fresh Gaussian noise of std σ·s (s = `MetricsLayout.sensitivity`), drawn independently
  of the noise in the secure-aggregation input. Publishing the input's own noised block instead
  would let the coordinator subtract it from a two-site sum (and, in distributed mode, read this
  site's noise share); an independent draw reveals only what its own charge pays for;
- σ: calibrated here, from the plan the site accepted and its own policy, never from a task field:
  the smallest σ for which the held-out partition's history (every evaluation of the run, the
  final one's charge included) plus this release stays within min(plan ε, `max_epsilon_per_run`)
  at the plan's δ, composed by the ledger's own accountant in the view `policy.budget_epsilon`
  names — by default the room the consortium evaluations leave, 1 − `metrics_epsilon_share` of ε
  — and, if that is not enough, within the lifetime limit too;
- charge: a ledger row of its own (purpose `published_metrics`, Gaussian, q = 1, one step, on the
  held-out partition, its own noise all of σ, also in distributed mode) written *before* the
  noise is drawn, so the ε the site reports is still recomputed from the logged mechanisms;
- once: the noised vector is kept (`published_metrics` table in `site.sqlite`) before it is sent,
  and every later answer to the same evaluation (a retried attempt, a restart) re-sends that same
  vector, never a fresh draw a coordinator could average. It is DP-noised and has left the site,
  so it is kept like the audit log, not purged with the run's state.

A release that cannot be afforded (no room left, a cap) is not made: the evaluation itself goes on,
and the audit log says why (`own_metrics_not_published`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np

from federation.audit import AuditLog
from federation.evaluation_release import EvaluationRelease
from federation.plan import RunPlan
from federation.tasks import TaskKind
from federation.wire.v1 import federation_pb2
from site_agent.accounting import AccountingError, Entry, calibrate_noise_multiplier, epsilon_of
from site_agent.cohort import Partition
from site_agent.config import SiteConfig, SitePolicy
from site_agent.errors import TaskFailed
from site_agent.ledger import PrivacyLedger, View
from site_agent.offer import RunContext
from site_agent.releases import gaussian_noise
from site_agent.sqlite_state import SqliteComponent

PURPOSE = "published_metrics"
"""The ledger purpose of a published release (a release of its own, not the metrics one)."""

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS published_metrics (
        run_id           TEXT    NOT NULL,
        round            INTEGER NOT NULL,
        weighted         TEXT    NOT NULL,
        noise_multiplier REAL    NOT NULL,
        PRIMARY KEY (run_id, round)
    )""",
)


class NotPublishable(Exception):
    """This site cannot afford the release: `reason` says which limit leaves no room."""


class PublishedStore(SqliteComponent):
    """The published vectors, one per (run, round), kept before they are first sent."""

    def __init__(self, conn_or_path: sqlite3.Connection | str | Path) -> None:
        super().__init__(conn_or_path, _SCHEMA)

    def put(self, run_id: str, round_: int, weighted: np.ndarray, sigma: float) -> None:
        """Keep a published vector; an existing one for the key is never replaced (first wins)."""
        values = json.dumps([float(v) for v in weighted], allow_nan=False)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO published_metrics"
                " (run_id, round, weighted, noise_multiplier) VALUES (?, ?, ?, ?)",
                (run_id, int(round_), values, float(sigma)),
            )

    def get(self, run_id: str, round_: int) -> tuple[list[float], float] | None:
        """(weighted values, σ) of the published release of an evaluation, or None."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT weighted, noise_multiplier FROM published_metrics"
                " WHERE run_id = ? AND round = ?",
                (run_id, int(round_)),
            ).fetchone()
        if row is None:
            return None
        return [float(v) for v in json.loads(row[0])], float(row[1])


def budget_view(policy: SitePolicy) -> View:
    """The ε view the site's caps bind (`ReleaseCharging._charge` charges in the same one)."""
    return "own" if policy.budget_epsilon == "worst_case" else "assumed"


def _calibrate(cap: float, plan: RunPlan, prior: list[Entry], what: str) -> float:
    privacy = plan.privacy
    try:
        return calibrate_noise_multiplier(
            cap, privacy.delta, 1.0, 1, privacy.accountant, prior, tolerance=1e-3
        )
    except AccountingError as exc:
        raise NotPublishable(
            f"no room left under the {what} ε limit {cap:g} on the held-out partition ({exc})"
        ) from None


def publish_noise_multiplier(
    ledger: PrivacyLedger, run_id: str, plan: RunPlan, policy: SitePolicy
) -> float:
    """σ of the published release (module docstring): the smallest (to 0.1 %) for which the
    run's held-out history plus it stays within min(plan ε, max_epsilon_per_run), raised if the
    site's lifetime limit needs more. The lifetime check composes every run's held-out releases
    with this plan's accountant, which bounds the ledger's figure (the smallest over the
    accountants its rows name) from above. Raises NotPublishable if no σ fits."""
    view = budget_view(policy)
    privacy = plan.privacy
    run_cap = min(privacy.epsilon, policy.max_epsilon_per_run)
    sigma = _calibrate(run_cap, plan, ledger.history(run_id, "holdout", view), "run")
    lifetime = ledger.history(None, "holdout", view)
    new = Entry(sigma, 1.0, 1)
    if epsilon_of([*lifetime, new], privacy.delta, privacy.accountant) > policy.lifetime_epsilon:
        sigma = max(sigma, _calibrate(policy.lifetime_epsilon, plan, lifetime, "lifetime"))
    return sigma


class OwnMetricsPublishing:
    """The publishing half of `TaskHandlers` (which sets these attributes and `_charge`)."""

    config: SiteConfig
    site_id: str
    ledger: PrivacyLedger
    audit: AuditLog
    _charge: Callable[..., None]

    def _publications(self) -> PublishedStore:
        """The store, opened on first use beside the ledger (`state_dir/site.sqlite`)."""
        store = self.__dict__.get("_published_store")
        if store is None:
            path = Path(self.config.state_dir) / "site.sqlite"
            store = PublishedStore(path)
            self.__dict__["_published_store"] = store
        assert isinstance(store, PublishedStore)
        return store

    def _publish_own(
        self,
        task: federation_pb2.Task,
        run: RunContext,
        release: EvaluationRelease,
        blocks: np.ndarray,
    ) -> None:
        """Make this evaluation's published release if the policy asks for it and this is the
        final evaluation: calibrate σ, charge it, then draw the noise and keep the vector. Never
        fails the evaluation: a release the site cannot afford is simply not made (audited)."""
        plan = run.plan
        if not self.config.policy.publish_own_metrics or task.round != plan.training.rounds:
            return
        store = self._publications()
        if store.get(task.run_id, task.round) is not None:
            return  # made once: a retry re-sends it (`_attach_published`), never redraws
        if any(
            r["purpose"] == PURPOSE and r["round"] == task.round
            for r in self.ledger.releases(task.run_id)
        ):
            self._not_published(task, "charged before a restart but never kept; not redrawn")
            return
        try:
            sigma = publish_noise_multiplier(self.ledger, task.run_id, plan, self.config.policy)
        except NotPublishable as exc:
            self._not_published(task, str(exc))
            return
        partition: Partition = "holdout"
        try:
            self._charge(task, run, PURPOSE, partition, sigma, 1.0, 1)
        except TaskFailed as exc:  # a cap: nothing was recorded, nothing is made
            self._not_published(task, exc.message)
            return
        layout = release.base
        overall = np.asarray(blocks, dtype=np.float64).reshape(release.n_blocks, -1)[0]
        weighted = layout.encode(overall)
        noised = weighted + gaussian_noise(weighted.size, sigma * layout.sensitivity)
        store.put(task.run_id, task.round, noised, sigma)
        self.audit.append(
            self.site_id,
            "own_metrics_published",
            {
                "run_id": task.run_id,
                "round": task.round,
                "noise_multiplier": sigma,
                "weighted": [float(v) for v in noised],
            },
        )

    def _not_published(self, task: federation_pb2.Task, reason: str) -> None:
        self.audit.append(
            self.site_id,
            "own_metrics_not_published",
            {"run_id": task.run_id, "round": task.round, "reason": reason},
        )

    def _attach_published(
        self, task: federation_pb2.Task, kind: TaskKind | None, result: federation_pb2.TaskResult
    ) -> None:
        """Put the kept published release of this evaluation on its result (the same vector on
        every answer). Nothing unless the policy, as it is now, publishes."""
        if kind is not TaskKind.EVALUATE or not self.config.policy.publish_own_metrics:
            return
        kept = self._publications().get(task.run_id, task.round)
        if kept is None:
            return
        weighted, sigma = kept
        result.published_metrics.weighted.extend(weighted)
        result.published_metrics.noise_multiplier = sigma
