"""Shamir t-of-n: any t shares reconstruct, fewer are refused, bad input is refused."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.errors import InsufficientShares, InvalidInput
from secagg.shamir import (
    PRIME,
    decode_share,
    encode_share,
    lagrange_at_zero,
    reconstruct,
    reconstruct_verified,
    split,
)

pytestmark = pytest.mark.unit


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 30),
    data=st.data(),
    secret=st.binary(min_size=32, max_size=32),
)
def test_any_t_shares_reconstruct(n: int, data: st.DataObject, secret: bytes) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 2**32 - 1), min_size=n, max_size=n, unique=True))
    shares = split(secret, t, xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert reconstruct([(x, shares[x]) for x in subset], t) == secret


def test_fewer_than_t_shares_are_refused() -> None:
    secret = os.urandom(32)
    shares = split(secret, 4, [1, 2, 3, 4, 5])
    with pytest.raises(InsufficientShares, match="3 shares given, 4 needed"):
        reconstruct([(x, shares[x]) for x in (1, 2, 3)], 4)
    # and asking for a lower threshold than was used gives no garbage either
    with pytest.raises(InsufficientShares, match="inconsistent"):
        reconstruct([(x, shares[x]) for x in (1, 2, 3)], 3)


def test_t_minus_one_shares_are_consistent_with_every_secret() -> None:
    """Information-theoretic hiding, checked on a small case: the first t−1 shares of two
    different secrets can be identical (we rebuild a polynomial through them for any secret)."""
    secret = os.urandom(32)
    shares = split(secret, 3, [1, 2, 3])
    other = int.from_bytes(os.urandom(32), "big")
    # interpolate a degree-2 polynomial through (0, other), (1, y1), (2, y2) and check it is valid
    points = [(0, other), (1, shares[1]), (2, shares[2])]
    y3 = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (3 - xj) % PRIME
                den = den * (xi - xj) % PRIME
        y3 = (y3 + yi * num * pow(den, -1, PRIME)) % PRIME
    assert reconstruct([(1, shares[1]), (2, shares[2]), (3, y3)], 3) == other.to_bytes(32, "big")


def test_duplicate_x_is_refused() -> None:
    shares = split(os.urandom(32), 2, [1, 2, 3])
    with pytest.raises(InvalidInput, match="duplicate"):
        reconstruct([(1, shares[1]), (1, shares[1])], 2)
    with pytest.raises(InvalidInput, match="duplicate"):
        split(os.urandom(32), 2, [1, 1, 2])


def test_corrupted_share_is_detected_not_returned() -> None:
    secret = os.urandom(32)
    shares = split(secret, 3, [1, 2, 3, 4])
    # a garbage share (the range check catches it; small deliberate offsets are caught by the
    # protocol's commitments instead, see test_server)
    bad = [(1, shares[1]), (2, random.randrange(PRIME)), (3, shares[3])]
    with pytest.raises(InsufficientShares, match="inconsistent"):
        reconstruct(bad, 3)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InvalidInput, match="32 bytes"):
        split(b"short", 2, [1, 2])
    with pytest.raises(InvalidInput, match="threshold"):
        split(os.urandom(32), 3, [1, 2])
    with pytest.raises(InvalidInput, match="x-coordinate"):
        split(os.urandom(32), 1, [0, 1])
    with pytest.raises(InvalidInput, match="field element"):
        reconstruct([(1, PRIME), (2, 0)], 2)
    with pytest.raises(InvalidInput):
        decode_share(b"\xff" * 66)
    with pytest.raises(InvalidInput):
        decode_share(b"\x00" * 65)


def test_share_encoding_round_trips_and_coefficients_are_cached() -> None:
    y = random.randrange(PRIME)
    assert decode_share(encode_share(y)) == y
    lagrange_at_zero.cache_clear()
    shares = split(os.urandom(32), 2, [4, 9, 11])
    for _ in range(3):
        reconstruct([(4, shares[4]), (9, shares[9])], 2)
    assert lagrange_at_zero.cache_info().hits == 2


def _forged(shares: dict[int, int], bad: set[int], rng: random.Random) -> list[tuple[int, int]]:
    return [
        (x, (y + rng.randrange(1, PRIME)) % PRIME if x in bad else y) for x, y in shares.items()
    ]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), secret=st.binary(min_size=32, max_size=32))
def test_verified_reconstruction_finds_the_secret_iff_t_good_shares_exist(
    data: st.DataObject, secret: bytes
) -> None:
    """Small cases, where every t-subset is searched: abort exactly when fewer than t shares are
    good, otherwise the secret and only bad shares named."""
    m = data.draw(st.integers(1, 9))
    t = data.draw(st.integers(1, m))
    shares = split(secret, t, list(range(1, m + 1)))
    bad = set(data.draw(st.lists(st.integers(1, m), unique=True)))
    forged = _forged(shares, bad, random.Random(data.draw(st.integers(0, 2**32))))
    if m - len(bad) < t:
        with pytest.raises(InsufficientShares, match=f"no {t} of the {m} shares"):
            reconstruct_verified(forged, t, lambda s: s == secret)
        return
    got, named = reconstruct_verified(forged, t, lambda s: s == secret)
    assert got == secret
    assert named <= bad
    if any(x in bad for x in range(1, t + 1)):  # the first t were not enough: all are examined
        assert named == bad


def test_decoding_corrects_up_to_half_the_spare_shares_without_any_search() -> None:
    secret, m, t = os.urandom(32), 40, 12
    shares = split(secret, t, list(range(1, m + 1)))
    rng = random.Random(3)
    bad = set(rng.sample(range(1, m + 1), (m - t) // 2))
    got, named = reconstruct_verified(_forged(shares, bad, rng), t, secret.__eq__, max_trials=0)
    assert (got, named) == (secret, frozenset(bad))
    bad.add(next(x for x in range(1, m + 1) if x not in bad))
    with pytest.raises(InsufficientShares, match="decoding corrects up to 14 bad shares"):
        reconstruct_verified(_forged(shares, bad, rng), t, secret.__eq__, max_trials=0)


def test_the_search_is_bounded_when_there_are_too_many_subsets_to_try_all() -> None:
    # m = 30, t = 20: C(30, 20) = 30045015 subsets. With 11 bad shares no clean one exists, so
    # the search runs to its bound: the first t, one decoding, then max_trials random subsets.
    secret, m, t = os.urandom(32), 30, 20
    shares = split(secret, t, list(range(1, m + 1)))
    forged = _forged(shares, set(range(1, 12)), random.Random(4))
    seen: list[bytes] = []

    def accept(candidate: bytes) -> bool:
        seen.append(candidate)
        return candidate == secret

    with pytest.raises(InsufficientShares, match="tried: 7 random ones of 30045015"):
        reconstruct_verified(forged, t, accept, max_trials=7)
    assert len(seen) <= 1 + 1 + 7


def test_a_check_that_nothing_passes_is_an_abort_not_a_guess() -> None:
    shares = split(os.urandom(32), 2, [1, 2, 3, 4])
    with pytest.raises(InsufficientShares, match="of the seed"):
        reconstruct_verified(list(shares.items()), 2, lambda s: False, what="seed")
