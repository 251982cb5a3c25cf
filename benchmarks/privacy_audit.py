"""Empirical privacy audit of the released global model on the demo consortium (FLCHAIN).

``python benchmarks/privacy_audit.py [--quick] [--json PATH]``

Per setting (no DP, then ε = 1, 3, 8 per site, δ = the plan's): `--models` federated runs of the
`fedctl demo` plan, in-process through the site's DP-SGD trainer, σ calibration and accountant and
the coordinator's decoding and server optimiser (`_privacy_audit_fed.py`; no gRPC, no masking:
the sum of the quantised releases is what the secure sum yields). Each run trains on a random
half of each hospital plus its own canaries. Then, with `site_agent.membership_audit`:

- membership inference against every run's global model, the other runs its shadows: the
  loss-threshold attack and LiRA (online and offline), TPR at FPR = 0.01 and advantage
  max(TPR − FPR) over all (patient, run) pairs;
- the one-run canary audit (Steinke et al. 2023 with δ): an empirical lower bound on ε at 95 %
  confidence, which must not exceed the ε the sites' accountant reports (`bound_held`);
- attribute inference of `sex` (the attacker knows the other features and the outcome and picks
  the value that maximises the model's likelihood × the population prior): accuracy on members
  over the prior-only guess.

Then the k-anonymity layer's utility cost (unless ``--skip-k-anonymity``): the C-index at ε = 3
with and without `[privacy.k_anonymity]`, by `k_anonymity_bench.py`'s own code (records of
``kind = "k_anonymity_cost"``, 2 seeds with --quick, 10 without).

Records: one per setting, ``kind = "privacy_audit"``; the k-anonymity records follow in the same
list (each table shows only its kind). See docs/privacy-audit.md for what the figures mean and do
not mean.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Opacus installs a top-level package named ``benchmarks`` that shadows this folder (it has no
# __init__.py), so the siblings are imported from this file's own directory.
_HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(_HERE), str(_HERE.parent)]

from _privacy_audit_fed import (  # noqa: E402
    Hospital,
    Public,
    canaries,
    demo_hospitals,
    public_start,
    train_federated,
)
from _report import print_table, write_json  # noqa: E402

from federation.plan import RunPlan, parse_plan  # noqa: E402
from site_agent import membership_audit as ma  # noqa: E402

KIND = "privacy_audit"
SETTINGS: tuple[float | None, ...] = (None, 1.0, 3.0, 8.0)
SENSITIVE = "sex"
CONFIDENCE = 0.95
COLUMNS = [
    "setting",
    "epsilon",
    "epsilon_spent",
    "noise_multiplier",
    "empirical_epsilon_lower",
    "bound_held",
    "mia_advantage",
    "tpr_at_fpr_0.01",
    "lira_online_advantage",
    "threshold_advantage",
    "attribute_gain",
    "c_index",
]


@dataclass(frozen=True)
class AuditConfig:
    """How big the audit is; the plan is `fedctl demo`'s with `rounds` and `local_epochs`."""

    models: int = 16
    canaries_per_hospital: int = 100
    per_hospital: int | None = None  # None: every row of the demo's hospitals
    rounds: int = 10
    local_epochs: int = 2
    settings: tuple[float | None, ...] = SETTINGS
    seed: int = 0
    # A positive control: no DP on this many patients per hospital, where one patient moves the
    # model enough for the attacks to see it (shows the attacks work; None: not run).
    control_per_hospital: int | None = 40


QUICK = AuditConfig(models=6, canaries_per_hospital=10, rounds=5)
FULL = AuditConfig(models=32, canaries_per_hospital=10)


def audit_plan(config: AuditConfig, epsilon: float | None) -> RunPlan:
    """The demo plan at this setting's ε (the no-DP setting keeps ε = 3 in the plan, unused).
    Where the demo's fixed statistics σ leaves too little of ε for training (ε = 1), the plan
    leaves it unset, as a plan author would, and the statistics get their share of ε."""
    from pydantic import ValidationError

    from fedctl.demo import plan_text

    body = parse_plan(plan_text(config.rounds, local_epochs=config.local_epochs)).model_dump()
    body["privacy"]["epsilon"] = 3.0 if epsilon is None else epsilon
    try:
        return RunPlan.model_validate(body)
    except ValidationError:
        body["privacy"]["stats_noise_multiplier"] = None
        return RunPlan.model_validate(body)


def _sensitive_column(plan: RunPlan) -> tuple[int, list[str]]:
    """The design-matrix column of `sex=M` and the levels (F is the reference, column 0)."""
    feature = next(f for f in plan.feature_schema.features if f.name == SENSITIVE)
    levels = list(getattr(feature, "levels", []))
    return plan.feature_schema.encoded_names().index(f"{SENSITIVE}={levels[1]}"), levels


def run_setting(
    config: AuditConfig,
    epsilon: float | None,
    hospitals: list[Hospital],
    test: Hospital,
    log: Any = print,
) -> dict[str, object]:
    """Train `config.models` runs at this setting and attack them; one record."""
    plan = audit_plan(config, epsilon)
    public = public_start(plan, hospitals)
    rng = np.random.default_rng([config.seed, 0 if epsilon is None else 1 + int(epsilon * 1000)])
    population = Hospital(
        np.concatenate([h.raw for h in hospitals]),
        np.concatenate([h.time for h in hospitals]),
        np.concatenate([h.event for h in hospitals]),
    )
    column, _levels = _sensitive_column(plan)
    prior_m = float(population.raw[:, column].mean())
    prior = np.array([1.0 - prior_m, prior_m])
    truth = population.raw[:, column].astype(int)
    phi, member, canary_draws = [], [], []
    attribute_hits: list[tuple[float, float]] = []
    spent, sigmas, c_index = [], [], []
    started = time.perf_counter()
    for _ in range(config.models):
        masks = [rng.random(h.size) < 0.5 for h in hospitals]
        sites, planted = [], []
        for h, mask in zip(hospitals, masks, strict=True):
            c = canaries(plan, config.canaries_per_hospital, rng)
            inc = rng.random(c.size) < 0.5
            sites.append(_concat(h.take(mask), c.take(inc)))
            planted.append((c, inc))
        trained = train_federated(
            plan, sites, public, epsilon is not None, seed=int(rng.integers(2**31))
        )
        nll = _nll(plan, trained.vector, public, population)
        phi.append(ma.logit_likelihood(nll))
        member.append(np.concatenate(masks))
        canary_draws.append(_canary_scores(plan, trained.vector, public, planted))
        guesses = _attribute_guesses(plan, trained.vector, public, population, column, prior)
        inside = member[-1]
        attribute_hits.append(
            (float((guesses == truth)[inside].mean()), float((guesses == truth)[~inside].mean()))
        )
        spent.append(trained.epsilon_spent)
        sigmas.append(max(trained.noise_multipliers))
        c_index.append(_c_index(plan, trained.vector, public, test))
    seconds = time.perf_counter() - started
    phis, members = np.stack(phi, axis=1), np.stack(member, axis=1)
    threshold = ma.roc(phis, members)
    online = ma.roc(ma.lira_scores(phis, members, online=True), members)
    offline = ma.roc(ma.lira_scores(phis, members, online=False), members)
    attacks = {"threshold": threshold, "lira_online": online, "lira_offline": offline}
    best_name = max(attacks, key=lambda name: attacks[name].advantage)
    best = attacks[best_name]
    m = sum(d.scores.size for d in canary_draws)
    r = v = 0
    for scores_, included in ((d.scores, d.included) for d in canary_draws):
        guesses_, correct = ma.one_run_guesses(scores_, included, scores_.size // 4)
        r, v = r + guesses_, v + correct
    canary_lower = ma.one_run_epsilon_lower(m, r, v, plan.privacy.delta, CONFIDENCE)
    mia_lower, mia_guesses, mia_correct = _mia_bound(phis, members, plan.privacy.delta)
    lower = max(canary_lower, mia_lower)  # both hold at once with ≥ 1 − 2 × 5 % (Bonferroni)
    epsilon_spent = max(s for s in spent if s is not None) if epsilon is not None else None
    held = None if epsilon_spent is None else bool(lower <= epsilon_spent)
    acc_members = statistics.fmean(a for a, _ in attribute_hits)
    acc_non_members = statistics.fmean(b for _, b in attribute_hits)
    record: dict[str, object] = {
        "kind": KIND,
        "control": False,
        "setting": "no DP" if epsilon is None else f"DP ε={epsilon:g}",
        "epsilon": epsilon,
        "delta": plan.privacy.delta,
        "epsilon_spent": epsilon_spent,
        "accountant": plan.privacy.accountant,
        "noise_multiplier": max(sigmas) if epsilon is not None else None,
        "empirical_epsilon_lower": lower,
        "empirical_confidence": round(1 - 2 * (1 - CONFIDENCE), 6),
        "empirical_epsilon_lower_canaries": canary_lower,
        "empirical_epsilon_lower_mia": mia_lower,
        "mia_bound_guesses": mia_guesses,
        "mia_bound_correct": mia_correct,
        "bound_held": held,
        "mia_advantage": best.advantage,
        "tpr_at_fpr_0.01": best.tpr_at_low_fpr,
        "mia_best_attack": best_name,
        "threshold_advantage": threshold.advantage,
        "threshold_tpr_at_fpr_0.01": threshold.tpr_at_low_fpr,
        "threshold_auc": threshold.auc,
        "lira_online_advantage": online.advantage,
        "lira_online_tpr_at_fpr_0.01": online.tpr_at_low_fpr,
        "lira_online_auc": online.auc,
        "lira_offline_advantage": offline.advantage,
        "lira_offline_tpr_at_fpr_0.01": offline.tpr_at_low_fpr,
        "lira_offline_auc": offline.auc,
        "mia_pairs": threshold.members + threshold.non_members,
        # what max(TPR − FPR) reaches by chance alone (two-sample KS 95 % critical value; the
        # pairs share patients across runs, so read it as a guide, not a test)
        "mia_advantage_chance_95": 1.358
        * (
            (threshold.members + threshold.non_members)
            / (threshold.members * threshold.non_members)
        )
        ** 0.5,
        "canaries": m,
        "canary_guesses": r,
        "canary_correct": v,
        "attribute": SENSITIVE,
        "attribute_accuracy_members": acc_members,
        "attribute_accuracy_non_members": acc_non_members,
        "attribute_prior_accuracy": float(prior.max()),
        "attribute_gain": acc_members - float(prior.max()),
        "attribute_member_gap": acc_members - acc_non_members,
        "c_index": statistics.fmean(c_index),
        "models": config.models,
        "rounds": plan.training.rounds,
        "local_epochs": plan.training.local_epochs,
        "patients": population.size,
        "seconds": seconds,
    }
    log(
        f"  {record['setting']}: {seconds:.0f}s, ε_lower={lower:.3f}, "
        f"adv={best.advantage:.4f}, held={held}",
    )
    if held is False:
        log(
            f"!!! BOUND VIOLATED at {record['setting']}: empirical lower bound {lower:.3f} > "
            f"reported ε {epsilon_spent:.3f}: a privacy bug to investigate (docs/privacy-audit.md)"
        )
    return record


def _mia_bound(phis: np.ndarray, members: np.ndarray, delta: float) -> tuple[float, int, int]:
    """The one-run bound from the real patients: each (patient, run) membership is a fair coin,
    so the second half of the runs (targets) is audited with offline LiRA fitted on the first
    half (shadows, whose membership is independent of the targets'); guesses on the 1 % highest
    and lowest scores. (ε lower bound at CONFIDENCE, guesses, correct guesses.)"""
    half = phis.shape[1] // 2
    if half < 1 or phis.shape[1] - half < 1:
        return 0.0, 0, 0
    target, inside = phis[:, half:], members[:, half:]
    scores = ma.lira_offline_against(target, phis[:, :half], members[:, :half])
    k = max(1, scores.size // 100)
    guesses, correct = ma.one_run_guesses(scores.ravel(), inside.ravel(), k)
    return (
        ma.one_run_epsilon_lower(scores.size, guesses, correct, delta, CONFIDENCE),
        guesses,
        correct,
    )


def _concat(a: Hospital, b: Hospital) -> Hospital:
    return Hospital(
        np.concatenate([a.raw, b.raw]),
        np.concatenate([a.time, b.time]),
        np.concatenate([a.event, b.event]),
    )


def _nll(plan: RunPlan, vector: np.ndarray, public: Public, rows: Hospital) -> np.ndarray:
    return ma.patient_nll(plan, vector, rows.raw, rows.time, rows.event, public.means, public.stds)


@dataclass(frozen=True)
class _Canaries:
    scores: np.ndarray  # gain in φ from the public initial model to this run's model
    included: np.ndarray


def _canary_scores(
    plan: RunPlan, vector: np.ndarray, public: Public, planted: list[tuple[Hospital, np.ndarray]]
) -> _Canaries:
    """Scores from this run's model and public information only (the audit's condition)."""
    rows = Hospital(
        np.concatenate([c.raw for c, _ in planted]),
        np.concatenate([c.time for c, _ in planted]),
        np.concatenate([c.event for c, _ in planted]),
    )
    gain = ma.logit_likelihood(_nll(plan, vector, public, rows)) - ma.logit_likelihood(
        _nll(plan, public.initial, public, rows)
    )
    return _Canaries(gain, np.concatenate([inc for _, inc in planted]))


def _attribute_guesses(
    plan: RunPlan,
    vector: np.ndarray,
    public: Public,
    rows: Hospital,
    column: int,
    prior: np.ndarray,
) -> np.ndarray:
    """Each patient's sex as the likelihood-maximising value given everything else."""
    nll = []
    for value in (0.0, 1.0):
        raw = rows.raw.copy()
        raw[:, column] = value
        nll.append(_nll(plan, vector, public, Hospital(raw, rows.time, rows.event)))
    return ma.attribute_guess(np.stack(nll, axis=1), prior)


def _c_index(plan: RunPlan, vector: np.ndarray, public: Public, test: Hospital) -> float:
    from site_agent.model import predict
    from survival.metrics import harrell_c

    _surv, risk = predict(plan, vector, test.raw, public.means, public.stds)
    return float(harrell_c(test.time, test.event, risk))


def run_audit(config: AuditConfig, log: Any = print) -> list[dict[str, object]]:
    """Every setting of `config`, in order; one record each."""
    plan = audit_plan(config, 3.0)
    hospitals, test = demo_hospitals(plan.feature_schema, config.per_hospital)
    log(
        f"demo consortium: {[h.size for h in hospitals]} patients, {config.models} runs per "
        f"setting, {config.canaries_per_hospital} canaries per hospital and run, "
        f"{config.rounds} rounds × {config.local_epochs} local epochs"
    )
    records = [run_setting(config, eps, hospitals, test, log) for eps in config.settings]
    if config.control_per_hospital is not None:
        small, _ = demo_hospitals(plan.feature_schema, config.control_per_hospital)
        control = run_setting(config, None, small, test, log)
        control.update(setting=f"control: no DP, {config.control_per_hospital}/hospital")
        records.append({**control, "control": True})
    return records


def k_anonymity_cost(seeds: int) -> list[dict[str, object]]:
    """The layer's utility cost at ε = 3: `k_anonymity_bench.py`'s settings, run by its code."""
    import tempfile

    import k_anonymity_bench as kanon

    records: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="privacy-audit-kanon-") as scratch:
        train, test, configs = kanon.hospitals(Path(scratch))
        for name, section in kanon.SETTINGS.items():
            row = kanon.run_setting(name, section, configs, train, test, seeds)
            records.append({"kind": "k_anonymity_cost", "epsilon": 3.0, **row})
    print_table(records, kanon.COLUMNS, "k-anonymity layer: C-index at ε = 3 (test split)")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, canaries and rounds")
    parser.add_argument("--json", type=Path, default=None, help="write the records here")
    parser.add_argument("--models", type=int, default=None, help="runs per setting")
    parser.add_argument(
        "--skip-k-anonymity", action="store_true", help="no k-anonymity utility-cost rows"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = QUICK if args.quick else FULL
    if args.models is not None:
        config = AuditConfig(**{**config.__dict__, "models": args.models})
    started = time.perf_counter()
    records = run_audit(config)
    print_table(records, COLUMNS, "Empirical privacy audit (demo consortium, FLCHAIN)")
    print(f"total {time.perf_counter() - started:.0f} s")
    if not args.skip_k_anonymity:
        records += k_anonymity_cost(seeds=2 if args.quick else 10)
    violated = [r["setting"] for r in records if r.get("bound_held") is False]
    if violated:
        print(f"!!! the empirical lower bound exceeded the reported ε at {violated}")
    if args.json is not None:
        write_json(args.json, records)
    return 1 if violated else 0


if __name__ == "__main__":
    raise SystemExit(main())
