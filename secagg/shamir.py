"""Shamir t-of-n secret sharing over GF(2^521 − 1), for 32-byte secrets.

The field is far larger than any secret (2^256), so a reconstruction from inconsistent shares
lands outside [0, 2^256) with overwhelming probability and is refused instead of returned.
Lagrange coefficients at 0 depend only on the responder set, so they are cached per set: the
server reconstructs every secret of a session from the same responders.

`reconstruct_verified` is the robust form the server uses: the caller supplies a check that only
the true secret passes (a commitment or a public key), and a corrupted or forged share is routed
around instead of aborting: first the lowest-x t shares (cached coefficients), then Reed–Solomon
decoding of all shares (Gao's algorithm: corrects up to ⌊(m − t)/2⌋ bad shares out of m), then a
search over t-subsets (all of them when there are at most `MAX_SUBSET_TRIALS`, otherwise that many
random ones). Whatever the route, a secret is returned only if it passes the check.
"""

from __future__ import annotations

import functools
import itertools
import math
import random
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence

from secagg.errors import InsufficientShares, InvalidInput

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32
MAX_SUBSET_TRIALS = 2048  # t-subsets tried after decoding failed (exhaustive below this count)

Point = tuple[int, int]
Poly = list[int]  # coefficients, lowest degree first, no trailing zeros (zero polynomial: [])


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares (x → f(x)) of a 32-byte secret; any `threshold` of them reconstruct it."""
    if len(secret) != SECRET_BYTES:
        raise InvalidInput(f"Shamir secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    _check_xs(xs)
    if not 1 <= threshold <= len(xs):
        raise InvalidInput(f"threshold {threshold} must be in [1, {len(xs)}]")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _eval(coefficients, x) for x in xs}


def _check_xs(xs: Iterable[int]) -> None:
    seen: set[int] = set()
    for x in xs:
        if not isinstance(x, int) or not 0 < x < PRIME:
            raise InvalidInput(f"Shamir x-coordinate {x!r} is not a nonzero field element")
        if x in seen:
            raise InvalidInput(f"duplicate Shamir x-coordinate {x}")
        seen.add(x)


def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """λ_i = Π_{j≠i} x_j / (x_j − x_i) mod p, so that f(0) = Σ λ_i f(x_i) (one inversion)."""
    nums, dens = [], []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        nums.append(num)
        dens.append(den)
    return tuple(n * inv % PRIME for n, inv in zip(nums, _batch_inverse(dens), strict=True))


lagrange_at_zero = functools.lru_cache(maxsize=256)(_lagrange_at_zero)
lagrange_at_zero.__doc__ = "`_lagrange_at_zero`, cached per responder set."


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses of nonzero field elements with a single modular inversion (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % PRIME)
    inv = pow(prefix[-1], -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = prefix[i] * inv % PRIME
        inv = inv * values[i] % PRIME
    return out


def _validated(shares: Sequence[Point], threshold: int) -> list[Point]:
    if threshold < 1:
        raise InvalidInput(f"threshold must be >= 1, got {threshold}")
    if len(shares) < threshold:
        raise InsufficientShares(f"{len(shares)} shares given, {threshold} needed to reconstruct")
    _check_xs([x for x, _ in shares])
    for x, y in shares:
        if not isinstance(y, int) or not 0 <= y < PRIME:
            raise InvalidInput(f"share value at x={x} is not a field element")
    return sorted(shares)


def _at_zero(points: Sequence[Point], coefficients: Sequence[int]) -> int:
    return sum(lam * y for lam, (_, y) in zip(coefficients, points, strict=True)) % PRIME


def _as_secret(value: int) -> bytes | None:
    """The field element as a 32-byte secret, or None if it cannot be one."""
    return value.to_bytes(SECRET_BYTES, "big") if value < 1 << (8 * SECRET_BYTES) else None


def reconstruct(shares: Sequence[Point], threshold: int) -> bytes:
    """The secret from ≥ threshold shares (x, y); refuses fewer, duplicates and garbage.

    Uses the `threshold` shares with the smallest x (deterministic, so the coefficient cache hits).
    """
    points = _validated(shares, threshold)[:threshold]
    xs = tuple(x for x, _ in points)
    secret = _as_secret(_at_zero(points, lagrange_at_zero(xs)))
    if secret is None:
        raise InsufficientShares(
            f"shares from x={list(xs)} are inconsistent "
            "(the reconstruction is not a 32-byte secret)"
        )
    return secret


def reconstruct_verified(
    shares: Sequence[Point],
    threshold: int,
    accept: Callable[[bytes], bool],
    what: str = "secret",
    max_trials: int = MAX_SUBSET_TRIALS,
) -> tuple[bytes, frozenset[int]]:
    """The secret that `accept` recognises, despite corrupted or forged shares among ≥ t.

    Returns the secret and the x-coordinates whose shares are not on its polynomial (empty when
    the first t shares were already right: the others are then not examined). Raises
    `InsufficientShares` when no reconstruction passes `accept`: certainly none exists if every
    t-subset was tried (at most `max_trials` of them), otherwise more than ⌊(m − t)/2⌋ of the m
    shares are bad and none of `max_trials` random t-subsets was clean.
    """
    points = _validated(shares, threshold)
    t, m = threshold, len(points)
    first = points[:t]
    secret = _as_secret(_at_zero(first, lagrange_at_zero(tuple(x for x, _ in first))))
    if secret is not None and accept(secret):
        return secret, frozenset()
    if m >= t + 2:  # decoding can correct at least one bad share
        poly = _gao_decode(points, t)
        if poly is not None:
            secret = _as_secret(poly[0] if poly else 0)
            if secret is not None and accept(secret):
                return secret, _off_polynomial(poly, points)
    total = math.comb(m, t)
    trials = min(total, max_trials)
    for subset in _subsets(points, t, total, trials):
        xs = tuple(x for x, _ in subset)
        secret = _as_secret(_at_zero(subset, _lagrange_at_zero(xs)))
        if secret is not None and accept(secret):
            return secret, _off_polynomial(_interpolate(subset), points)
    searched = "every one" if trials == total else f"{trials} random ones"
    raise InsufficientShares(
        f"no {t} of the {m} shares of the {what} reconstruct a value that passes its check "
        f"(decoding corrects up to {(m - t) // 2} bad shares; t-subsets tried: {searched} "
        f"of {total})"
    )


def _subsets(points: list[Point], t: int, total: int, trials: int) -> Iterator[list[Point]]:
    """Every t-subset but the first (already tried) if there are few, else random ones."""
    if trials == total:
        yield from (list(s) for s in itertools.islice(itertools.combinations(points, t), 1, None))
        return
    rng = random.SystemRandom()  # unpredictable: bad shares cannot be placed to dodge the search
    for _ in range(trials):
        yield sorted(rng.sample(points, t))


def _off_polynomial(poly: Poly, points: Sequence[Point]) -> frozenset[int]:
    return frozenset(x for x, y in points if _eval(poly, x) != y)


# ---------------------------------------------------------------------------- polynomials mod p
def _eval(poly: Sequence[int], x: int) -> int:
    y = 0
    for c in reversed(poly):  # Horner
        y = (y * x + c) % PRIME
    return y


def _trim(poly: Poly) -> Poly:
    while poly and poly[-1] == 0:
        poly.pop()
    return poly


def _sub(a: Poly, b: Poly) -> Poly:
    out = [0] * max(len(a), len(b))
    for i, c in enumerate(a):
        out[i] = c
    for i, c in enumerate(b):
        out[i] = (out[i] - c) % PRIME
    return _trim(out)


def _mul(a: Poly, b: Poly) -> Poly:
    if not a or not b:
        return []
    out = [0] * (len(a) + len(b) - 1)
    for i, ca in enumerate(a):
        for j, cb in enumerate(b):
            out[i + j] = (out[i + j] + ca * cb) % PRIME
    return _trim(out)


def _divmod(a: Poly, b: Poly) -> tuple[Poly, Poly]:
    """Quotient and remainder of a / b (b nonzero)."""
    rem = list(a)
    if len(rem) < len(b):
        return [], rem
    inv_lead = pow(b[-1], -1, PRIME)
    quotient = [0] * (len(rem) - len(b) + 1)
    for shift in range(len(quotient) - 1, -1, -1):
        coef = rem[shift + len(b) - 1] * inv_lead % PRIME
        quotient[shift] = coef
        if coef:
            for j, cb in enumerate(b):
                rem[shift + j] = (rem[shift + j] - coef * cb) % PRIME
    return _trim(quotient), _trim(rem[: len(b) - 1])


def _interpolate(points: Sequence[Point]) -> Poly:
    """The polynomial of degree < len(points) through them (O(m²))."""
    vanishing: Poly = [1]
    for x, _ in points:
        vanishing = _mul(vanishing, [(-x) % PRIME, 1])
    bases: list[Poly] = []
    weights: list[int] = []
    for x, _ in points:
        basis, _ = _divmod(vanishing, [(-x) % PRIME, 1])  # Π_{j≠i} (X − x_j)
        bases.append(basis)
        weights.append(_eval(basis, x))
    out = [0] * len(points)
    for (_, y), basis, inv in zip(points, bases, _batch_inverse(weights), strict=True):
        scale = y * inv % PRIME
        for k, c in enumerate(basis):
            out[k] = (out[k] + scale * c) % PRIME
    return _trim(out)


def _gao_decode(points: Sequence[Point], k: int) -> Poly | None:
    """Gao's Reed–Solomon decoder: the polynomial of degree < k that all but at most
    ⌊(m − k)/2⌋ of the m points lie on, or None if there is none."""
    m = len(points)
    g0: Poly = [1]
    for x, _ in points:
        g0 = _mul(g0, [(-x) % PRIME, 1])
    r_prev, r = g0, _interpolate(points)
    v_prev: Poly = []
    v: Poly = [1]
    while 2 * (len(r) - 1) >= m + k:  # partial extended Euclid: stop below degree (m + k)/2
        q, rem = _divmod(r_prev, r)
        r_prev, r = r, rem
        v_prev, v = v, _sub(v_prev, _mul(q, v))
    if not v:
        return None
    f, rem = _divmod(r, v)
    if rem or len(f) > k:
        return None
    if len(_off_polynomial(f, points)) > (m - k) // 2:
        return None
    return f


def encode_share(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise InvalidInput(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise InvalidInput("share value is not a field element")
    return y
