"""Integer Skellam noise shares for distributed DP-SGD (numpy only).

A site adds Skellam noise Sk(V) = Poisson(V/2) − Poisson(V/2) (mean 0, variance V) to its
integer-encoded gradient sum before secure aggregation. Sums of independent Skellams are Skellam
with the variances added, so the coordinator's pooled sum carries Sk(Σ V_i): the distribution the
Skellam accountant analyses, provided enough participants really added their share
(`share_variance`).
"""

from __future__ import annotations

import math
import secrets

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_VARIANCE", "secure_generator", "share_variance", "skellam_noise"]

MAX_VARIANCE = float(2**50)
"""Largest share variance accepted: std 2^25 ≈ 3.4·10^7, the whole per-participant range of an
encoding for 64 sites (`federation.integer_release.IntegerEncoding.coordinate_bound`). A larger
share could never pass the range check, and would need ~10^5 Poisson draws per coordinate."""

_MAX_LAM_PER_DRAW = float(2**32)
"""Largest Poisson mean drawn in one numpy call. numpy refuses λ above ~9.2·10^18, and well below
that its PTRS sampler loses precision: its acceptance test compares −λ + k·log λ − log k! in
float64, whose cancellation error is ~λ·log λ·2^-53 (≈10^-5 at 2^32, ≈40 near the limit). A
larger λ is drawn as the sum of m = ⌈λ / 2^32⌉ independent Poisson(λ/m) draws, which is exactly
Poisson(λ) (Poisson laws are closed under independent sums)."""

_CHUNK_ELEMENTS = 1 << 20  # Poisson draws held at once when summing parts (8 MiB of int64)


def skellam_noise(size: int, variance: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """`size` independent Sk(variance) integers: Poisson(variance/2) − Poisson(variance/2).

    Variance 0 gives zeros (no draws). The draws come from `rng`: pass `secure_generator()` in
    production; a seeded generator only in tests.
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"size must be an integer >= 0, got {size!r}")
    if isinstance(variance, bool) or not isinstance(variance, int | float | np.floating):
        raise ValueError(f"variance must be a number, got {variance!r}")
    if not math.isfinite(variance) or variance < 0:
        raise ValueError(f"variance must be finite and >= 0, got {variance!r}")
    if variance > MAX_VARIANCE:
        raise ValueError(
            f"variance {variance:.3g} exceeds {MAX_VARIANCE:.3g}: noise that large cannot fit "
            "the 32-bit range of secure aggregation"
        )
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    size = int(size)
    if variance == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    lam = float(variance) / 2.0
    noise = _poisson(lam, size, rng)
    noise -= _poisson(lam, size, rng)
    return noise


def _poisson(lam: float, size: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Poisson(lam) draws, split into parts of mean ≤ _MAX_LAM_PER_DRAW (see there)."""
    if lam <= _MAX_LAM_PER_DRAW:
        return rng.poisson(lam, size).astype(np.int64)
    parts = math.ceil(lam / _MAX_LAM_PER_DRAW)
    part_lam = lam / parts
    total = np.zeros(size, dtype=np.int64)
    rows = max(1, _CHUNK_ELEMENTS // size)
    for start in range(0, parts, rows):
        count = min(rows, parts - start)
        total += rng.poisson(part_lam, (count, size)).sum(axis=0, dtype=np.int64)
    return total


def secure_generator() -> np.random.Generator:
    """A fresh numpy Generator over Philox4x64-10, seeded with 256 bits from the OS CSPRNG.

    What it is: a PRNG with an unguessable seed (256 bits from `secrets`, i.e. the OS entropy
    source, hashed by numpy's SeedSequence into Philox's 128-bit key), statistically excellent
    (passes BigCrush), and with no known practical key recovery from its output. Philox rather
    than numpy's default PCG64 because PCG64's state has been recovered from its raw output in
    practice (Bouillaguet et al., 2020).

    What it is not: a cryptographically secure generator. Philox is a reduced-round, cipher-like
    counter mode without a security proof, and the DP guarantee is stated for ideal randomness.
    This is acceptable because a noise share never leaves the site on its own: it is masked by
    secure aggregation and released only summed with the data and every other site's share. A
    threat model in which raw noise draws are observed needs a real CSPRNG stream
    (`secagg.prg.Csprng`, AES-CTR) feeding an exact sampler instead.
    """
    seed = np.random.SeedSequence(secrets.randbits(256))
    return np.random.Generator(np.random.Philox(seed))


def share_variance(target_variance: float, trusted_sites: int, noise_shares: int) -> float:
    """The Skellam variance this site adds so that the pooled noise reaches the target.

    The plan fixes `noise_shares` H: every honest participant adds at least target/H. This site
    trusts that at least h = `trusted_sites` participants, itself included, are honest, and adds

        s = max(target/H, target − (h − 1)·target/H).

    Guarantee: whenever at least h participants (this one among them) are honest, the variance
    of the pooled noise is ≥ s + (h − 1)·target/H ≥ target, whatever the others add (independent
    Skellams only add variance). h = 1 gives the full target (the site relies on its own noise
    alone); h ≥ H gives target/H (it relies on H honest shares). It never adds less than
    target/H, so it is itself an honest participant for every other site's assumption.
    """
    if isinstance(target_variance, bool) or not isinstance(target_variance, int | float):
        raise ValueError(f"target_variance must be a number, got {target_variance!r}")
    if not math.isfinite(target_variance) or target_variance < 0:
        raise ValueError(f"target_variance must be finite and >= 0, got {target_variance!r}")
    for name, value in (("trusted_sites", trusted_sites), ("noise_shares", noise_shares)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    floor = target_variance / noise_shares
    return max(floor, target_variance - (trusted_sites - 1) * floor)
