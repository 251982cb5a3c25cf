"""Server optimisers: how the coordinator turns the consortium's mean update into the next model.

The coordinator never sees one site's update, only the mean over the survivors of a secure sum.
It treats that mean as a *pseudo-gradient* Δ (a step the sites would like the model to take) and
hands it to one of the optimisers of Reddi et al. 2021, "Adaptive Federated Optimization"
(Algorithm 2): FedAvg takes the step as it is; FedAdam and FedYogi keep moments of Δ across
rounds so that coordinates whose updates are noisy (DP noise is the same size on every
coordinate, the signal is not) take smaller steps.

An optimiser's state is part of the run: it goes through the snapshot (`state` / `load`), so a
coordinator restarted between rounds continues with the same moments. The moments are kept as
float32 in memory too, exactly what the store keeps, so a restarted run and one that never
stopped compute the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from federation.plan_training import TrainingPlan

Vector = npt.NDArray[np.float32]
Gradient = npt.NDArray[np.float64]


class ServerOptimizer(Protocol):
    """What the engine needs of an optimiser: one step per completed update round, and a state
    it can persist (named float32 vectors plus a step count, for bias correction)."""

    steps: int

    def step(self, weights: Vector, pseudo_gradient: Gradient) -> Vector:
        """The next global vector; records the step in the optimiser's state."""
        ...

    def state(self) -> dict[str, Vector]:
        """The vectors to persist (names are the snapshot's vector names)."""
        ...

    def load(self, steps: int, vectors: Mapping[str, Vector]) -> None:
        """Take back what `steps` and `state()` said before a restart."""
        ...


class FedAvg:
    """x ← x + η·Δ. The demo's default: with η = 1 the new model is the mean of the sites' models,
    and it needs no state, so nothing about it can drift across a restart."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate
        self.steps = 0

    def step(self, weights: Vector, pseudo_gradient: Gradient) -> Vector:
        """In float64, rounded once to float32: the model sites receive is float32 on the wire."""
        current = weights.astype(np.float64)
        current += self.learning_rate * pseudo_gradient
        self.steps += 1
        return current.astype(np.float32)

    def state(self) -> dict[str, Vector]:
        """Nothing: FedAvg has no memory between rounds."""
        return {}

    def load(self, steps: int, vectors: Mapping[str, Vector]) -> None:
        """Only the step count (kept so every optimiser reports the same thing)."""
        del vectors
        self.steps = steps


class _Adaptive:
    """Shared by FedAdam and FedYogi: first moment m, second moment v, Adam's bias correction.

    x ← x + η·m̂/(√v̂ + τ) with m̂ = m/(1 − β1ᵗ), v̂ = v/(1 − β2ᵗ) (Kingma & Ba 2015). Both
    moments start at zero and v, with β2 nearer 1, forgets that start more slowly than m, so
    uncorrected steps are too large by (1 − β1ᵗ)/√(1 − β2ᵗ): about 2× from round 5 to 10 with the
    default β's. A clinical run has few rounds; without the correction those would be most of it.
    τ bounds the step of a coordinate whose updates are all near zero (Reddi et al.'s "degree of
    adaptivity").
    """

    names: tuple[str, str]

    def __init__(self, learning_rate: float, beta1: float, beta2: float, tau: float) -> None:
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self.steps = 0
        self.m: Vector | None = None
        self.v: Vector | None = None

    def _initial_v(self, like: Gradient) -> Gradient:
        return np.zeros_like(like)

    def _second_moment(self, v: Gradient, squared: Gradient) -> Gradient:
        raise NotImplementedError

    def step(self, weights: Vector, pseudo_gradient: Gradient) -> Vector:
        """One Algorithm-2 server step; m and v are rounded to float32, as the store keeps them."""
        g = pseudo_gradient.astype(np.float64)
        t = self.steps + 1
        m = np.zeros_like(g) if self.m is None else self.m.astype(np.float64)
        v = self._initial_v(g) if self.v is None else self.v.astype(np.float64)
        m = self.beta1 * m + (1.0 - self.beta1) * g
        v = self._second_moment(v, g * g)
        m_hat = m / (1.0 - self.beta1**t)
        v_hat = v / (1.0 - self.beta2**t)
        current = weights.astype(np.float64)
        current += self.learning_rate * m_hat / (np.sqrt(v_hat) + self.tau)
        self.m, self.v = m.astype(np.float32), v.astype(np.float32)
        self.steps = t
        return current.astype(np.float32)

    def state(self) -> dict[str, Vector]:
        """m and v under this optimiser's names, once it has taken a step."""
        if self.m is None or self.v is None:
            return {}
        return {self.names[0]: self.m, self.names[1]: self.v}

    def load(self, steps: int, vectors: Mapping[str, Vector]) -> None:
        """Restore m, v and t; a vector that is missing starts from its initial value."""
        self.steps = steps
        m, v = vectors.get(self.names[0]), vectors.get(self.names[1])
        self.m = None if m is None else np.asarray(m, dtype=np.float32)
        self.v = None if v is None else np.asarray(v, dtype=np.float32)


class FedAdam(_Adaptive):
    """v ← β2·v + (1 − β2)·Δ²: Adam's running mean of the squared pseudo-gradient.

    A coordinate's step size adapts to how large its updates have been recently, so one noisy
    round moves it little once v has seen it."""

    names = ("adam_m", "adam_v")

    def _second_moment(self, v: Gradient, squared: Gradient) -> Gradient:
        result: Gradient = self.beta2 * v + (1.0 - self.beta2) * squared
        return result


class FedYogi(_Adaptive):
    """v ← v − (1 − β2)·Δ²·sign(v − Δ²), from v = τ² (Reddi et al.'s v₋₁ ≥ τ²).

    Yogi moves v towards Δ² by an additive amount instead of Adam's multiplicative decay, so a
    single large (noisy) update cannot make v, and then the step, jump: useful when DP noise makes
    some rounds' updates much larger than others."""

    names = ("yogi_m", "yogi_v")

    def _initial_v(self, like: Gradient) -> Gradient:
        return np.full_like(like, self.tau * self.tau)

    def _second_moment(self, v: Gradient, squared: Gradient) -> Gradient:
        result: Gradient = v - (1.0 - self.beta2) * squared * np.sign(v - squared)
        return result


def server_optimizer(training: TrainingPlan) -> ServerOptimizer:
    """The optimiser the plan names, with its parameters: the plan is the only place they live,
    so sites (which accepted the plan) know how their updates will be combined."""
    rate = training.server_learning_rate
    if training.server_optimizer == "fedavg":
        return FedAvg(rate)
    adaptive = FedAdam if training.server_optimizer == "fedadam" else FedYogi
    return adaptive(rate, training.server_beta1, training.server_beta2, training.server_tau)
