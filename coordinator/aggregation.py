"""One aggregation step's secure sum: the session a plan allows, and what its sum means.

The engine decides *when* a session opens and who is in it; this module holds what depends only
on the plan and the protocol: the session of a step (`SecureSum`, built by the same derivation
every site repeats before it joins, `federation/sessions.py`) and the decoding of the uint32 sum
back into consortium figures (`federation/releases.py` defines each release's layout, for both
sides).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.messages import ResultRejected
from federation import distributed
from federation.distributed import is_distributed
from federation.evaluation_release import EvaluationRelease
from federation.noise import stats_noise_multiplier
from federation.plan import RunPlan
from federation.releases import (
    ConsortiumStats,
    Purpose,
    StatsLayout,
    UpdateLayout,
    decode_stats,
)
from federation.sessions import session_config
from federation.subgroup_metrics import release_metrics
from federation.tasks import TaskKind
from secagg.config import Stage, StageTimeouts
from secagg.errors import SecAggError
from secagg.quantize import dequantize_sum
from secagg.server import ServerSession
from survival.spec import (
    baseline_logits,
    initial_parameters,
    parameter_count,
    shared_offset,
    shared_parameter_count,
)

SECAGG_KIND = {
    Stage.ADVERTISE_KEYS: TaskKind.ADVERTISE_KEYS,
    Stage.SHARE_KEYS: TaskKind.SHARE_KEYS,
    Stage.MASKED_INPUT: TaskKind.MASKED_INPUT,
    Stage.CONSISTENCY_CHECK: TaskKind.CONSISTENCY_CHECK,
    Stage.UNMASK: TaskKind.UNMASK,
}
"""The task that carries each stage's message to a site."""


@dataclass(frozen=True)
class StageOpened:
    """A new stage of the session: each listed site gets its message in a task of this kind.
    A participant with no message has dropped out of the session."""

    messages: tuple[tuple[str, TaskKind, bytes], ...]


@dataclass(frozen=True)
class Aborted:
    """Fewer than t participants were left at some stage: the step must be retried."""

    reason: str


@dataclass(frozen=True)
class Summed:
    """The session finished: the uint32 sum over exactly these sites' releases."""

    total: np.ndarray
    survivors: tuple[str, ...]


class SecureSum:
    """A step's live secure-aggregation session, addressed by site name instead of secagg id.

    It is never persisted: its secrets must not outlive the process (see snapshot.py)."""

    def __init__(
        self,
        plan: RunPlan,
        run_id: str,
        purpose: Purpose,
        round_: int,
        attempt: int,
        sites: Mapping[int, str],
        now: float,
    ) -> None:
        # The only config `plan` allows for this step (every site rebuilds and compares it);
        # each stage stays open for the plan's stage timeout, then whoever is missing drops.
        self.sites = dict(sites)
        self.config = session_config(plan, run_id, purpose, round_, attempt, self.sites)
        t = plan.secagg.stage_timeout_s
        timeouts = StageTimeouts(
            advertise_keys=t, share_keys=t, masked_input=t, consistency_check=t, unmask=t
        )
        self._session = ServerSession(self.config, timeouts, now)

    @property
    def stage(self) -> Stage:
        """The stage open now (DONE or ABORTED once it ended)."""
        return self._session.stage

    def receive(self, site: str, payload: bytes, now: float) -> None:
        """A participant's message for the open stage. Raises ResultRejected ("stale" for a
        site outside the session, "invalid" for a message the protocol refuses) before the
        session changes, so the engine can refuse the whole result."""
        ident = next((i for i, s in self.sites.items() if s == site), None)
        if ident is None:
            raise ResultRejected(f"site {site}: no secure-aggregation session for it", "stale")
        try:
            self._session.receive(ident, payload, now)
        except SecAggError as exc:
            raise ResultRejected(f"site {site}: {exc}", "invalid") from None

    def advance(self, now: float) -> StageOpened | Aborted | Summed | None:
        """Close the stage if everyone answered or its deadline passed; None if nothing moved."""
        session = self._session
        before = session.stage
        outbound = session.tick(now)
        if session.stage is Stage.ABORTED:
            return Aborted(session.abort_reason or "secure aggregation aborted")
        if session.stage is Stage.DONE and session.result is not None:
            survivors = tuple(sorted(self.sites[i] for i in session.result.survivors))
            return Summed(session.result.total, survivors)
        if session.stage is before and not outbound:
            return None
        return StageOpened(
            tuple((self.sites[m.recipient], SECAGG_KIND[m.stage], m.payload) for m in outbound)
        )


def n_parameters(plan: RunPlan) -> int:
    """Length of the model vector, from the plan alone: the coordinator and every site agree
    on it without exchanging it."""
    return parameter_count(plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals)


def update_layout(plan: RunPlan) -> UpdateLayout:
    """How a local-mode model update is clipped and quantised for secure aggregation under
    `plan`: the sum only decodes with the exact fixed-point encoding the sites used."""
    s = plan.secagg
    weighted = plan.training.aggregation == "weighted"
    shared = shared_parameter_count(
        plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    )
    return UpdateLayout(shared, s.clip_norm, s.coord_bound, s.scale_bits, weighted)


def decode_stats_sum(plan: RunPlan, total: np.ndarray, n: int) -> ConsortiumStats:
    """The consortium's standardisation and hazard counts from the statistics sum of n sites.

    The noise level passed on is public (σ·Δ·√n, the most n sites' noise can add up to):
    decoding uses it to refuse estimates that are indistinguishable from noise."""
    schema, n_intervals = plan.feature_schema, plan.time_grid.n_intervals
    layout = StatsLayout.for_schema(schema, n_intervals)
    if is_distributed(plan):
        values = distributed.encoding(plan, Purpose.STATS).decode_sum(total)
    else:
        values = dequantize_sum(total, layout.quantization(n))
    sigma = stats_noise_multiplier(plan)
    noise_std = distributed.summed_noise_std(plan, sigma, layout.sensitivity, n)
    return decode_stats(values, schema, n_intervals, float(noise_std))


def initial_model(plan: RunPlan, stats: ConsortiumStats) -> np.ndarray:
    """Round 0's global vector: the plan's seed, with the baseline hazard of the consortium's
    own (noised) event counts, so training does not spend rounds learning the base rate."""
    return initial_parameters(
        plan.model,
        plan.feature_schema.n_encoded,
        plan.time_grid.n_intervals,
        plan.seed,
        baseline_logits(stats.events, stats.at_risk),
    )


def mean_update(
    plan: RunPlan, total: np.ndarray, n: int, survivors: int, cohort: float = 0.0
) -> np.ndarray:
    """The server optimiser's pseudo-gradient (float64) from the round's sum.

    Local mode: the survivors' mean model delta, weighted by the cohort weights the sites put in
    the sum's last coordinate (`UpdateLayout.weighted_release`) or unweighted; `n` (the session's
    size) fixes the fixed-point range. Distributed mode: minus the pooled noisy gradient sum over
    the expected batch size q·`cohort` (the DP-estimated consortium size): one DP-SGD step's
    gradient, which the server optimiser applies at `server_learning_rate`."""
    if is_distributed(plan):
        gradient_sum = distributed.encoding(plan, Purpose.UPDATE).decode_sum(total)
        expected_batch = max(plan.training.sample_rate * max(cohort, 1.0), 1.0)
        step: np.ndarray = -gradient_sum / expected_batch
        return step.astype(np.float64)
    layout = update_layout(plan)
    decoded = dequantize_sum(total, layout.quantization(n))
    if layout.weighted:
        weight = float(decoded[-1])
        decoded = decoded[:-1]
        # no usable weights cannot happen with honest sites: then the plain mean
        mean = decoded / weight if weight > 1e-6 else decoded / survivors
    else:
        mean = decoded / survivors
    # per-site baselines: the sites' baselines never left them; the global one stays as it is
    offset = shared_offset(plan.model, plan.time_grid.n_intervals)
    result: np.ndarray = np.concatenate([np.zeros(offset), mean]).astype(np.float64)
    return result


def metrics_noise_std(plan: RunPlan, survivors: int, round_: int = 0) -> float:
    """The public std, per weighted coordinate, of the noise in a metrics sum over `survivors`
    sites: each adds N(0, (σ·Δ)²) in local mode (Δ the sensitivity of the round's release, its
    subgroup and importance blocks included), so σ·Δ·√survivors. In distributed mode the
    honest sites' shares add up to between σ·Δ (all trust each other) and σ·Δ·√survivors (each
    trusts only itself): the larger, so that the intervals built on it are never too narrow."""
    sigma = plan.privacy.metrics_noise_multiplier
    release = EvaluationRelease.for_round(plan, round_)
    return distributed.summed_noise_std(plan, sigma, release.sensitivity, survivors)


def decode_metrics_sum(
    plan: RunPlan, total: np.ndarray, n: int, survivors: int | None = None, round_: int = 0
) -> dict[str, float]:
    """Consortium evaluation figures from the metrics sum of a session of n sites, of which
    `survivors` (default n) are in the sum: the coordinator only ever learns metrics as
    consortium totals, never one hospital's. Each figure comes with its standard error, 95 %
    interval and whether it is resolvable at the plan's noise (`federation/metric_intervals.py`),
    so that a figure that is mostly noise is never shown as if it were a measurement. The final
    evaluation (`round_` = training.rounds) also carries the plan's subgroup and importance
    blocks, decoded into prefixed figures (`federation/subgroup_metrics.py`)."""
    release = EvaluationRelease.for_round(plan, round_)
    if is_distributed(plan):
        weighted = distributed.encoding(plan, Purpose.METRICS, round_).decode_sum(total)
    else:
        weighted = dequantize_sum(total, release.quantization(n))
    noise_std = metrics_noise_std(plan, n if survivors is None else survivors, round_)
    return release_metrics(release, release.decode(weighted), noise_std)


def evaluation_metrics(plan: RunPlan, summed: Summed, n: int, round_: int) -> dict[str, float]:
    """`decode_metrics_sum` of a finished evaluation session of n sites in `round_`."""
    return decode_metrics_sum(plan, summed.total, n, len(summed.survivors), round_)
