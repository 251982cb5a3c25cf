"""The statistics of an empirical privacy audit: membership scores, ROC figures, the one-run
ε lower bound, and attribute inference (docs/privacy-audit.md).

Kept in the site package, torch-free except `patient_nll`, so that the same code serves the
consortium-level benchmark (`benchmarks/privacy_audit.py`, many models trained in-process) and a
hospital auditing the released model on its own rows (`python -m site_agent audit-privacy`):
an attack whose figures differ between the two would not be evidence of anything.

- Scores: an attack sees one number per (patient, model): the *logit-scaled likelihood*
  φ = log p − log(1 − p) of the patient's observed outcome, p = exp(−NLL) (Carlini et al. 2022,
  "Membership Inference Attacks From First Principles": the logit makes the spread of φ over
  models close to Gaussian, which LiRA's fits assume).
- The threshold attack (Yeom et al. 2018) calls a patient a member when φ is high.
- LiRA (Carlini et al. 2022): per patient, Gaussians fitted to φ under the shadow models that
  trained on it (in) and that did not (out); the score is the likelihood ratio (online) or how far
  φ sits above the out-fit (offline). Every model is the target once, the others its shadows.
- The one-run audit (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One (1) Training
  Run", Theorem 3 with δ): m canaries each included with probability 1/2; the auditor guesses
  on the r highest and lowest scores; v correct guesses. Under (ε, δ)-DP,
  P[≥ v correct] ≤ P[Binom(r, e^ε/(1+e^ε)) ≥ v] + 2mδ·α(v); the largest ε this rejects at
  confidence 1 − β is the empirical lower bound. It is a lower bound: an attack that finds no
  leak proves nothing, an attack that finds more than ε proves a bug.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from scipy import stats

if TYPE_CHECKING:
    from federation.plan import RunPlan

Floats = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

FPR_TARGET = 0.01
"""The low false-positive rate an attack's TPR is reported at (Carlini et al.'s headline)."""


class AuditError(ValueError):
    """The inputs cannot support the audit asked for (too few members, shadows or canaries)."""


@dataclass(frozen=True)
class Roc:
    """What one attack achieves over (patient, model) pairs."""

    tpr_at_low_fpr: float  # TPR at FPR ≤ FPR_TARGET
    advantage: float  # max over thresholds of TPR − FPR, in [0, 1]
    auc: float
    members: int
    non_members: int


def logit_likelihood(nll: npt.ArrayLike) -> Floats:
    """φ = log p − log(1 − p), p = exp(−NLL), computed stably (NLL ≥ 0)."""
    loss = np.clip(np.asarray(nll, dtype=np.float64), 1e-12, None)
    # log(1 − e^−x) = log(−expm1(−x)): exact for small losses, where p is close to 1
    out: Floats = -loss - np.log(-np.expm1(-loss))
    return out


def roc(scores: npt.ArrayLike, members: npt.ArrayLike, fpr_target: float = FPR_TARGET) -> Roc:
    """TPR at FPR ≤ `fpr_target`, the advantage max(TPR − FPR) and the AUC of "member if the
    score is at least t", over every threshold t (ties are one threshold)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(members, dtype=bool).ravel()
    if s.shape != y.shape:
        raise AuditError(f"{s.size} scores but {y.size} membership labels")
    if not np.all(np.isfinite(s)):
        raise AuditError("scores must be finite")
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise AuditError(f"need members and non-members, got {pos} and {neg}")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # the end of each tie group
    tpr = np.r_[0.0, np.cumsum(y)[last] / pos]
    fpr = np.r_[0.0, np.cumsum(~y)[last] / neg]
    low = tpr[fpr <= fpr_target + 1e-12]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return Roc(float(low.max()), float(np.max(tpr - fpr)), auc, pos, neg)


def lira_scores(phi: npt.ArrayLike, member: npt.ArrayLike, *, online: bool) -> Floats:
    """Leave-one-out LiRA scores [patients, models]: model j is the target, the others shadows.

    The variance is global (pooled over patients), as Carlini et al. advise below ~64 shadow
    models, the means per patient; a patient with no shadow on one side gets that side's global
    mean. Offline: Φ((φ − μ_out)/σ_out); online: log N(φ; μ_in, σ_in) − log N(φ; μ_out, σ_out).
    """
    x = np.asarray(phi, dtype=np.float64)
    inside = np.asarray(member, dtype=bool)
    if x.ndim != 2 or x.shape != inside.shape:
        raise AuditError(f"phi {x.shape} and member {inside.shape} must be the same 2-D shape")
    if x.shape[1] < 3:
        raise AuditError(f"LiRA needs at least 3 models (a target and shadows), got {x.shape[1]}")
    scores = np.empty_like(x)
    for j in range(x.shape[1]):
        shadows = np.delete(np.arange(x.shape[1]), j)
        mu_out, sd_out = _fit(x[:, shadows], ~inside[:, shadows])
        if online:
            mu_in, sd_in = _fit(x[:, shadows], inside[:, shadows])
            scores[:, j] = stats.norm.logpdf(x[:, j], mu_in, sd_in) - stats.norm.logpdf(
                x[:, j], mu_out, sd_out
            )
        else:
            scores[:, j] = stats.norm.cdf(x[:, j], mu_out, sd_out)
    return scores


def lira_offline_against(
    phi_target: npt.ArrayLike, phi_shadow: npt.ArrayLike, member_shadow: npt.ArrayLike
) -> Floats:
    """Offline LiRA scores [patients, targets] of target models against separate shadow models
    [patients, shadows] (the one-run bound needs guesses that use nothing of the targets'
    membership: the shadows' is independent of it)."""
    target = np.asarray(phi_target, dtype=np.float64)
    shadow = np.asarray(phi_shadow, dtype=np.float64)
    inside = np.asarray(member_shadow, dtype=bool)
    if shadow.shape != inside.shape or target.shape[0] != shadow.shape[0]:
        raise AuditError(f"shapes differ: targets {target.shape}, shadows {shadow.shape}")
    mu_out, sd_out = _fit(shadow, ~inside)
    out: Floats = stats.norm.cdf(target, mu_out[:, None], sd_out)
    return out


def _fit(x: Floats, side: Bools) -> tuple[Floats, float]:
    """Per-patient means over the models on `side`, and one pooled standard deviation."""
    count = side.sum(axis=1)
    if not count.any():
        raise AuditError("no shadow model on one side of the membership split")
    total = np.where(side, x, 0.0).sum(axis=1)
    overall = float(total.sum() / count.sum())
    mean = np.where(count > 0, total / np.maximum(count, 1), overall)
    resid = np.where(side, x - mean[:, None], 0.0)
    dof = max(int(count.sum() - (count > 0).sum()), 1)
    sd = math.sqrt(float((resid**2).sum()) / dof)
    return mean, max(sd, 1e-6)


# ---------------------------------------------------------------------- the one-run ε bound
def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[at least v of r guesses correct] allowed by (ε, δ)-DP over m canaries (Steinke et al.
    2023, Theorem 3: the binomial tail plus 2mδ times the worst tail-mass ratio)."""
    if not (0 <= v <= r <= m) or epsilon < 0 or not (0 <= delta <= 1):
        raise AuditError(f"need 0 <= v <= r <= m, ε >= 0, δ in [0, 1]; got {m, r, v, epsilon}")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    beta = float(stats.binom.sf(v - 1, r, q))
    alpha = 0.0
    if delta > 0 and v > 0:
        i = np.arange(1, v + 1)
        mass = np.cumsum(stats.binom.pmf(v - i, r, q))  # P[v − i <= Binom < v]
        alpha = float(np.max(mass / i))
    return min(beta + alpha * delta * 2 * m, 1.0)


def one_run_epsilon_lower(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest ε that v correct guesses of r reject at `confidence` (0 if none): bisection on
    the p-value, which only grows with ε."""
    beta = 1.0 - confidence
    if not 0 < beta < 1:
        raise AuditError(f"confidence must be in (0, 1), got {confidence}")
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2
        if hi > 64:  # every guess right, many of them: no finite ε is consistent
            return math.inf
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if one_run_p_value(m, r, v, mid, delta) < beta else (lo, mid)
    return lo


def one_run_guesses(scores: npt.ArrayLike, included: npt.ArrayLike, k: int) -> tuple[int, int]:
    """(guesses, correct): "in" for the k highest scores, "out" for the k lowest (one run)."""
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if not 0 < 2 * k <= s.size:
        raise AuditError(f"cannot guess on 2 × {k} of {s.size} canaries")
    order = np.argsort(s, kind="stable")
    correct = int(inc[order[-k:]].sum() + (~inc[order[:k]]).sum())
    return 2 * k, correct


# ---------------------------------------------------------------------- attribute inference
def attribute_guess(nll_by_value: npt.ArrayLike, prior: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Per patient, the value of the hidden feature that maximises model likelihood × prior:
    `nll_by_value` [patients, values], `prior` [values] (public frequencies)."""
    nll = np.asarray(nll_by_value, dtype=np.float64)
    log_prior = np.log(np.clip(np.asarray(prior, dtype=np.float64), 1e-12, None))
    out: npt.NDArray[np.int64] = np.argmax(-nll + log_prior[None, :], axis=1).astype(np.int64)
    return out


# ---------------------------------------------------------------------- the model's loss
def patient_nll(
    plan: RunPlan,
    vector: np.ndarray,
    raw: np.ndarray,
    time_: np.ndarray,
    event: np.ndarray,
    means: list[float],
    stds: list[float],
) -> Floats:
    """Each patient's negative log-likelihood of their observed outcome under the model `vector`
    (the consortium's standardisation): the training loss, per patient."""
    import torch

    from site_agent.model import standardise
    from survival.loss import nll_per_patient
    from survival.models import build_model, load_flat_parameters

    model = build_model(plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals)
    load_flat_parameters(model, np.asarray(vector, dtype=np.float32))
    model.eval()
    interval, event_k = plan.time_grid.discretize(time_, event)
    with torch.no_grad():
        logits = model(torch.as_tensor(standardise(raw, means, stds), dtype=torch.float32))
        loss = nll_per_patient(
            logits,
            torch.as_tensor(interval, dtype=torch.long),
            torch.as_tensor(event_k, dtype=torch.float32),
        )
    out: Floats = loss.numpy().astype(np.float64)
    return out
