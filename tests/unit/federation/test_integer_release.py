"""Integer encoding of the distributed DP-SGD release: sensitivity bounds that hold for every
input, a range rule that refuses rather than wraps, and an exact modular decode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.integer_release import IntegerEncoding, RangeExceeded, choose_scale
from federation.releases import MAX_SITES

pytestmark = pytest.mark.unit


def test_sensitivities_and_bound() -> None:
    enc = IntegerEncoding(scale=256.0, sensitivity=1.5, length=100)
    assert enc.max_participants == MAX_SITES
    assert enc.l2_sensitivity == 256.0 * 1.5 + 10.0
    assert enc.l1_sensitivity == 10.0 * 256.0 * 1.5 + 100.0
    bound = enc.coordinate_bound
    assert MAX_SITES * bound < 2**31 <= MAX_SITES * (bound + 1)
    assert IntegerEncoding(1.0, 1.0, 1, max_participants=1).coordinate_bound == 2**31 - 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": 0.0},
        {"scale": math.inf},
        {"scale": -1.0},
        {"sensitivity": 0.0},
        {"sensitivity": math.nan},
        {"length": 0},
        {"length": 2.0},
        {"max_participants": 0},
        {"max_participants": True},
        {"max_participants": 2**31},
    ],
)
def test_bad_configuration_is_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"scale": 8.0, "sensitivity": 1.0, "length": 3, **kwargs}
    with pytest.raises(ValueError):
        IntegerEncoding(**args)  # type: ignore[arg-type]


def test_encode_rounds_half_to_even_deterministically() -> None:
    enc = IntegerEncoding(scale=1.0, sensitivity=1.0, length=8)
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.51])
    expected = [0, 2, 2, 0, -2, -2, 0, -1]
    out = enc.encode(x)
    assert out.dtype == np.int64
    assert out.tolist() == expected
    assert enc.encode(x).tolist() == expected  # no randomness
    assert IntegerEncoding(4.0, 1.0, 2).encode(np.array([0.125, -0.375])).tolist() == [0, -2]


def test_encode_refuses_bad_input() -> None:
    enc = IntegerEncoding(scale=8.0, sensitivity=1.0, length=3)
    with pytest.raises(ValueError, match="shape"):
        enc.encode(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        enc.encode(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        enc.encode(np.array([0.0, 1e308, 1.0]))  # overflows once scaled
    with pytest.raises(ValueError, match="real"):
        enc.encode(np.array(["a", "b", "c"]))


def test_huge_values_saturate_and_are_then_refused() -> None:
    enc = IntegerEncoding(scale=8.0, sensitivity=1.0, length=2)
    out = enc.encode(np.array([1e300, -1e300]))
    assert out.tolist() == [2**52, -(2**52)]
    with pytest.raises(RangeExceeded):
        enc.to_uint32(out)


@settings(max_examples=300, deadline=None)
@given(
    d=st.integers(1, 40),
    scale_bits=st.integers(-2, 12),
    sensitivity=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**32 - 1),
    half_integers=st.booleans(),
)
def test_one_patient_moves_the_rounded_sum_within_the_integer_sensitivities(
    d: int, scale_bits: int, sensitivity: float, seed: int, half_integers: bool
) -> None:
    enc = IntegerEncoding(scale=2.0**scale_bits, sensitivity=sensitivity, length=d)
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 50.0, d)
    if half_integers:  # worst case for rounding: both ends sit on ties
        a = (np.floor(a * enc.scale) + 0.5) / enc.scale
    step = rng.normal(size=d)
    step *= sensitivity * rng.uniform(0.0, 1.0) ** (1.0 / d) / np.linalg.norm(step)
    if half_integers:
        step = np.round(step * enc.scale) / enc.scale
        norm = float(np.linalg.norm(step))
        if norm > sensitivity:
            step *= sensitivity / norm
    moved = enc.encode(a + step) - enc.encode(a)
    assert float(np.linalg.norm(moved)) <= enc.l2_sensitivity + 1e-9
    assert float(np.abs(moved).sum()) <= enc.l1_sensitivity + 1e-9


def test_to_uint32_is_twos_complement_inside_the_bound() -> None:
    enc = IntegerEncoding(scale=8.0, sensitivity=1.0, length=5)
    b = enc.coordinate_bound
    out = enc.to_uint32(np.array([0, 1, -1, b, -b]))
    assert out.dtype == np.uint32
    assert out.tolist() == [0, 1, 2**32 - 1, b, 2**32 - b]
    assert enc.to_uint32(np.array([0, 1, -1, b, -b], dtype=np.int32)).tolist() == out.tolist()


@pytest.mark.parametrize("offender", [1, 7, 10**12])
@pytest.mark.parametrize("sign", [1, -1])
def test_out_of_range_coordinate_refuses_the_round(offender: int, sign: int) -> None:
    enc = IntegerEncoding(scale=8.0, sensitivity=1.0, length=4)
    b = enc.coordinate_bound
    noisy = np.array([3, -b, sign * (b + offender), b - 1], dtype=np.int64)
    with pytest.raises(RangeExceeded) as caught:
        enc.to_uint32(noisy)
    err = caught.value
    assert (err.index, err.value, err.bound, err.excess) == (2, sign * (b + offender), b, offender)
    assert f"{offender} over the bound ±{b}" in str(err)
    assert isinstance(err, ValueError)


def test_to_uint32_refuses_non_integers_and_wrong_shapes() -> None:
    enc = IntegerEncoding(scale=8.0, sensitivity=1.0, length=2)
    with pytest.raises(ValueError, match="integer"):
        enc.to_uint32(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="shape"):
        enc.to_uint32(np.array([1, 2, 3]))
    with pytest.raises(RangeExceeded):  # a uint64 that would wrap to a small int64 if cast
        enc.to_uint32(np.array([2**64 - 1, 0], dtype=np.uint64))
    with pytest.raises(RangeExceeded):
        enc.to_uint32(np.array([np.iinfo(np.int64).min, 0], dtype=np.int64))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_modular_sum_of_in_range_contributions_decodes_exactly(data: st.DataObject) -> None:
    max_participants = data.draw(st.sampled_from([1, 2, 3, 7, MAX_SITES]), label="max")
    d = data.draw(st.integers(1, 6), label="d")
    scale = data.draw(st.sampled_from([1.0, 8.0, 2.0**12, 3.0]), label="scale")
    enc = IntegerEncoding(scale, 1.0, d, max_participants=max_participants)
    b = enc.coordinate_bound
    sites = data.draw(st.integers(1, max_participants), label="sites")
    value = st.one_of(st.integers(-b, b), st.sampled_from([-b, b, 0]))
    rows = data.draw(
        st.lists(st.lists(value, min_size=d, max_size=d), min_size=sites, max_size=sites),
        label="rows",
    )
    contributions = np.array(rows, dtype=np.int64)
    encoded = np.stack([enc.to_uint32(row) for row in contributions])
    total = np.zeros(d, dtype=np.uint32)
    for row in encoded:
        total += row  # uint32 arithmetic: reduction modulo 2^32
    exact = contributions.sum(axis=0)  # int64: the true integer sum
    np.testing.assert_array_equal(enc.decode_sum(total), exact.astype(np.float64) / scale)


@pytest.mark.parametrize("sign", [1, -1])
def test_worst_case_sum_of_max_participants_does_not_wrap(sign: int) -> None:
    enc = IntegerEncoding(scale=16.0, sensitivity=1.0, length=3)
    b = enc.coordinate_bound
    row = enc.to_uint32(np.full(3, sign * b, dtype=np.int64))
    total = np.stack([row] * MAX_SITES).sum(axis=0, dtype=np.uint32)
    assert enc.decode_sum(total).tolist() == [sign * MAX_SITES * b / 16.0] * 3


def test_decode_sum_refuses_wrong_input() -> None:
    enc = IntegerEncoding(scale=16.0, sensitivity=1.0, length=3)
    with pytest.raises(ValueError):
        enc.decode_sum(np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        enc.decode_sum(np.zeros(4, dtype=np.uint32))


@pytest.mark.parametrize("sensitivity", [0.1, 1.0, 3.7, 100.0])
@pytest.mark.parametrize("length", [1, 10, 1076, 100_000])
@pytest.mark.parametrize("overhead", [0.1, 0.01, 0.001])
def test_choose_scale_is_the_smallest_power_of_two_within_the_overhead(
    sensitivity: float, length: int, overhead: float
) -> None:
    scale = choose_scale(sensitivity, length, rounding_overhead=overhead)
    exponent = math.log2(scale)
    assert exponent == int(exponent)
    root_d = math.sqrt(length)
    assert root_d / (scale * sensitivity) <= overhead
    assert root_d / (scale / 2 * sensitivity) > overhead  # the rounding rule is the binding one
    enc = IntegerEncoding(scale, sensitivity, length)
    # σ inflation from rounding, as the accountant sees it
    assert enc.l2_sensitivity / (scale * sensitivity) <= 1.0 + overhead


def test_choose_scale_respects_the_discreteness_term_at_a_small_noise_floor() -> None:
    sensitivity, length, overhead = 1.0, 1, 0.1
    plain = choose_scale(sensitivity, length, rounding_overhead=overhead)
    floor = 0.01
    scale = choose_scale(sensitivity, length, noise_multiplier_floor=floor, rounding_overhead=0.1)
    assert scale > plain
    l2 = IntegerEncoding(scale, sensitivity, length).l2_sensitivity
    assert (1 + 3 / l2) / (floor * l2) ** 2 <= overhead
    l2_half = IntegerEncoding(scale / 2, sensitivity, length).l2_sensitivity
    assert (1 + 3 / l2_half) / (floor * l2_half) ** 2 > overhead


@pytest.mark.parametrize(
    "args",
    [(0.0, 10), (1.0, 0), (math.inf, 10), (1.0, 10, 0.0), (1.0, 10, 0.5, 0.0), (1.0, 10, 0.5, -1)],
)
def test_choose_scale_refuses_bad_arguments(args: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        choose_scale(*args)  # type: ignore[arg-type]
