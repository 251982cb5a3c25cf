"""Integer encoding of a site's noisy gradient sum for distributed DP-SGD (numpy only).

Each round a site encodes the sum of its clipped per-patient gradients as integers, adds an
integer Skellam noise share (`site_agent.skellam`) and hands the result to secure aggregation
over Z_{2^32}; the coordinator decodes the pooled sum. Both sides derive the same
:class:`IntegerEncoding` from public plan fields, so this module is shared and torch-free.

Why the rounding is deterministic (round half to even of γ·x, not the stochastic rounding of
`secagg.quantize`): the Skellam accountant needs a bound on how far one patient can move the
*integer* vector, and a deterministic rounding gives one that holds for every outcome. If adding
or removing a patient moves the real sum from a to b with ‖a − b‖₂ ≤ Δ, then per coordinate
|round(γa_i) − round(γb_i)| ≤ |γ(a_i − b_i)| + 1, so by the triangle inequality

    ‖round(γa) − round(γb)‖₂ ≤ γΔ + √d,        ‖round(γa) − round(γb)‖₁ ≤ √d·γΔ + d

(‖a − b‖₁ ≤ √d‖a − b‖₂). Stochastic rounding is unbiased but its sensitivity bound only holds
with high probability, which would add a δ term; here the price is the additive √d, which
`choose_scale` makes small against γΔ.

The range rule ("the bound on the sum's range holds or the round aborts"): each participant's
noisy vector must have every |coordinate| ≤ `coordinate_bound`, so that the sum of up to
`max_participants` of them lies in [−2^31, 2^31) and the centred reading of Z_{2^32} returns it
exactly. A site checks this on its *already-noised* vector and refuses the round otherwise; the
refusal is a function of a differentially private output only, hence post-processing, and costs
no privacy beyond the round's charge (which is made whether or not the round aborts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from federation.releases import MAX_SITES
from secagg.quantize import to_signed

__all__ = ["IntegerEncoding", "RangeExceeded", "choose_scale"]

_MODULUS_HALF = 2**31
_SATURATION = float(2**52)
"""|γ·x| is saturated here before the int64 cast (no overflow, every value exact in float64).
Saturating is a per-coordinate 1-Lipschitz map, so the sensitivity bounds above still hold, and a
saturated coordinate is ~2^21 times any `coordinate_bound`, so `to_uint32` refuses it."""


class RangeExceeded(ValueError):
    """A noisy integer vector has a coordinate outside ±`coordinate_bound`: sending it could make
    the modular sum wrap, so the site refuses the round (a decision on noised data only)."""

    def __init__(self, index: int, value: int, bound: int, max_participants: int) -> None:
        self.index = index
        self.value = value
        self.bound = bound
        self.excess = abs(value) - bound
        super().__init__(
            f"coordinate {index} is {value}, {self.excess} over the bound ±{bound} that keeps a "
            f"sum of {max_participants} participants from wrapping modulo 2^32: round refused"
        )


@dataclass(frozen=True)
class IntegerEncoding:
    """Fixed-point encoding of one release: scale γ, real L2 sensitivity Δ, length d.

    `sensitivity` is the L2 sensitivity of the *real-valued* sum under adding or removing one
    patient (for a sum of gradients clipped to C, Δ = C); `l2_sensitivity` and `l1_sensitivity`
    are the corresponding bounds in integer units that the Skellam accountant uses.
    """

    scale: float
    sensitivity: float
    length: int
    max_participants: int = MAX_SITES

    def __post_init__(self) -> None:
        for name in ("scale", "sensitivity"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        for name in ("length", "max_participants"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.max_participants >= _MODULUS_HALF:
            raise ValueError(f"max_participants {self.max_participants} leaves no range")

    @property
    def l2_sensitivity(self) -> float:
        """γΔ + √d: how far one patient moves the rounded vector in L2 (module docstring)."""
        return self.scale * self.sensitivity + math.sqrt(self.length)

    @property
    def l1_sensitivity(self) -> float:
        """√d·γΔ + d: how far one patient moves the rounded vector in L1."""
        return math.sqrt(self.length) * self.scale * self.sensitivity + self.length

    @property
    def coordinate_bound(self) -> int:
        """Largest |coordinate| one participant may send: `max_participants` × bound < 2^31, so
        any sum of at most that many in-range vectors lies in [−2^31, 2^31) and never wraps."""
        return (_MODULUS_HALF - 1) // self.max_participants

    def encode(self, real_sum: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """round(γ·x), half to even, as int64 (deterministic: see the module docstring).

        Range is *not* checked here: that must depend on the noised vector only (`to_uint32`).
        A non-finite input is refused: clipped gradients are bounded, so it is a bug upstream.
        """
        arr = np.asarray(real_sum)
        if arr.shape != (self.length,):
            raise ValueError(f"expected a vector of shape ({self.length},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"expected real numbers, got dtype {arr.dtype}")
        with np.errstate(over="ignore"):
            values = arr.astype(np.float64) * self.scale
        if not np.all(np.isfinite(values)):
            raise ValueError("the real sum contains NaN or infinity (or overflows once scaled)")
        np.clip(values, -_SATURATION, _SATURATION, out=values)
        rounded: npt.NDArray[np.int64] = np.rint(values).astype(np.int64)
        return rounded

    def to_uint32(self, noisy: npt.ArrayLike) -> npt.NDArray[np.uint32]:
        """Two's complement of an in-range noisy integer vector, for secure aggregation.

        Raises :class:`RangeExceeded` (naming the worst coordinate and how far it is over) when
        any |coordinate| > `coordinate_bound`; the site then refuses the round.
        """
        arr = np.asarray(noisy)
        if arr.shape != (self.length,):
            raise ValueError(f"expected a vector of shape ({self.length},), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"expected an integer vector, got dtype {arr.dtype}")
        # |v| in float64: no overflow at -2^63 or for uint64, exact at the bound (< 2^31)
        magnitude = np.abs(arr.astype(np.float64))
        worst = int(np.argmax(magnitude))
        if magnitude[worst] > self.coordinate_bound:
            raise RangeExceeded(
                worst, int(arr[worst]), self.coordinate_bound, self.max_participants
            )
        out: npt.NDArray[np.uint32] = arr.astype(np.int32).view(np.uint32)
        return out

    def decode_sum(self, total: npt.NDArray[np.uint32]) -> npt.NDArray[np.float64]:
        """The pooled real sum: centred int32 reading of the modular sum, divided by γ.

        Exact for any sum of at most `max_participants` in-range vectors: their integer sum lies
        in [−2^31, 2^31), so reducing it modulo 2^32 and reading it centred returns it unchanged
        (no wrap is possible), and dividing an integer below 2^31 by γ is correctly rounded.
        """
        arr = np.asarray(total)
        if arr.shape != (self.length,):
            raise ValueError(f"expected a vector of shape ({self.length},), got {arr.shape}")
        decoded: npt.NDArray[np.float64] = to_signed(arr).astype(np.float64) / self.scale
        return decoded


def choose_scale(
    sensitivity: float,
    length: int,
    noise_multiplier_floor: float = 0.5,
    rounding_overhead: float = 0.01,
) -> float:
    """The smallest power of two γ that makes the integer encoding cost ≤ `rounding_overhead`.

    Two costs, both relative, both shrinking as γ grows:

    - rounding: the L2 sensitivity grows from γΔ to γΔ + √d, so σ must grow by the factor
      1 + √d/(γΔ); we ask √d/(γΔ) ≤ rounding_overhead.
    - discreteness: Skellam noise of variance V on integer sensitivities Δ₂, Δ₁ is
      (α, ε(α))-RDP with ε(α) ≤ αΔ₂²/(2V) + ((2α−1)Δ₂² + 6Δ₁)/(4V²) (Agarwal, Kairouz & Liu,
      "The Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021, in
      variance form); the first term is the Gaussian one. With V = (σΔ₂)² and Δ₁ = √d·Δ₂, the
      second over the first is ≤ (1 + 3√d/Δ₂) / (σΔ₂)² for every α ≥ 1; we ask that to be ≤
      rounding_overhead for every σ ≥ `noise_multiplier_floor`, the smallest the plan will run.

    The rounding condition is normally the binding one (it needs γΔ ≥ 100√d at 1 %). Whether the
    resulting range fits (sum of clipped gradients plus noise within `coordinate_bound`/γ) is the
    caller's check, since it depends on the batch size and the noise.
    """
    for name, value in (
        ("sensitivity", sensitivity),
        ("noise_multiplier_floor", noise_multiplier_floor),
        ("rounding_overhead", rounding_overhead),
    ):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    root_d = math.sqrt(length)
    # one below the analytic answer, in case log2 rounded up; the loop checks exactly
    exponent = math.ceil(math.log2(root_d / (sensitivity * rounding_overhead))) - 1
    while True:
        scale = math.ldexp(1.0, exponent)
        scaled = scale * sensitivity
        l2 = scaled + root_d
        rounding_ok = root_d <= rounding_overhead * scaled
        discreteness = (1.0 + 3.0 * root_d / l2) / (noise_multiplier_floor * l2) ** 2
        if rounding_ok and discreteness <= rounding_overhead:
            return scale
        exponent += 1
