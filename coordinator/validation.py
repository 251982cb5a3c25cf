"""Checks on the numbers a site sends, before the engine or the store sees them.

Every float that arrives over the wire is site input: a NaN or an infinity taken into the engine
would fail later (the audit log's canonical JSON refuses it, so the entry and the answer are
lost) or end up in the model card as `-Infinity`. These functions are pure: each raises
`SiteInputError` with a one-line reason, which the service answers with INVALID_ARGUMENT and
audits as `result_rejected` (or `hello_rejected`).
"""

from __future__ import annotations

import math

from federation.site_metrics import published_from_wire
from federation.tasks import TaskKind
from federation.wire.v1 import federation_pb2

MAX_POLICY_NAMES = 1024
"""At most this many allowed features / model kinds in a PolicySummary."""
MAX_POLICY_NAME_CHARS = 256


class SiteInputError(ValueError):
    """A value a site sent is out of range; `reason` is one line naming the field, so the site's
    operator can see what their agent sent wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise SiteInputError(f"{name} must be a finite number, got {value!r}")
    return value


def _non_negative(name: str, value: float) -> float:
    if _finite(name, value) < 0:
        raise SiteInputError(f"{name} must be >= 0, got {value!r}")
    return value


def _delta(name: str, value: float) -> float:
    if not 0.0 <= _finite(name, value) < 1.0:
        raise SiteInputError(f"{name} must be in [0, 1), got {value!r}")
    return value


def check_privacy_report(report: federation_pb2.PrivacyReport) -> None:
    """A TaskResult's privacy report: ε spent in the run and over the site's lifetime finite and
    ≥ 0, δ finite and in [0, 1). Raises SiteInputError. Checked before the engine takes the
    result, because the figures end up in audit entries and the model card."""
    _non_negative("privacy.epsilon_spent_run", report.epsilon_spent_run)
    _non_negative("privacy.epsilon_spent_lifetime", report.epsilon_spent_lifetime)
    _delta("privacy.delta", report.delta)


def check_policy_summary(policy: federation_pb2.PolicySummary) -> None:
    """A Hello's PolicySummary: every ε finite and ≥ 0, max_delta finite and in [0, 1), and the
    name lists bounded (at most MAX_POLICY_NAMES names of at most MAX_POLICY_NAME_CHARS
    characters). Raises SiteInputError. Checked before the store keeps the policy, which
    operators read and which must not carry NaN or megabytes of names."""
    _non_negative("policy.max_epsilon_per_run", policy.max_epsilon_per_run)
    _non_negative("policy.lifetime_epsilon_budget", policy.lifetime_epsilon_budget)
    _non_negative("policy.lifetime_epsilon_spent", policy.lifetime_epsilon_spent)
    _delta("policy.max_delta", policy.max_delta)
    for field, names in (
        ("policy.allowed_features", policy.allowed_features),
        ("policy.allowed_model_kinds", policy.allowed_model_kinds),
    ):
        if len(names) > MAX_POLICY_NAMES:
            raise SiteInputError(f"{field} has {len(names)} names, at most {MAX_POLICY_NAMES}")
        for name in names:
            if len(name) > MAX_POLICY_NAME_CHARS:
                raise SiteInputError(
                    f"{field} has a name of {len(name)} characters, at most {MAX_POLICY_NAME_CHARS}"
                )


def check_published_metrics(result: federation_pb2.TaskResult, kind: TaskKind) -> None:
    """A result's `published_metrics` (a site's own figures, published under its policy): only
    on a successful EVALUATE result, `MetricsLayout.length` finite values in range and a finite
    σ > 0 (`federation.site_metrics.published_from_wire`). Raises SiteInputError; the service
    then takes the result without them (they are no part of any sum, so the run goes on)."""
    if kind is not TaskKind.EVALUATE or result.HasField("error"):
        raise SiteInputError(
            "published_metrics is taken only on a successful evaluation result, got it on a"
            f" {kind.value} result" + (" with an error" if result.HasField("error") else "")
        )
    sent = result.published_metrics
    try:
        published_from_wire(sent.weighted, sent.noise_multiplier)
    except ValueError as exc:
        raise SiteInputError(str(exc)) from None
