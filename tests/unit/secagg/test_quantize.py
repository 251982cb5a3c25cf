"""Fixed-point encoding: clipping, stochastic rounding, error bounds and wrap-around refusal."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from secagg.errors import InvalidConfig, InvalidInput
from secagg.prg import Csprng
from secagg.quantize import (
    QuantizationConfig,
    clip_and_scale,
    dequantize_sum,
    quantize,
    to_signed,
)

pytestmark = pytest.mark.unit


def test_a_config_whose_sum_could_wrap_is_refused() -> None:
    # 64 × ceil(2 × 2^24) = 2^31 exactly: the largest sum would be read as negative
    with pytest.raises(InvalidConfig, match="could wrap"):
        QuantizationConfig(clip_norm=10.0, coord_bound=2.0, scale=2.0**24, max_participants=64)
    ok = QuantizationConfig(clip_norm=10.0, coord_bound=2.0, scale=2.0**24, max_participants=63)
    assert ok.max_magnitude == 2**25


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_norm": 0.0},
        {"coord_bound": -1.0},
        {"scale": float("nan")},
        {"scale": float("inf")},
        {"max_participants": 0},
    ],
)
def test_invalid_config_fields_are_named(kwargs: dict[str, float]) -> None:
    fields: dict[str, float] = {
        "clip_norm": 1.0,
        "coord_bound": 1.0,
        "scale": 16.0,
        "max_participants": 4,
    }
    fields.update(kwargs)
    with pytest.raises(InvalidConfig, match=next(iter(kwargs))):
        QuantizationConfig(**fields)  # type: ignore[arg-type]


CONFIGS = [
    QuantizationConfig(clip_norm=5.0, coord_bound=1.0, scale=2.0**10, max_participants=64),
    # magnitudes above 2^24 take the float64 path
    QuantizationConfig(clip_norm=1e3, coord_bound=100.0, scale=2.0**18, max_participants=8),
]


@settings(max_examples=60, deadline=None)
@given(
    cfg=st.sampled_from(CONFIGS),
    vecs=st.lists(
        arrays(np.float64, st.integers(1, 50), elements=st.floats(-200, 200, width=64)),
        min_size=1,
        max_size=6,
    ),
)
def test_error_is_bounded_by_one_over_scale_per_participant(
    cfg: QuantizationConfig, vecs: list[np.ndarray]
) -> None:
    d = len(vecs[0])
    vecs = [np.resize(v, d) for v in vecs]
    total = np.zeros(d, dtype=np.uint32)
    exact = np.zeros(d)
    for vec in vecs:
        q = quantize(vec, cfg)
        reference = clip_and_scale(vec, cfg)
        signed = to_signed(q)
        assert np.all((signed == np.floor(reference)) | (signed == np.ceil(reference)))
        total += q
        exact += reference / cfg.scale
    decoded = dequantize_sum(total, cfg)
    assert np.all(np.abs(decoded - exact) <= len(vecs) / cfg.scale + 1e-9)


def test_clipping_bounds_norm_and_coordinates() -> None:
    cfg = QuantizationConfig(clip_norm=1.0, coord_bound=0.5, scale=1.0, max_participants=2)
    scaled = clip_and_scale(np.array([3.0, 4.0]), cfg)
    np.testing.assert_allclose(scaled, [0.5, 0.5])  # L2 clip to (0.6, 0.8), then ±0.5
    small = clip_and_scale(np.array([0.1, -0.2]), cfg)
    np.testing.assert_allclose(small, [0.1, -0.2])


def test_stochastic_rounding_is_unbiased() -> None:
    cfg = QuantizationConfig(clip_norm=1e6, coord_bound=10.0, scale=1.0, max_participants=2)
    d = 200_000
    vec = np.full(d, 0.3)
    vec[d // 2 :] = -2.75
    q = to_signed(quantize(vec, cfg, Csprng(bytes(32))))
    assert set(np.unique(q[: d // 2])) == {0, 1}
    assert set(np.unique(q[d // 2 :])) == {-3, -2}
    # standard error of the mean of Bernoulli(0.3) over 1e5 draws is 0.0015: 5 sigma
    assert abs(q[: d // 2].mean() - 0.3) < 0.0075
    assert abs(q[d // 2 :].mean() + 2.75) < 0.007


def test_integers_encode_exactly_and_negatives_wrap_to_twos_complement() -> None:
    cfg = QuantizationConfig(clip_norm=1e3, coord_bound=100.0, scale=4.0, max_participants=3)
    q = quantize(np.array([-1.0, 0.0, 2.5, -100.0]), cfg)
    assert q.dtype == np.uint32
    assert q.tolist() == [2**32 - 4, 0, 10, 2**32 - 400]


def test_dequantize_depends_only_on_scale() -> None:
    a = QuantizationConfig(clip_norm=1.0, coord_bound=1.0, scale=256.0, max_participants=2)
    b = QuantizationConfig(clip_norm=9.0, coord_bound=3.0, scale=256.0, max_participants=64)
    total = np.array([0, 1, 2**32 - 1, 2**31, 2**31 - 1], dtype=np.uint32)
    np.testing.assert_array_equal(dequantize_sum(total, a), dequantize_sum(total, b))
    np.testing.assert_array_equal(
        dequantize_sum(total, a), np.array([0, 1, -1, -(2**31), 2**31 - 1]) / 256.0
    )


def test_bad_vectors_are_refused() -> None:
    cfg = CONFIGS[0]
    with pytest.raises(InvalidInput, match="NaN"):
        quantize(np.array([1.0, np.nan]), cfg)
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        quantize(np.array([np.inf]), cfg)
    with pytest.raises(InvalidInput, match="1-D"):
        quantize(np.zeros((2, 2)), cfg)
    with pytest.raises(InvalidInput, match="real"):
        quantize(np.array(["a"]), cfg)
    with pytest.raises(InvalidInput, match="uint32"):
        dequantize_sum(np.zeros(3, dtype=np.int64), cfg)


def test_float32_and_integer_inputs_are_accepted() -> None:
    cfg = CONFIGS[0]
    assert quantize(np.ones(3, dtype=np.float32), cfg).tolist() == [1024] * 3
    assert quantize(np.array([1, 0, -1]), cfg).tolist() == [1024, 0, 2**32 - 1024]


def test_float32_norm_is_accurate_and_survives_float32_overflow() -> None:
    cfg = QuantizationConfig(clip_norm=5.0, coord_bound=100.0, scale=1.0, max_participants=2)
    # squares overflow float32 (3e19² > 3.4e38) but the norm is finite: clipped, not refused
    big = np.array([3e19, -4e19], dtype=np.float32)
    np.testing.assert_allclose(clip_and_scale(big, cfg), [3.0, -4.0], rtol=1e-6)
    # chunked float32 dot products agree with the exact float64 norm
    vec = np.random.default_rng(5).normal(0, 1.0, 100_003).astype(np.float32)
    exact = float(np.sqrt(np.sum(vec.astype(np.float64) ** 2)))
    wide = QuantizationConfig(
        clip_norm=exact * (1 - 1e-5), coord_bound=8.0, scale=1.0, max_participants=2
    )
    shrunk = clip_and_scale(vec, wide)
    assert abs(float(np.linalg.norm(shrunk)) - wide.clip_norm) < 1e-5 * exact
    with pytest.raises(InvalidInput, match="NaN or infinity"):
        quantize(np.array([1.0, np.inf], dtype=np.float32), cfg)
