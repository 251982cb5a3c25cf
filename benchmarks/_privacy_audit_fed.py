"""Helpers of `privacy_audit.py`: the demo consortium's rows, the canaries, and one federated
training run in-process through the real site and coordinator code.

- Population: `fedctl demo`'s three hospitals (FLCHAIN's fixed training split, by age band,
  `survival.data.split_hospitals(train, 3, "age", seed=0)`), schema-validated rows. Each model
  trains on a random half of each hospital (every row in or out with probability 1/2,
  independently per model), so every model is a target and a shadow of the others.
- Canaries (the one-run audit): per model and hospital, fresh rows drawn uniformly inside the
  plan's public bounds and levels, each dead in the first interval (an outcome the model finds
  unlikely, so that including one moves the model measurably), each included with
  probability 1/2. They are distinct per model, so the whole experiment is one audit of m =
  models × hospitals × canaries independent inclusions (Steinke et al.'s setting).
- One run (`train_federated`): per round, each hospital's `site_agent.train.RunTraining` (the
  site's DP-SGD trainer with the site's σ calibration after the statistics prior; the accountant
  records exactly what Opacus ran), the site's weighted release (`UpdateLayout.weighted_release`
  with the weight from a DP-noised count, as the site's statistics release gives it) quantised
  by `secagg.quantize`, summed in Z_2^32 as the secure sum is (the masks cancel), decoded by
  `coordinator.aggregation.mean_update` and applied by the plan's server optimiser. What it does
  not run: gRPC, TLS and the masking itself (tested elsewhere), and the statistics release,
  whose standardisation and baseline are replaced by public ones from the whole population
  (independent of membership, so they cannot leak it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coordinator.aggregation import mean_update
from coordinator.optimizers import server_optimizer
from federation.noise import stats_noise_multiplier
from federation.plan import RunPlan
from federation.releases import MAX_SITES, StatsLayout, UpdateLayout
from secagg.quantize import quantize
from site_agent.accounting import Entry, epsilon_of
from site_agent.data import LocalDataset
from site_agent.train import LocalTrainer, RunTraining, plan_trainer_config
from survival.schema import CategoricalFeature, FeatureSchema, Standardization
from survival.spec import baseline_logits, initial_parameters


@dataclass(frozen=True)
class Hospital:
    """One hospital's valid rows (raw design matrix, follow-up time, event)."""

    raw: np.ndarray
    time: np.ndarray
    event: np.ndarray

    @property
    def size(self) -> int:
        return int(self.time.size)

    def take(self, mask: np.ndarray) -> Hospital:
        return Hospital(self.raw[mask], self.time[mask], self.event[mask])


def _valid(schema: FeatureSchema, frame: Any) -> Hospital:
    columns = {name: frame[name].tolist() for name in schema.names}
    valid = schema.validate_rows(columns).valid
    return Hospital(
        schema.raw_matrix(columns, valid),
        frame["time"].to_numpy(float)[valid],
        frame["event"].to_numpy(int)[valid],
    )


def demo_hospitals(
    schema: FeatureSchema, per_hospital: int | None = None
) -> tuple[list[Hospital], Hospital]:
    """The demo's three hospitals and the common test split; `per_hospital` keeps a seeded
    subsample of each hospital (tests)."""
    from survival.data import fixed_split, load_flchain, split_hospitals

    train, test = fixed_split(load_flchain())
    hospitals = [_valid(schema, part) for part in split_hospitals(train, 3, "age", seed=0)]
    if per_hospital is not None:
        rng = np.random.default_rng(1)
        keep = [
            np.isin(np.arange(h.size), rng.permutation(h.size)[:per_hospital]) for h in hospitals
        ]
        hospitals = [h.take(k) for h, k in zip(hospitals, keep, strict=True)]
    return hospitals, _valid(schema, test)


def canaries(plan: RunPlan, n: int, rng: np.random.Generator) -> Hospital:
    """n rows uniform inside the plan's bounds and levels, each an event in the first interval."""
    schema = plan.feature_schema
    columns: dict[str, list[object]] = {}
    for feature in schema.features:
        if isinstance(feature, CategoricalFeature):
            columns[feature.name] = list(rng.choice(feature.levels, size=n))
        else:
            columns[feature.name] = list(rng.uniform(feature.min, feature.max, size=n))
    valid = schema.validate_rows(columns).valid
    raw = schema.raw_matrix(columns, valid)
    first_cut = float(plan.time_grid.cuts[0])
    time_ = np.asarray(rng.uniform(0.0, first_cut, size=raw.shape[0]), dtype=float)
    return Hospital(raw, time_, np.ones(raw.shape[0], dtype=int))


@dataclass(frozen=True)
class Public:
    """What every model starts from and is scored with, independent of any membership draw."""

    means: list[float]
    stds: list[float]
    initial: np.ndarray  # round 0's global vector (the plan's seed, the population's baseline)


def public_start(plan: RunPlan, hospitals: list[Hospital]) -> Public:
    raw = np.concatenate([h.raw for h in hospitals])
    time_ = np.concatenate([h.time for h in hospitals])
    event = np.concatenate([h.event for h in hospitals])
    std = Standardization.from_matrix(raw)
    events, at_risk = plan.time_grid.interval_counts(time_, event)
    p, k = plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    start = initial_parameters(plan.model, p, k, plan.seed, baseline_logits(events, at_risk))
    return Public(std.means, std.stds, np.asarray(start, dtype=np.float32))


class _PlainTraining:
    """The no-DP setting: the same LocalTrainer and plan settings with target_epsilon = None
    (RunTraining always calibrates σ for the plan's ε), the same round interface."""

    def __init__(self, plan: RunPlan, rows: Hospital) -> None:
        config = plan_trainer_config(plan, rows.size).model_copy(update={"target_epsilon": None})
        p, k = plan.feature_schema.n_encoded, plan.time_grid.n_intervals
        self.trainer = LocalTrainer(plan.model, p, k, config, rows.size)
        self._raw = rows.raw
        self._interval, self._event = plan.time_grid.discretize(rows.time, rows.event)
        self.noise_multiplier = 0.0

    def train_round(
        self,
        vector: np.ndarray,
        means: list[float],
        stds: list[float],
        charge: Any,
        seed: int | None = None,
    ) -> np.ndarray:
        from site_agent.model import standardise

        self.trainer.reseed(seed)
        update = self.trainer.train_round(
            vector, standardise(self._raw, means, stds), self._interval, self._event
        )
        return update.delta


@dataclass
class Trained:
    """One federated run's global model and what each site's ledger would say of it."""

    vector: np.ndarray
    epsilon_spent: float | None  # max over sites of ε(statistics prior + training rounds run)
    noise_multipliers: list[float]


def train_federated(
    plan: RunPlan, sites: list[Hospital], public: Public, private: bool, seed: int
) -> Trained:
    """`plan.training.rounds` rounds of the plan over `sites` (each site's rows), in-process."""
    rng = np.random.default_rng(seed)
    sigma_stats = stats_noise_multiplier(plan)
    prior = [Entry(sigma_stats, 1.0, 1)]  # the statistics release the site charges first
    runs: list[Any] = []
    for rows in sites:
        if private:
            data = LocalDataset(
                rows.raw, rows.time, rows.event, np.zeros(rows.size, bool), rows.size, {}
            )
            runs.append(RunTraining(plan, data, prior))
        else:
            runs.append(_PlainTraining(plan, rows))
    # each site's weight: its DP-noised count from the statistics release over the noised total
    sensitivity = StatsLayout.for_schema(
        plan.feature_schema, plan.time_grid.n_intervals
    ).sensitivity
    noisy = [r.size + rng.normal(0.0, sigma_stats * sensitivity) for r in sites]
    consortium = max(sum(noisy), 1.0)
    weights = [min(max(c, 1.0) / consortium, 1.0) for c in noisy]
    s = plan.secagg
    layout = UpdateLayout(public.initial.size, s.clip_norm, s.coord_bound, s.scale_bits, True)
    if plan.training.aggregation != "weighted":
        layout = UpdateLayout(public.initial.size, s.clip_norm, s.coord_bound, s.scale_bits)
    optimizer = server_optimizer(plan.training)
    charges: list[list[Entry]] = [[] for _ in runs]
    vector = public.initial.copy()
    for _ in range(plan.training.rounds):
        total = np.zeros(layout.length, dtype=np.uint32)
        for i, run in enumerate(runs):

            def charge(sigma: float, q: float, steps: int, i: int = i) -> None:
                charges[i].append(Entry(sigma, q, steps))

            delta = run.train_round(
                vector, public.means, public.stds, charge, seed=int(rng.integers(2**62))
            )
            release = layout.weighted_release(delta, weights[i]) if layout.weighted else delta
            total += quantize(release, layout.quantization(MAX_SITES))  # wraps mod 2^32
        step = mean_update(plan, total, len(runs), len(runs))
        vector = optimizer.step(vector, step)
    spent = None
    if private:
        delta = plan.privacy.delta
        spent = max(epsilon_of(prior + c, delta, plan.privacy.accountant) for c in charges)
    return Trained(vector, spent, [float(r.noise_multiplier) for r in runs])
