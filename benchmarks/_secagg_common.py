"""What one secure-aggregation session reports to ``secagg_bench.py``, for either implementation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["MEAN_TOLERANCE", "RunTimes", "mean_error"]

# Updates are ~N(0, 0.01²); both quantisers step ≤ 1e-5, so a correct sum decodes to within this of
# the float mean of the survivors, and a sum with one mask left in it misses by orders of magnitude.
MEAN_TOLERANCE = 1e-3


@dataclass
class RunTimes:
    """Timings (seconds) and sizes of one session; lists hold one entry per surviving client."""

    client_mask_s: list[float] = field(default_factory=list)
    client_quantize_s: list[float] = field(default_factory=list)  # the quantise part of the above
    server_unmask_s: float = float("nan")
    upload_bytes: list[int] = field(default_factory=list)
    max_abs_error: float = float("nan")  # decoded mean vs. the float mean of the survivors


def mean_error(
    decoded_mean: np.ndarray, updates: dict[int, np.ndarray], dropped: set[int]
) -> float:
    """Largest coordinate error of a decoded mean against the survivors' exact float mean."""
    survivors = np.stack([u for nid, u in updates.items() if nid not in dropped])
    expected = survivors.astype(np.float64).mean(axis=0)
    return float(np.max(np.abs(decoded_mean.astype(np.float64).reshape(-1) - expected)))
