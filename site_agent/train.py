"""Local training at a site: the DP-SGD trainer (Opacus) and one run's training across rounds.

- :class:`LocalTrainer` trains on rows it is given, one round at a time (Poisson sampling,
  per-sample clipping, Gaussian noise). σ is calibrated once, at construction, for the whole plan
  (rounds × local epochs × steps per epoch at rate q, after any ``prior`` releases), so every round
  runs at the same σ and the plan's ε meets the target. A round returns the delta (new − global)
  as flat float32 and records what ran in a :class:`PrivacyAccountant`.
- :class:`RunTraining` is one run of a plan at this site: training rows prepared once, one
  ``LocalTrainer`` whose σ covers the plan's rounds plus a spare one for a retried round, after the
  run's statistics release; each round is charged to the ledger before its first step. The site
  keeps it in the run's context, so σ is calibrated once per run, not every round.

Opacus's Poisson sampler draws each patient independently with ``q = 1 / ceil(n / batch_size)``
(= ``batch_size / n`` when it divides), and an epoch is ``ceil(n / batch_size)`` steps.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from opacus import PrivacyEngine
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader

from site_agent.accounting import Entry, PrivacyAccountant, calibrate_noise_multiplier
from site_agent.cohort import training_rows
from site_agent.model import standardise
from site_agent.opacus_adapters import (
    BatchTensors,
    PerPatientNLL,
    passthrough,
    secure_rng_problem,
)
from survival.loss import nll_per_patient
from survival.models import ModelSpec, build_model, flat_parameters, load_flat_parameters

if TYPE_CHECKING:
    from federation.plan import RunPlan
    from site_agent.data import LocalDataset

RETRY_RESERVE_ROUNDS = 1
"""Training rounds σ covers beyond the plan's, so that an honestly retried round still fits."""


class TrainingError(ValueError):
    """Bad trainer input (shapes, values, configuration) or an impossible privacy plan."""


class TrainerConfig(BaseModel):
    """Local training hyper-parameters and the site's privacy target for the whole plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int = Field(ge=1)
    local_epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    optimizer: Literal["sgd", "adam"]
    max_grad_norm: float = Field(gt=0)
    target_epsilon: float | None = Field(gt=0)  # None = non-private baseline
    target_delta: float = Field(gt=0, lt=1)
    accountant: Literal["pld", "rdp", "prv"] = "rdp"
    secure_mode: bool = False
    # How Opacus gets per-sample gradient norms: "ghost" (ghost clipping: norms from activations
    # and output gradients, then a second, reweighted backward pass; never materialises per-sample
    # gradients, several times faster here) or "hooks" (materialises p.grad_sample). Same
    # mechanism and guarantee either way: flat per-sample clipping to max_grad_norm + noise.
    clipping_mode: Literal["ghost", "hooks"] = "ghost"


@dataclass
class RoundUpdate:
    """What one local round produced: the update and the privacy spent so far."""

    delta: np.ndarray  # float32, flat, new − global
    epsilon_total: float  # ε of the accountant's whole history at target δ (inf if non-private)
    noise_multiplier: float
    sample_rate: float
    steps: int
    n_samples: int
    seconds: float


class LocalTrainer:
    """Trains the plan's model on one site's rows, one federated round at a time.

    σ is a property of the whole plan, not of a round, so one trainer serves every round of a
    plan: it calibrates σ once and records each round that actually ran.
    """

    def __init__(
        self,
        spec: ModelSpec,
        n_features: int,
        n_intervals: int,
        config: TrainerConfig,
        n_samples: int,
        accountant: PrivacyAccountant | None = None,
        seed: int | None = None,
        prior: Sequence[Entry] = (),
    ) -> None:
        """``prior``: releases already charged on the same rows that σ must leave room for."""
        if n_features < 1 or n_intervals < 1:
            raise TrainingError(
                f"need n_features, n_intervals >= 1, got {n_features}, {n_intervals}"
            )
        if n_samples < 1:
            raise TrainingError(f"n_samples must be >= 1, got {n_samples}")
        if config.batch_size > n_samples:
            raise TrainingError(f"batch_size {config.batch_size} exceeds n_samples {n_samples}")
        if config.secure_mode:
            if seed is not None:
                raise TrainingError("secure_mode=True draws from a CSPRNG: do not pass a seed")
            if (problem := secure_rng_problem()) is not None:
                raise TrainingError(problem)
        self.spec = spec
        self.n_features = n_features
        self.n_intervals = n_intervals
        self.config = config
        self.n_samples = n_samples
        self.private = config.target_epsilon is not None
        self.steps_per_epoch = math.ceil(n_samples / config.batch_size)
        self.sample_rate = 1.0 / self.steps_per_epoch
        self.steps_per_round = config.local_epochs * self.steps_per_epoch
        self.plan_steps = config.rounds * self.steps_per_round
        if accountant is None:
            accountant = PrivacyAccountant(kind=config.accountant)
        if accountant.kind != config.accountant:
            raise TrainingError(
                f"accountant state is '{accountant.kind}' but the config asks for "
                f"'{config.accountant}': one history must use one accountant"
            )
        self.accountant = accountant
        self.noise_multiplier = 0.0
        if config.target_epsilon is not None:
            self.noise_multiplier = calibrate_noise_multiplier(
                config.target_epsilon,
                config.target_delta,
                self.sample_rate,
                self.plan_steps,
                config.accountant,
                prior=list(prior),
            )
        self._generator = torch.Generator()
        self.reseed(seed)
        self.model: nn.Module = build_model(spec, n_features, n_intervals)
        self.n_parameters = int(flat_parameters(self.model).shape[0])

    def reseed(self, seed: int | None = None) -> None:
        """Seed the sampling and noise generator: 64 fresh OS-random bits, or ``seed`` (tests).

        A run's trainer lives across rounds; reseeding each round keeps every round's draws as
        independent of the previous ones as a freshly built trainer's were.
        """
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)

    def train_round(
        self, global_params: np.ndarray, x: np.ndarray, interval: np.ndarray, event: np.ndarray
    ) -> RoundUpdate:
        """Run ``local_epochs`` epochs from ``global_params``; return the delta and ε so far."""
        tensors = self._check_inputs(global_params, x, interval, event)
        global_flat = np.asarray(global_params, dtype=np.float32)
        model = build_model(self.spec, self.n_features, self.n_intervals)
        load_flat_parameters(model, global_flat)
        model.train()
        optimizer = self._make_optimizer(model)
        start = time.perf_counter()
        if self.private:
            steps, trained = self._train_private(model, optimizer, tensors)
        else:
            steps, trained = self._train_plain(model, optimizer, tensors), model
        seconds = time.perf_counter() - start
        self.model = trained
        delta = (flat_parameters(trained) - global_flat).astype(np.float32)
        if self.private:
            self.accountant.record(self.noise_multiplier, self.sample_rate, steps)
            epsilon = self.accountant.epsilon(self.config.target_delta)
        else:
            epsilon = math.inf
        return RoundUpdate(
            delta=delta,
            epsilon_total=epsilon,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=steps,
            n_samples=self.n_samples,
            seconds=seconds,
        )

    def _make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        lr = self.config.learning_rate
        if self.config.optimizer == "adam":
            return torch.optim.Adam(model.parameters(), lr=lr)
        return torch.optim.SGD(model.parameters(), lr=lr)

    def _train_private(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> tuple[int, nn.Module]:
        """DP-SGD: Opacus Poisson sampling, per-sample clipping, Gaussian noise."""
        secure = self.config.secure_mode
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            # Opacus's own accountant only counts the steps taken (charged by ours); it has no
            # PLD accountant, so it keeps RDP whatever the plan's accountant is.
            engine = PrivacyEngine(accountant="rdp", secure_mode=secure)
        loader = DataLoader(
            BatchTensors(*tensors),
            batch_size=self.config.batch_size,
            collate_fn=passthrough,
            generator=None if secure else self._generator,
        )
        criterion = PerPatientNLL()
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion,
            data_loader=loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.config.max_grad_norm,
            poisson_sampling=True,
            noise_generator=None if secure else self._generator,
            grad_sample_mode=self.config.clipping_mode,
        )
        if self.config.clipping_mode == "ghost":
            dp_model, dp_optimizer, dp_criterion, dp_loader = private
        else:
            dp_model, dp_optimizer, dp_loader = private
            dp_criterion = criterion
        if not math.isclose(dp_loader.sample_rate, self.sample_rate):
            raise TrainingError(f"Opacus sample rate {dp_loader.sample_rate} != {self.sample_rate}")
        # Opacus's hooks fire on the first layer although inputs need no grad: harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        for _ in range(self.config.local_epochs):
            for xb, ib, eb in dp_loader:
                dp_optimizer.zero_grad(set_to_none=True)
                loss: Any = dp_criterion(dp_model(xb), ib, eb)  # Opacus's loss wrapper
                loss.backward()  # ghost mode: both passes and the clipping happen here
                dp_optimizer.step()
        # Charge exactly what Opacus's own accountant saw (one entry: constant σ and q).
        steps = sum(n for _, _, n in engine.accountant.history)
        trained = dp_model._module
        dp_model._close()
        return steps, trained

    def _train_plain(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    ) -> int:
        """Non-private baseline: shuffled mini-batches of ``batch_size``, same step count."""
        x, interval, event = tensors
        n, batch = self.n_samples, self.config.batch_size
        steps = 0
        for _ in range(self.config.local_epochs):
            order = torch.randperm(n, generator=self._generator)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                optimizer.zero_grad(set_to_none=True)
                loss = nll_per_patient(model(x[idx]), interval[idx], event[idx]).mean()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                steps += 1
        return steps

    def _check_inputs(
        self, global_params: np.ndarray, x: np.ndarray, interval: np.ndarray, event: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Typed errors for shapes and values; σ was calibrated for exactly ``n_samples`` rows."""
        flat = np.asarray(global_params)
        if flat.shape != (self.n_parameters,):
            raise TrainingError(
                f"global_params has shape {flat.shape}; the model has "
                f"{self.n_parameters} parameters"
            )
        if not np.all(np.isfinite(flat)):
            raise TrainingError("global_params contains NaN or inf")
        x = np.asarray(x)
        if x.ndim != 2 or x.shape != (self.n_samples, self.n_features):
            raise TrainingError(
                f"x has shape {x.shape}, expected ({self.n_samples}, {self.n_features})"
            )
        if not np.all(np.isfinite(x)):
            raise TrainingError("x contains NaN or inf (impute and standardise first)")
        interval = np.asarray(interval)
        event = np.asarray(event)
        for name, arr in (("interval", interval), ("event", event)):
            if arr.shape != (self.n_samples,):
                raise TrainingError(f"{name} has shape {arr.shape}, expected ({self.n_samples},)")
        if not np.issubdtype(interval.dtype, np.integer):
            raise TrainingError(f"interval must be integers, got {interval.dtype}")
        if interval.min() < 0 or interval.max() >= self.n_intervals:
            raise TrainingError(f"interval values must be in [0, {self.n_intervals})")
        if not np.all((event == 0) | (event == 1)):
            raise TrainingError("event values must be 0 or 1")
        return (
            torch.as_tensor(x, dtype=torch.float32),
            torch.as_tensor(interval, dtype=torch.long),
            torch.as_tensor(event, dtype=torch.float32),
        )


# ---------------------------------------------------------------------- one run of a plan


def plan_trainer_config(plan: RunPlan, n_samples: int) -> TrainerConfig:
    """The trainer settings a plan implies at a site of ``n_samples`` training rows; σ covers the
    plan's rounds plus ``RETRY_RESERVE_ROUNDS`` (the ledger refuses anything beyond either way)."""
    training = plan.training
    return TrainerConfig(
        rounds=training.rounds + RETRY_RESERVE_ROUNDS,
        local_epochs=training.local_epochs,
        batch_size=min(training.batch_size, n_samples),
        learning_rate=training.learning_rate,
        optimizer=training.optimizer,
        max_grad_norm=training.max_grad_norm,
        target_epsilon=plan.privacy.epsilon,
        target_delta=plan.privacy.delta,
        accountant=plan.privacy.accountant,
    )


Charge = Callable[[float, float, int], None]
"""``charge(σ, q, steps)``: records the release in the ledger, or raises to refuse it."""


class RunTraining:
    """One run's local DP-SGD at this site: rows prepared and σ calibrated once, reused each round.

    σ depends only on the plan, the training cohort and the run's statistics releases charged
    before training (``prior``), so it is fixed for the run; the site rebuilds this object only if
    that prior changes (``prior`` is compared by the caller), which keeps σ exactly what a fresh
    calibration over the same inputs gives.
    """

    def __init__(self, plan: RunPlan, data: LocalDataset, prior: Sequence[Entry] = ()) -> None:
        rows = training_rows(plan, data)
        if rows.size < 2:
            raise TrainingError("the training split has fewer than 2 patients")
        self.prior = tuple(prior)
        self.partition = rows.partition
        self._raw = rows.raw
        self._interval, self._event = plan.time_grid.discretize(rows.time, rows.event)
        self.trainer = LocalTrainer(
            plan.model,
            plan.feature_schema.n_encoded,
            plan.time_grid.n_intervals,
            plan_trainer_config(plan, rows.size),
            rows.size,
            prior=self.prior,
        )
        self.steps_per_round = self.trainer.steps_per_round  # local_epochs × steps per epoch

    @property
    def noise_multiplier(self) -> float:
        """σ of every round of this run."""
        return self.trainer.noise_multiplier

    @property
    def sample_rate(self) -> float:
        """Poisson sampling rate q of every step."""
        return self.trainer.sample_rate

    def train_round(
        self,
        global_vector: np.ndarray,
        means: Sequence[float],
        scales: Sequence[float],
        charge: Charge,
        seed: int | None = None,
    ) -> np.ndarray:
        """One round of local DP-SGD from the global vector; returns the flat float32 delta.

        ``charge(σ, q, steps)`` is called before the first gradient step and must raise to refuse;
        ``seed`` fixes the round's sampling and noise (tests only).
        """
        x = standardise(self._raw, means, scales)
        steps = self.steps_per_round
        charge(self.noise_multiplier, self.sample_rate, steps)
        self.trainer.reseed(seed)
        update = self.trainer.train_round(global_vector, x, self._interval, self._event)
        if update.steps != steps:  # cannot happen with Opacus's Poisson loader; never under-count
            raise TrainingError(f"ran {update.steps} DP-SGD steps but charged {steps}")
        return update.delta
