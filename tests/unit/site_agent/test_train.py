"""The DP-SGD trainer: privacy truth across a restart, tight calibration, real clipping, deltas."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

import site_agent.opacus_adapters as adapters
from site_agent.accounting import RDP_ORDERS, Entry, PrivacyAccountant, epsilon_of
from site_agent.train import LocalTrainer, TrainerConfig, TrainingError
from survival.loss import nll_per_patient
from survival.models import ModelSpec, build_model, flat_parameters, load_flat_parameters

pytestmark = pytest.mark.unit

N, P, K = 240, 5, 6
SPEC = ModelSpec(kind="mlp", hidden=[16, 16], dropout=0.0)


def config(**overrides: Any) -> TrainerConfig:
    base: dict[str, Any] = {
        "rounds": 4,
        "local_epochs": 2,
        "batch_size": 40,
        "learning_rate": 0.01,
        "optimizer": "adam",
        "max_grad_norm": 1.0,
        "target_epsilon": 3.0,
        "target_delta": 1e-5,
    }
    base.update(overrides)
    return TrainerConfig(**base)


@pytest.fixture()
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, P)).astype(np.float32)
    interval = rng.integers(0, K, size=N).astype(np.int64)
    event = rng.integers(0, 2, size=N).astype(np.float32)
    return x, interval, event


def initial_params(seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    return flat_parameters(build_model(SPEC, P, K))


def google_rdp_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """Google's dp_accounting RDP accountant, same orders as Opacus, from a logged history."""
    acc = RdpAccountant(orders=list(RDP_ORDERS))
    for sigma, q, steps in history:
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        acc.compose(dp_event.SelfComposedDpEvent(event, steps))
    return float(acc.get_epsilon(delta))


def test_reported_epsilon_matches_google_across_a_restart(data: Any) -> None:
    cfg = config()
    stats_sigma = 8.0
    accountant = PrivacyAccountant()
    accountant.record_gaussian_release(stats_sigma)  # the federated-statistics release
    logged: list[tuple[float, float, int]] = [(stats_sigma, 1.0, 1)]
    trainer = LocalTrainer(SPEC, P, K, cfg, N, accountant=accountant, seed=1)
    params = initial_params()
    reported = []
    for round_index in range(cfg.rounds):
        if round_index == 2:  # process restart: only the JSON state survives
            saved = trainer.accountant.to_json()
            del trainer
            restored = PrivacyAccountant.from_json(saved)
            trainer = LocalTrainer(SPEC, P, K, cfg, N, accountant=restored, seed=2)
        update = trainer.train_round(params, *data)
        params = params + update.delta
        logged.append((update.noise_multiplier, update.sample_rate, update.steps))
        reported.append(update.epsilon_total)
        assert update.epsilon_total == pytest.approx(
            google_rdp_epsilon(logged, cfg.target_delta), abs=1e-6
        )
    assert all(a < b for a, b in itertools.pairwise(reported))
    assert all(s == cfg.local_epochs * math.ceil(N / cfg.batch_size) for _, _, s in logged[1:])


def test_plan_epsilon_meets_target_and_sigma_is_not_wasteful(data: Any) -> None:
    cfg = config(rounds=3)
    trainer = LocalTrainer(SPEC, P, K, cfg, N, seed=0)
    sigma, q = trainer.noise_multiplier, trainer.sample_rate
    plan = cfg.rounds * cfg.local_epochs * math.ceil(N / cfg.batch_size)
    assert q == pytest.approx(cfg.batch_size / N)
    assert trainer.plan_steps == plan
    target = cfg.target_epsilon
    assert target is not None
    assert epsilon_of([Entry(sigma, q, plan)], cfg.target_delta) <= target
    assert epsilon_of([Entry(sigma * 0.99, q, plan)], cfg.target_delta) > target
    params = initial_params()
    for _ in range(cfg.rounds):
        update = trainer.train_round(params, *data)
        params = params + update.delta
    assert update.epsilon_total <= target
    assert update.epsilon_total > 0.98 * target


def test_prv_trainer_predicts_and_then_charges_its_round(data: Any) -> None:
    cfg = config(rounds=2, accountant="prv")
    trainer = LocalTrainer(SPEC, P, K, cfg, N, accountant=PrivacyAccountant(kind="prv"), seed=0)
    sigma, q, steps = trainer.noise_multiplier, trainer.sample_rate, trainer.steps_per_round
    predicted = trainer.accountant.epsilon_if(cfg.target_delta, sigma, q, steps)
    update = trainer.train_round(initial_params(), *data)
    assert update.steps == steps
    assert update.epsilon_total == pytest.approx(predicted, rel=1e-9)
    assert trainer.accountant.history == [Entry(sigma, q, steps)]
    assert 0 < update.epsilon_total < 3.0
    # PRV is tighter than RDP, so RDP would need more noise for the same plan.
    assert sigma < LocalTrainer(SPEC, P, K, config(rounds=2), N, seed=0).noise_multiplier


class ClipSpy:
    """Runs Opacus's own clip_and_accumulate once per sample to see each clipped gradient."""

    def __init__(self) -> None:
        self.raw_norms: list[float] = []
        self.clipped_norms: list[float] = []
        self.max_sum_error = 0.0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = DPOptimizer.clip_and_accumulate
        spy = self

        def clip_and_accumulate(opt: DPOptimizer) -> None:
            params = [p for p in opt.params if p.requires_grad]
            full = {p: p.grad_sample for p in params}
            n = full[params[0]].shape[0]
            clipped_sum = {p: torch.zeros_like(p) for p in params}
            for i in range(n):
                for p in params:
                    p.grad_sample = full[p][i : i + 1].clone()
                    p.summed_grad = None
                original(opt)
                spy.raw_norms.append(
                    float(torch.sqrt(sum((full[p][i] ** 2).sum() for p in params)))
                )
                spy.clipped_norms.append(
                    float(torch.sqrt(sum((p.summed_grad**2).sum() for p in params)))
                )
                for p in params:
                    clipped_sum[p] += p.summed_grad
            for p in params:
                p.grad_sample = full[p]
                p.summed_grad = None
            original(opt)
            for p in params:
                err = float((p.summed_grad - clipped_sum[p]).abs().max())
                spy.max_sum_error = max(spy.max_sum_error, err)

        monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", clip_and_accumulate)


def test_hooks_mode_clips_every_per_sample_gradient(
    data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    clip = 0.05
    cfg = config(rounds=1, local_epochs=1, max_grad_norm=clip, clipping_mode="hooks")
    trainer = LocalTrainer(SPEC, P, K, cfg, N, seed=0)
    trainer.noise_multiplier = 0.0  # noise-free, so the clipped sum is exactly what is applied
    spy = ClipSpy()
    spy.install(monkeypatch)
    update = trainer.train_round(initial_params(), *data)
    assert len(spy.clipped_norms) > 0
    assert max(spy.raw_norms) > clip
    assert max(spy.clipped_norms) <= clip * (1 + 1e-5)
    assert spy.max_sum_error < 1e-5
    assert update.epsilon_total == math.inf  # σ = 0 is charged as a non-private release


def test_ghost_mode_applies_the_sum_of_clipped_per_sample_gradients(
    data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ghost clipping never builds p.grad_sample, so per-sample gradients are recomputed by brute
    force (one backward per patient) and compared with Opacus's norms and its clipped sum."""
    clip = 0.05
    cfg = config(rounds=1, local_epochs=1, max_grad_norm=clip, clipping_mode="ghost")
    trainer = LocalTrainer(SPEC, P, K, cfg, N, seed=0)
    trainer.noise_multiplier = 0.0
    batches: list[tuple[torch.Tensor, ...]] = []
    original_getitems = adapters.BatchTensors.__getitems__

    def getitems(self: Any, indices: list[int]) -> tuple[torch.Tensor, ...]:
        batch = original_getitems(self, indices)
        batches.append(batch)
        return batch

    coefs: list[torch.Tensor] = []
    original_coef = GradSampleModuleFastGradientClipping.get_clipping_coef

    def get_clipping_coef(module: Any) -> torch.Tensor:
        coef = original_coef(module)
        coefs.append(coef.detach().clone())
        return coef

    checks = {"steps": 0, "max_raw": 0.0, "max_clipped": 0.0, "max_sum_error": 0.0}
    original_accumulate = DPOptimizerFastGradientClipping.accumulate

    def accumulate(opt: Any) -> None:  # first thing pre_step does, p.grad = clipped sum
        xb, ib, eb = batches[-1]
        params = list(opt.params)
        model = build_model(SPEC, P, K)
        with torch.no_grad():
            for mine, theirs in zip(model.parameters(), params, strict=True):
                mine.copy_(theirs)
        expected = [torch.zeros_like(p) for p in params]
        for i in range(xb.shape[0]):
            model.zero_grad()
            nll_per_patient(model(xb[i : i + 1]), ib[i : i + 1], eb[i : i + 1]).sum().backward()
            grads = [p.grad.detach().clone() for p in model.parameters()]
            raw = float(torch.sqrt(sum((g**2).sum() for g in grads)))
            c = float(coefs[-1][i])
            checks["max_raw"] = max(checks["max_raw"], raw)
            checks["max_clipped"] = max(checks["max_clipped"], c * raw)
            for acc, g in zip(expected, grads, strict=True):
                acc += c * g
        for p, e in zip(params, expected, strict=True):
            err = float((p.grad - e).abs().max())
            checks["max_sum_error"] = max(checks["max_sum_error"], err)
        checks["steps"] += 1
        original_accumulate(opt)

    monkeypatch.setattr(adapters.BatchTensors, "__getitems__", getitems)
    monkeypatch.setattr(
        GradSampleModuleFastGradientClipping, "get_clipping_coef", get_clipping_coef
    )
    monkeypatch.setattr(DPOptimizerFastGradientClipping, "accumulate", accumulate)
    trainer.train_round(initial_params(), *data)
    assert checks["steps"] == math.ceil(N / cfg.batch_size)
    assert checks["max_raw"] > clip
    assert checks["max_clipped"] <= clip * (1 + 1e-4)
    assert checks["max_sum_error"] < 1e-5


@pytest.mark.parametrize("target_epsilon", [3.0, None])
def test_delta_rebuilds_the_trained_model(data: Any, target_epsilon: float | None) -> None:
    cfg = config(rounds=1, target_epsilon=target_epsilon)
    trainer = LocalTrainer(SPEC, P, K, cfg, N, seed=3)
    params = initial_params()
    update = trainer.train_round(params, *data)
    assert update.delta.dtype == np.float32
    assert update.delta.shape == (sum(p.numel() for p in build_model(SPEC, P, K).parameters()),)
    assert np.abs(update.delta).max() > 0
    rebuilt = build_model(SPEC, P, K)
    load_flat_parameters(rebuilt, params + update.delta)
    for mine, theirs in zip(rebuilt.parameters(), trainer.model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)


def test_non_private_mode_charges_nothing(data: Any) -> None:
    trainer = LocalTrainer(SPEC, P, K, config(rounds=1, target_epsilon=None), N, seed=0)
    update = trainer.train_round(initial_params(), *data)
    assert update.epsilon_total == math.inf
    assert update.noise_multiplier == 0.0
    assert trainer.accountant.history == []
    assert update.steps == config().local_epochs * math.ceil(N / config().batch_size)


def test_same_seed_same_update(data: Any) -> None:
    updates = [
        LocalTrainer(SPEC, P, K, config(rounds=1), N, seed=5).train_round(initial_params(), *data)
        for _ in range(2)
    ]
    np.testing.assert_array_equal(updates[0].delta, updates[1].delta)


def bad_inputs(data: Any) -> Iterator[tuple[str, tuple[Any, ...]]]:
    x, interval, event = data
    params = initial_params()
    yield "global_params", (params[:-1], x, interval, event)
    yield "x has shape", (params, x[:, :-1], interval, event)
    yield "NaN", (params, np.where(x > 2, np.nan, x), interval, event)
    yield "interval values", (params, x, np.full(N, K), event)
    yield "interval must be integers", (params, x, interval.astype(float), event)
    yield "event values", (params, x, interval, event * 2)
    yield "event has shape", (params, x, interval, event[:-1])


def test_bad_inputs_are_typed_errors(data: Any) -> None:
    trainer = LocalTrainer(SPEC, P, K, config(rounds=1, target_epsilon=None), N, seed=0)
    for message, args in bad_inputs(data):
        with pytest.raises(TrainingError, match=message):
            trainer.train_round(*args)


def test_configuration_errors() -> None:
    with pytest.raises(TrainingError, match="batch_size"):
        LocalTrainer(SPEC, P, K, config(batch_size=N + 1), N)
    with pytest.raises(TrainingError, match="accountant state is 'prv'"):
        LocalTrainer(SPEC, P, K, config(), N, accountant=PrivacyAccountant(kind="prv"))
    with pytest.raises(TrainingError, match="torchcsprng"):
        LocalTrainer(SPEC, P, K, config(secure_mode=True), N)
    with pytest.raises(ValueError, match="target_delta"):
        config(target_delta=0.0)
