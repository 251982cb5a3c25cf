"""The site's checks of what a task carries, against the plan it accepted, before it acts on it.

Site sovereignty applies to every field, not only to secure-aggregation sessions: the coordinator
is a relay, so a plan offer whose text does not hash to what it claims, a global vector of the
wrong length, altered or non-finite, a standardisation for other features, or a statistics spec
for another plan is refused before anything is computed, charged or released. Each check raises
`TaskFailed` with `TASK_ERROR_INVALID_TASK` and a reason the operator can act on; the task
handler audits it (`task_refused`). The expected values always come from the accepted plan.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import numpy as np

from federation.plan import RunPlan
from federation.vectors import Float32Array, VectorError, decode_vector
from federation.wire.v1 import federation_pb2
from site_agent.errors import TaskFailed
from survival.spec import parameter_count

INVALID = federation_pb2.TASK_ERROR_INVALID_TASK


def check_plan_text(offer: federation_pb2.PlanOffer) -> None:
    """The offered plan text hashes to the `plan_sha256` sent with it (when one is sent), so the
    plan this site audits and pins is exactly the one the coordinator says it offered."""
    if not offer.plan_sha256:
        return
    actual = hashlib.sha256(offer.plan_json.encode()).hexdigest()
    if actual != offer.plan_sha256:
        raise TaskFailed(
            INVALID,
            f"plan offer refused: the plan text hashes to {actual}, not the plan_sha256"
            f" {offer.plan_sha256[:64]!r} sent with it",
        )


def global_vector(message: federation_pb2.GlobalVector, plan: RunPlan) -> Float32Array:
    """The global model vector of a Train or Evaluate task, decoded only if it has the accepted
    plan's parameter count, matches its SHA-256 and is finite."""
    try:
        n_params = parameter_count(
            plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals
        )
        return decode_vector(message, expected_length=n_params)
    except VectorError as exc:
        raise TaskFailed(INVALID, f"global vector refused: {exc}") from None


def check_standardisation(message: federation_pb2.Standardisation, plan: RunPlan) -> None:
    """Means and scales for exactly the plan's encoded features, in the plan's order, one finite
    value each (scales positive): a mismatch would standardise one column with another's
    statistics, silently."""
    expected = plan.feature_schema.encoded_names()
    features = list(message.features)
    if features != expected:
        raise TaskFailed(
            INVALID,
            f"standardisation refused: features {_short(features)} are not the accepted plan's"
            f" encoded features {_short(expected)} (order included)",
        )
    for name, values in (("mean", message.mean), ("scale", message.scale)):
        if len(values) != len(expected):
            raise TaskFailed(
                INVALID,
                f"standardisation refused: {len(values)} {name} values for the plan's"
                f" {len(expected)} encoded features",
            )
        if not all(math.isfinite(v) for v in values):
            raise TaskFailed(INVALID, f"standardisation refused: a {name} value is not finite")
    if any(v <= 0 for v in message.scale):
        raise TaskFailed(INVALID, "standardisation refused: a scale value is not positive")


def check_interval_counts(events: Sequence[float], at_risk: Sequence[float], plan: RunPlan) -> None:
    """The consortium event / at-risk counts of an Evaluate task: one finite value per interval
    of the plan's time grid (they set the censoring weights of the Brier term)."""
    n = plan.time_grid.n_intervals
    for name, values in (("events", events), ("at_risk", at_risk)):
        if len(values) != n:
            raise TaskFailed(
                INVALID, f"evaluate task refused: {len(values)} {name} counts for {n} intervals"
            )
        if not np.all(np.isfinite(np.asarray(values, dtype=np.float64))):
            raise TaskFailed(INVALID, f"evaluate task refused: an {name} count is not finite")


def check_stats_spec(spec_json: str, plan: RunPlan) -> None:
    """A FederatedStats task's spec names (if it names one) the plan this site accepted, so a
    statistics release is never prepared for a plan the site did not agree to."""
    if not spec_json:
        return
    try:
        spec = json.loads(spec_json)
    except json.JSONDecodeError:
        raise TaskFailed(INVALID, "statistics task refused: spec_json is not JSON") from None
    if not isinstance(spec, dict):
        raise TaskFailed(INVALID, "statistics task refused: spec_json is not a JSON object")
    claimed = spec.get("plan_sha256")
    if claimed is not None and claimed != plan.sha256():
        raise TaskFailed(
            INVALID,
            f"statistics task refused: spec_json names plan {str(claimed)[:64]!r}, but this site"
            f" accepted plan {plan.sha256()}",
        )


def _short(names: list[str], limit: int = 8) -> str:
    """A feature list for a message, cut after `limit` names."""
    shown = ", ".join(repr(n[:60]) for n in names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}] ({len(names)})"
