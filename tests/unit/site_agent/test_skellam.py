"""Skellam noise shares: the pooled noise has exactly the law the accountant assumes, each site's
share keeps the target under its trust assumption, and the integer pipeline decodes the sum."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import site_agent.skellam as skellam
from federation.integer_release import IntegerEncoding, choose_scale
from site_agent.skellam import MAX_VARIANCE, secure_generator, share_variance, skellam_noise

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------ reference distribution
def skellam_pmf(variance: float) -> tuple[np.ndarray, np.ndarray]:
    """(support, pmf) of Poisson(V/2) − Poisson(V/2): the convolution of two Poisson pmfs, each
    computed in log space over [0, λ + 15√λ + 30] (the mass beyond is below 1e-40)."""
    lam = variance / 2.0
    top = math.ceil(lam + 15.0 * math.sqrt(lam) + 30.0)
    j = np.arange(top + 1)
    log_p = j * math.log(lam) - lam - np.array([math.lgamma(k + 1.0) for k in j])
    p = np.exp(log_p)
    pmf = np.convolve(p, p[::-1])  # index top + k ↔ X − Y = k
    return np.arange(-top, top + 1), pmf


def chi2_sf(stat: float, df: int) -> float:
    """P(χ²_df ≥ stat) = Q(df/2, stat/2), the regularised upper incomplete gamma function: its
    power series below a + 1, Lentz's continued fraction above (Numerical Recipes §6.2)."""
    a, x = df / 2.0, stat / 2.0
    if x <= 0.0:
        return 1.0
    log_prefactor = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        n = 0
        while abs(term) > abs(total) * 1e-16:
            n += 1
            term *= x / (a + n)
            total += term
        return 1.0 - total * math.exp(log_prefactor)
    tiny = 1e-300
    b = x + 1.0 - a
    c, d = 1.0 / tiny, 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        h *= d * c
        if abs(d * c - 1.0) < 1e-16:
            break
    return math.exp(log_prefactor) * h


def chi_square(samples: np.ndarray, variance: float) -> tuple[float, int, float]:
    """Goodness of fit of integer `samples` to Sk(variance): (statistic, df, p-value).

    One bin per integer whose expected count is ≥ 10, plus one bin for each tail (merged into
    its neighbour when its expected count is < 5)."""
    support, pmf = skellam_pmf(variance)
    expected_all = samples.size * pmf
    keep = np.flatnonzero(expected_all >= 10.0)
    lo, hi = int(support[keep[0]]), int(support[keep[-1]])
    observed = np.bincount(samples[(samples >= lo) & (samples <= hi)] - lo, minlength=hi - lo + 1)
    expected = expected_all[keep[0] : keep[-1] + 1].copy()
    obs = [float(v) for v in observed]
    exp = [float(v) for v in expected]
    low_obs, low_exp = float((samples < lo).sum()), float(expected_all[: keep[0]].sum())
    high_obs, high_exp = float((samples > hi).sum()), float(expected_all[keep[-1] + 1 :].sum())
    if low_exp >= 5.0:
        obs.insert(0, low_obs)
        exp.insert(0, low_exp)
    else:
        obs[0] += low_obs
        exp[0] += low_exp
    if high_exp >= 5.0:
        obs.append(high_obs)
        exp.append(high_exp)
    else:
        obs[-1] += high_obs
        exp[-1] += high_exp
    o, e = np.asarray(obs), np.asarray(exp)
    stat = float(((o - e) ** 2 / e).sum())
    df = o.size - 1
    return stat, df, chi2_sf(stat, df)


def test_reference_pmf_and_chi2_are_right() -> None:
    support, pmf = skellam_pmf(7.0)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-12)
    assert float((support * pmf).sum()) == pytest.approx(0.0, abs=1e-12)
    assert float((support**2 * pmf).sum()) == pytest.approx(7.0, rel=1e-12)
    # Sk(2) at 0 is e^{-2}·I_0(2), I_0(2) = Σ 1/(k!)²
    i0 = sum(1.0 / math.factorial(k) ** 2 for k in range(30))
    support2, pmf2 = skellam_pmf(2.0)
    assert float(pmf2[support2 == 0][0]) == pytest.approx(math.exp(-2.0) * i0, rel=1e-12)
    # even df: Q(k, x) = e^{-x} Σ_{i<k} x^i / i!
    for df, stat in ((2, 3.0), (10, 4.0), (40, 40.0), (100, 160.0), (200, 150.0)):
        x = stat / 2.0
        closed = math.exp(-x) * sum(x**i / math.factorial(i) for i in range(df // 2))
        assert chi2_sf(stat, df) == pytest.approx(closed, rel=1e-10)


def test_chi2_sf_matches_scipy() -> None:
    # scipy is always installed: dp-accounting, a runtime dependency, requires it
    from scipy import stats

    for df in (5, 31, 60, 121, 250):
        for q in (0.9, 0.5, 0.1, 1e-3, 1e-6, 1e-12):
            x = float(stats.chi2.isf(q, df))
            assert chi2_sf(x, df) == pytest.approx(q, rel=1e-8)


# ------------------------------------------------------- the law of the pooled noise (required)
TARGET = 40.0
SAMPLES = 100_000


@pytest.mark.parametrize("sites", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("trust", ["own_noise_only", "all_honest"])
def test_sum_of_shares_is_skellam_with_the_summed_variance(sites: int, trust: str) -> None:
    """n sites each add `share_variance(target, h, H = n)`; the pooled noise must be exactly
    Sk(Σ shares), and the same test must reject Sk(1.2 × Σ shares)."""
    trusted = 1 if trust == "own_noise_only" else sites
    share = share_variance(TARGET, trusted, sites)
    expected_total = sites * TARGET if trusted == 1 else TARGET
    assert sites * share == pytest.approx(expected_total)
    rng = np.random.default_rng(1000 * sites + trusted)
    pooled = np.zeros(SAMPLES, dtype=np.int64)
    for _ in range(sites):
        pooled += skellam_noise(SAMPLES, share, rng)
    total = sites * share
    stat, df, p = chi_square(pooled, total)
    wrong_stat, wrong_df, wrong_p = chi_square(pooled, 1.2 * total)
    figures = (
        f"V={total:g}: χ²={stat:.1f} df={df} p={p:.3g}; "
        f"×1.2: χ²={wrong_stat:.0f} df={wrong_df} p={wrong_p:.2g}"
    )
    assert p > 1e-3, figures
    assert wrong_p < 1e-6, figures


def test_split_draws_have_the_same_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the per-draw limit λ is drawn as a sum of parts: still exactly Poisson(λ)."""
    monkeypatch.setattr(skellam, "_MAX_LAM_PER_DRAW", 3.0)  # λ = 20 → 7 parts of 20/7
    monkeypatch.setattr(skellam, "_CHUNK_ELEMENTS", 3 * SAMPLES)  # several chunks
    pooled = skellam_noise(SAMPLES, 40.0, np.random.default_rng(7))
    stat, df, p = chi_square(pooled, 40.0)
    assert p > 1e-3, (stat, df, p)
    assert chi_square(pooled, 48.0)[2] < 1e-6


def test_huge_variances_are_split_and_keep_their_variance() -> None:
    variance = float(2**40)  # λ = 2^39: 128 draws of 2^32 each
    noise = skellam_noise(20_000, variance, np.random.default_rng(3))
    assert noise.dtype == np.int64
    assert abs(float(noise.mean())) < 5.0 * math.sqrt(variance / noise.size)
    assert float(noise.var()) / variance == pytest.approx(1.0, abs=0.05)
    largest = skellam_noise(4, MAX_VARIANCE, np.random.default_rng(4))  # 2^17 parts
    assert np.all(np.abs(largest) < 8.0 * math.sqrt(MAX_VARIANCE))


@pytest.mark.parametrize("variance", [0.3, 2.0, 11.5, 1e4, 1e9])
def test_moments(variance: float) -> None:
    noise = skellam_noise(200_000, variance, np.random.default_rng(11))
    assert abs(float(noise.mean())) < 5.0 * math.sqrt(variance / noise.size)
    assert float(noise.var()) / variance == pytest.approx(1.0, abs=0.02)


def test_zero_variance_and_empty() -> None:
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert skellam_noise(5, 0.0, rng).tolist() == [0] * 5
    assert rng.bit_generator.state == before  # no draws
    out = skellam_noise(0, 3.0, rng)
    assert out.dtype == np.int64 and out.shape == (0,)


@pytest.mark.parametrize(
    "size, variance",
    [(-1, 1.0), (2.0, 1.0), (True, 1.0), (3, -1.0), (3, math.nan), (3, math.inf), (3, "1")],
)
def test_bad_noise_arguments_are_refused(size: object, variance: object) -> None:
    with pytest.raises(ValueError):
        skellam_noise(size, variance, np.random.default_rng(0))  # type: ignore[arg-type]


def test_too_large_variance_and_wrong_rng_are_refused() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        skellam_noise(3, 2.0 * MAX_VARIANCE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="Generator"):
        skellam_noise(3, 1.0, np.random.RandomState(0))  # type: ignore[arg-type]


def test_secure_generator_is_fresh_philox() -> None:
    a, b = secure_generator(), secure_generator()
    assert isinstance(a.bit_generator, np.random.Philox)
    assert a.integers(0, 2**63, 4).tolist() != b.integers(0, 2**63, 4).tolist()
    assert skellam_noise(10, 5.0, a).dtype == np.int64


# ---------------------------------------------------------------------------- share_variance
def test_share_variance_extremes() -> None:
    assert share_variance(60.0, 1, 4) == 60.0  # trusts only itself: the full target
    assert share_variance(60.0, 4, 4) == 15.0  # trusts all H shares: target / H
    assert share_variance(60.0, 9, 4) == 15.0  # never below the plan's floor
    assert share_variance(60.0, 2, 4) == 45.0
    assert share_variance(0.0, 1, 3) == 0.0
    assert share_variance(60.0, 1, 1) == 60.0


@settings(max_examples=500, deadline=None)
@given(
    target=st.floats(0.0, 1e9),
    shares=st.integers(1, 64),
    trusted=st.integers(1, 70),
    others=st.lists(st.floats(0.0, 1e9), max_size=70),
    data=st.data(),
)
def test_share_variance_guarantee(
    target: float, shares: int, trusted: int, others: list[float], data: st.DataObject
) -> None:
    """If ≥ h participants (this one included) are honest, the pooled variance is ≥ target, for
    whatever dishonest participants add (≥ 0) and whatever h the other honest ones assume."""
    mine = share_variance(target, trusted, shares)
    floor = target / shares
    assert mine >= floor
    honest_others = [
        share_variance(target, data.draw(st.integers(1, 70)), shares) for _ in range(trusted - 1)
    ]
    assert all(v >= floor for v in honest_others)
    pooled = mine + sum(honest_others) + sum(others)
    assert pooled >= target * (1 - 1e-12)


@pytest.mark.parametrize(
    "args",
    [(-1.0, 1, 1), (math.inf, 1, 1), (1.0, 0, 1), (1.0, 1, 0), (1.0, 1.0, 2), (1.0, 1, True)],
)
def test_bad_share_arguments_are_refused(args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        share_variance(*args)  # type: ignore[arg-type]


# ----------------------------------------------------------------- the whole integer pipeline
@pytest.mark.parametrize("trusted", [1, 4])
def test_encode_noise_wrap_sum_decode_recovers_the_real_sum(trusted: int) -> None:
    sites, d, clip, sigma = 4, 300, 1.0, 1.0
    rng = np.random.default_rng(5)
    enc = IntegerEncoding(choose_scale(clip, d), clip, d)
    target = (sigma * enc.l2_sensitivity) ** 2
    share = share_variance(target, trusted, sites)
    real = [rng.normal(0.0, 3.0, d) for _ in range(sites)]  # e.g. sums of clipped gradients
    sent: list[np.ndarray] = []
    total = np.zeros(d, dtype=np.uint32)
    for site_sum in real:
        noisy = enc.encode(site_sum) + skellam_noise(d, share, rng)
        sent.append(noisy)
        total += enc.to_uint32(noisy)  # modulo 2^32
    decoded = enc.decode_sum(total)
    np.testing.assert_array_equal(decoded * enc.scale, np.sum(sent, axis=0))  # exact
    noise_std = math.sqrt(sites * share) / enc.scale
    error = decoded - np.sum(real, axis=0)
    assert np.max(np.abs(error)) < 6.0 * noise_std + sites * 0.5 / enc.scale
    assert float(np.std(error)) == pytest.approx(noise_std, rel=0.15)  # it is the noise
