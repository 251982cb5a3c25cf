"""Fixed-point encoding of real vectors into Z_{2^32} so that sums of them can be masked.

Encoding: L2-clip to `clip_norm`, clip each coordinate to ±`coord_bound`, multiply by `scale`,
round *stochastically* (up with probability equal to the fractional part, uniforms from a CSPRNG,
so the encoding is unbiased), store as two's complement uint32. A sum of at most
`max_participants` encodings decodes exactly by reading it as int32 and dividing by `scale`;
`QuantizationConfig` refuses any configuration whose worst-case sum could wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from secagg.errors import InvalidConfig, InvalidInput
from secagg.prg import Csprng

__all__ = [
    "Csprng",
    "QuantizationConfig",
    "clip_and_scale",
    "dequantize_sum",
    "quantize",
    "to_signed",
]

_FLOAT32_EXACT = 2**24  # below this every integer and every x - floor(x) is exact in float32
_TWO_POW_M24 = np.float32(2.0**-24)


@dataclass(frozen=True)
class QuantizationConfig:
    """Clipping, fixed-point scale and the largest number of encodings that will be summed."""

    clip_norm: float
    coord_bound: float
    scale: float
    max_participants: int

    def __post_init__(self) -> None:
        for name in ("clip_norm", "coord_bound", "scale"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise InvalidConfig(
                    f"quantisation {name} must be a finite number > 0, got {value!r}"
                )
        if not isinstance(self.max_participants, int) or self.max_participants < 1:
            raise InvalidConfig(
                "quantisation max_participants must be an integer >= 1, "
                f"got {self.max_participants!r}"
            )
        worst = self.max_participants * self.max_magnitude
        if worst >= 2**31:
            raise InvalidConfig(
                f"quantisation could wrap: {self.max_participants} participants × "
                f"ceil(coord_bound {self.coord_bound} × scale {self.scale}) = {worst} ≥ 2^31; "
                "lower the scale or the coordinate bound"
            )

    @property
    def max_magnitude(self) -> int:
        """Largest |encoded coordinate| one participant can produce."""
        return math.ceil(self.coord_bound * self.scale)


def _check_vector(vec: npt.ArrayLike) -> npt.NDArray[np.floating]:
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise InvalidInput(f"quantise expects a 1-D vector, got shape {arr.shape}")
    if arr.dtype not in (np.float32, np.float64):
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise InvalidInput(f"quantise expects real numbers, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
    return arr


def _factor(arr: npt.NDArray[np.floating], cfg: QuantizationConfig) -> float:
    """scale × min(1, clip_norm / ‖arr‖₂), refusing NaN and infinity."""
    norm = math.sqrt(float(np.dot(arr, arr))) if arr.size else 0.0
    if not math.isfinite(norm):
        raise InvalidInput("quantise: the vector contains NaN or infinity")
    shrink = 1.0 if norm <= cfg.clip_norm else cfg.clip_norm / norm
    return cfg.scale * shrink


def clip_and_scale(vec: npt.ArrayLike, cfg: QuantizationConfig) -> npt.NDArray[np.float64]:
    """The real value that `quantize` rounds, in float64: clip(vec) × scale.

    Every quantised coordinate is floor or ceil of this (tests use it as the reference).
    """
    arr = _check_vector(vec).astype(np.float64)
    bound = cfg.coord_bound * cfg.scale
    return np.clip(arr * _factor(arr, cfg), -bound, bound)


def quantize(
    vec: npt.ArrayLike, cfg: QuantizationConfig, rng: Csprng | None = None
) -> npt.NDArray[np.uint32]:
    """Clip, scale, stochastically round with CSPRNG uniforms, and store as uint32."""
    arr = _check_vector(vec)
    factor = _factor(arr, cfg)
    rng = rng if rng is not None else Csprng()
    bound = cfg.coord_bound * cfg.scale
    dtype = np.float32 if cfg.max_magnitude < _FLOAT32_EXACT else np.float64
    x = np.multiply(arr, factor, dtype=dtype)
    np.clip(x, -bound, bound, out=x)
    low = np.floor(x)
    x -= low  # fractional part in [0, 1), exact
    bits = rng.words(arr.shape[0])
    if dtype is np.float32:
        bits >>= 8  # 24-bit uniforms, exact in float32
        uniform = bits.astype(np.float32)
        uniform *= _TWO_POW_M24
    else:
        uniform = bits.astype(np.float64)
        uniform *= 2.0**-32
    low += np.less(uniform, x, out=np.empty(x.shape, dtype=np.bool_))
    out: npt.NDArray[np.uint32] = low.astype(np.int32).view(np.uint32)
    return out


def to_signed(total: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
    """Centred reading of Z_{2^32}: values ≥ 2^31 are negative."""
    arr = np.asarray(total)
    if arr.dtype != np.uint32:
        raise InvalidInput(f"expected a uint32 array, got dtype {arr.dtype}")
    return arr.view(np.int32).astype(np.int64)


def dequantize_sum(
    total: npt.NDArray[np.uint32], cfg: QuantizationConfig
) -> npt.NDArray[np.float64]:
    """Decode a sum of encodings: centred int32 reading divided by the scale.

    Depends only on `cfg.scale`, not on how many encodings were summed.
    """
    arr = np.asarray(total)
    if arr.dtype != np.uint32 or arr.ndim != 1:
        raise InvalidInput(f"expected a 1-D uint32 array, got {arr.dtype} of shape {arr.shape}")
    out = arr.view(np.int32).astype(np.float64)
    out /= cfg.scale
    return out
