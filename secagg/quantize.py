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
from secagg.prg import CHUNK_WORDS, Csprng

__all__ = [
    "Csprng",
    "QuantizationConfig",
    "clip_and_scale",
    "dequantize_sum",
    "quantize",
    "to_signed",
]

_FLOAT32_EXACT = 2**24  # below this every integer and every x - floor(x) is exact in float32


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


_NORM_CHUNK = 8192  # np.dot stays single-threaded up to 10^4 elements (OpenBLAS's threshold)


def _norm(arr: npt.NDArray[np.floating]) -> float:
    """‖arr‖₂. float32 input: a float32 dot product per 8192-element chunk (relative error
    ~1e-7), summed in float64: several times faster than converting every element to float64.
    Short chunks keep BLAS on this thread: its thread pool, woken for one long vector, is erratic
    (up to 100x slower) on a loaded machine. If that overflows, or for float64 input, the norm is
    computed exactly in float64 (einsum, no BLAS)."""
    if arr.dtype == np.float32:
        total = 0.0
        with np.errstate(over="ignore", invalid="ignore"):
            for lo in range(0, arr.shape[0], _NORM_CHUNK):
                chunk = arr[lo : lo + _NORM_CHUNK]
                total += float(np.dot(chunk, chunk))
        if math.isfinite(total):
            return math.sqrt(total)
    return math.sqrt(float(np.einsum("i,i->", arr, arr, dtype=np.float64)))


def _factor(arr: npt.NDArray[np.floating], cfg: QuantizationConfig) -> float:
    """scale × min(1, clip_norm / ‖arr‖₂), refusing NaN and infinity."""
    norm = _norm(arr)
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
    """Clip, scale, stochastically round with CSPRNG uniforms, and store as uint32.

    Works in cache-sized chunks with reused scratch buffers (no d-sized temporaries). When every
    scaled value is below 2^24 the arithmetic is float32 (floor and fractional part are exact
    there); otherwise float64. Uniforms are built from CSPRNG bits as 1 + u in [1, 2) and compared
    with 1 + frac, so the round-up probability equals frac to within 2^-23 (float32) or 2^-32.
    """
    arr = _check_vector(vec)
    factor = _factor(arr, cfg)
    rng = rng if rng is not None else Csprng()
    bound = cfg.coord_bound * cfg.scale
    d = arr.shape[0]
    out = np.empty(d, dtype=np.int32)
    if cfg.max_magnitude < _FLOAT32_EXACT:
        _round_chunks(arr, factor, bound, rng, out, np.float32)
    else:
        _round_chunks(arr, factor, bound, rng, out, np.float64)
    result: npt.NDArray[np.uint32] = out.view(np.uint32)
    return result


def _round_chunks(
    arr: npt.NDArray[np.floating],
    factor: float,
    bound: float,
    rng: Csprng,
    out: npt.NDArray[np.int32],
    dtype: type[np.float32] | type[np.float64],
) -> None:
    size = CHUNK_WORDS
    x_buf = np.empty(size, dtype=dtype)
    low_buf = np.empty(size, dtype=dtype)
    up_buf = np.empty(size, dtype=np.int32)
    wide = dtype is np.float64
    bits64 = np.empty(size if wide else 0, dtype=np.uint64)
    for lo in range(0, arr.shape[0], size):
        m = min(size, arr.shape[0] - lo)
        x, low, up = x_buf[:m], low_buf[:m], up_buf[:m]
        np.multiply(arr[lo : lo + m], factor, out=x, casting="same_kind")
        np.clip(x, -bound, bound, out=x)
        np.floor(x, out=low)
        np.subtract(x, low, out=x)  # fractional part in [0, 1), exact
        x += 1.0
        bits = rng.chunk(m)
        if wide:
            b = bits64[:m]
            np.copyto(b, bits)
            b <<= np.uint64(20)
            b |= np.uint64(0x3FF0000000000000)
            uniform = b.view(np.float64)  # 1 + u, u = 32 random bits
        else:
            bits >>= 9
            bits |= np.uint32(0x3F800000)
            uniform = bits.view(np.float32)  # 1 + u, u = 23 random bits
        np.less(uniform, x, out=up)  # 1 where rounding up
        target = out[lo : lo + m]
        np.copyto(target, low, casting="unsafe")  # exact: an integer below 2^31
        target += up


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
