"""Shamir t-of-n secret sharing over GF(2^521 − 1), for 32-byte secrets.

The field is far larger than any secret (2^256), so a reconstruction from inconsistent shares
lands outside [0, 2^256) with overwhelming probability and is refused instead of returned.
Lagrange coefficients at 0 depend only on the responder set, so they are cached per set: the
server reconstructs every secret of a session from the same responders.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable, Sequence

from secagg.errors import InsufficientShares, InvalidInput

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares (x → f(x)) of a 32-byte secret; any `threshold` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise InvalidInput(f"Shamir secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise InvalidInput(f"threshold {threshold} must be in [1, {len(xs)}]")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares: dict[int, int] = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


def _check_xs(xs: Iterable[int]) -> None:
    seen: set[int] = set()
    for x in xs:
        if not isinstance(x, int) or not 0 < x < PRIME:
            raise InvalidInput(f"Shamir x-coordinate {x!r} is not a nonzero field element")
        if x in seen:
            raise InvalidInput(f"duplicate Shamir x-coordinate {x}")
        seen.add(x)


@functools.lru_cache(maxsize=256)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """λ_i = Π_{j≠i} x_j / (x_j − x_i) mod p, so that f(0) = Σ λ_i f(x_i)."""
    coefficients = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        coefficients.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(coefficients)


def reconstruct(shares: Sequence[tuple[int, int]], threshold: int) -> bytes:
    """The secret from ≥ threshold shares (x, y); refuses fewer, duplicates and garbage.

    Uses the `threshold` shares with the smallest x (deterministic, so the coefficient cache hits).
    """
    if threshold < 1:
        raise InvalidInput(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise InsufficientShares(f"{len(shares)} shares given, {threshold} needed to reconstruct")
    _check_xs([x for x, _ in shares])
    for x, y in shares:
        if not isinstance(y, int) or not 0 <= y < PRIME:
            raise InvalidInput(f"share value at x={x} is not a field element")
    chosen = sorted(shares)[:threshold]
    xs = tuple(x for x, _ in chosen)
    secret = sum(lam * y for lam, (_, y) in zip(lagrange_at_zero(xs), chosen, strict=True)) % PRIME
    if secret >= 1 << (8 * SECRET_BYTES):
        raise InsufficientShares(
            f"shares from x={list(xs)} are inconsistent "
            "(the reconstruction is not a 32-byte secret)"
        )
    return secret.to_bytes(SECRET_BYTES, "big")


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise InvalidInput(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise InvalidInput("share value is not a field element")
    return y
