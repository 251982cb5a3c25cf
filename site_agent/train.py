"""Local training at a site: DP-SGD with Opacus (or a plain loop for non-private baselines).

One :class:`LocalTrainer` serves one run. The noise multiplier is calibrated once, at
construction, for the *whole plan* (rounds × local epochs × steps per epoch at sample rate q), so
every round runs at the same σ and the plan's ε meets the site's target. Each round returns the
model delta (new − global) as a flat float32 vector and records what actually ran into the
persistent :class:`PrivacyAccountant`, which the caller saves between rounds and restarts.

Sampling: Opacus's Poisson sampler draws each patient independently with
``q = 1 / ceil(n / batch_size)`` (= ``batch_size / n`` when it divides), and an epoch is
``ceil(n / batch_size)`` steps.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from opacus import PrivacyEngine
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import DataLoader, Dataset

from site_agent.accounting import PrivacyAccountant, calibrate_noise_multiplier
from survival.loss import nll_per_patient
from survival.models import ModelSpec, build_model, flat_parameters, load_flat_parameters


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
    accountant: Literal["rdp", "prv"] = "rdp"
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


class _PerPatientNLL:
    """The per-patient loss as an Opacus criterion (ghost clipping asks it for ``reduction``)."""

    def __init__(self) -> None:
        self.reduction = "mean"

    def __call__(self, logits: torch.Tensor, interval: torch.Tensor, event: torch.Tensor) -> Any:
        per_patient = nll_per_patient(logits, interval, event)
        return per_patient if self.reduction == "none" else per_patient.mean()


class _BatchTensors(Dataset[tuple[torch.Tensor, ...]]):
    """Tensors indexed a whole batch at a time (``__getitems__``): no per-row Python loop."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def _passthrough(batch: Any) -> Any:
    """Collate for :class:`_BatchTensors`: the batch is already stacked."""
    return batch


def _require_secure_rng() -> None:
    """Opacus's secure_mode draws noise and samples from torchcsprng, which must be importable."""
    try:
        import torchcsprng  # noqa: F401
    except ImportError as exc:
        raise TrainingError(
            "secure_mode=True needs the 'torchcsprng' package (Opacus draws noise and Poisson "
            "samples from its CSPRNG); it is not installed and has no build for torch 2.13. "
            "Run with secure_mode=False, or install a torchcsprng built for this torch."
        ) from exc


class LocalTrainer:
    """Trains the plan's model on one site's rows, one federated round at a time."""

    def __init__(
        self,
        spec: ModelSpec,
        n_features: int,
        n_intervals: int,
        config: TrainerConfig,
        n_samples: int,
        accountant: PrivacyAccountant | None = None,
        seed: int | None = None,
    ) -> None:
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
            _require_secure_rng()
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
            )
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed)
        self.model: nn.Module = build_model(spec, n_features, n_intervals)
        self.n_parameters = int(flat_parameters(self.model).shape[0])

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
            engine = PrivacyEngine(accountant=self.config.accountant, secure_mode=secure)
        loader = DataLoader(
            _BatchTensors(*tensors),
            batch_size=self.config.batch_size,
            collate_fn=_passthrough,
            generator=None if secure else self._generator,
        )
        criterion = _PerPatientNLL()
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
