"""The one secure-aggregation session a plan allows for a step, derived the same way on both sides.

Site sovereignty: a site never takes a `SessionConfig` on the coordinator's word. The coordinator
builds the config for a step with `session_config`, and every site rebuilds it from the plan *it*
accepted (hash-pinned), the task's run / purpose / round / attempt and the participant list,
then joins only if the two encodings are byte-identical (and its own policy floors hold, see
`site_agent/sessions.py`). Nothing in the config is a free choice of the coordinator except
*which* accepted sites take part, and that is bounded by the plan's quorum and each site's floor.

Why these rules (docs/threat-model.md has the proofs and the table):

- threshold t > (n + c)/2, where c is the number of sites the plan (and every accepting site's
  policy) assumes may collude with the coordinator. A coordinator that shows two groups of honest
  sites different survivor sets needs t consistency signatures from *each* group; honest sites
  sign one set only, so that needs 2t − c ≤ n. With t > (n + c)/2 it cannot get both a site's
  self-mask seed and its masking key.
- n ≥ the plan's quorum, and n ≥ c + 2: a sum over fewer honest sites is one site's release.
- the context binds the run, the plan hash, the purpose, the round, the attempt and the exact
  participant list (id → site name), so a session cannot be replayed into another step or run,
  and two sites cannot be shown different participant lists under one digest.
- sparse masking (`secagg.masking = "sparse"`): k and t_k from n, c and `dropout_fraction`
  (`sparse_parameters`), and the neighbour graph from the config digest, so it is pinned too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from federation.evaluation_release import EvaluationRelease
from federation.plan import RunPlan
from federation.releases import Purpose, StatsLayout
from secagg.config import SessionConfig
from secagg.graph import choose_sparse
from survival.spec import shared_parameter_count

CONTEXT_VERSION = "concordia-session-v2"


class SessionRuleError(ValueError):
    """A session the plan does not allow (too few participants for the plan's rules)."""


def majority_threshold(n: int, colluding: int) -> int:
    """The smallest t with t > (n + colluding)/2."""
    return (n + colluding) // 2 + 1


def session_threshold(plan: RunPlan, n: int) -> int:
    """The threshold of a session among n participants under `plan`.

    The plan's own rule (explicit `secagg.threshold`, or ceil(2n/3)) raised to the collusion
    bound t > (n + c)/2, and at least 2. Raises SessionRuleError when n is too small to give a
    threshold that both hides each release and still lets the session finish (t ≤ n).
    """
    colluding = plan.secagg.max_colluding_sites
    minimum = minimum_session_size(plan)
    if n < minimum:
        raise SessionRuleError(
            f"a session of {n} participants is below the plan's minimum {minimum}"
            f" (quorum {plan.quorum}, max_colluding_sites {colluding})"
        )
    explicit = plan.secagg.threshold
    planned = explicit if explicit is not None else math.ceil(2 * n / 3)
    threshold = max(planned, majority_threshold(n, colluding), 2)
    if threshold > n:  # cannot happen for n >= colluding + 2; kept as a hard stop
        raise SessionRuleError(f"threshold {threshold} exceeds the {n} participants")
    return threshold


def sparse_parameters(plan: RunPlan, n: int) -> tuple[int, int]:
    """(k, t_k) of a session among n under `plan`: (0, 0) for all-pairs masking.

    Sparse: `secagg.graph.choose_sparse` over n, c = `max_colluding_sites` and the plan's
    `dropout_fraction` (with the plan's `neighbours` if set). A session too small for any sparse
    graph to beat all-pairs (k ≥ n − 1) runs all-pairs, which is never weaker. The graph itself
    is drawn from the config's digest (docs/secagg.md, "Sparse masking (SecAgg+)")."""
    secagg = plan.secagg
    if secagg.masking != "sparse" or (secagg.neighbours is not None and secagg.neighbours >= n - 1):
        return 0, 0
    try:
        chosen = choose_sparse(
            n, secagg.max_colluding_sites, secagg.dropout_fraction, secagg.neighbours
        )
    except ValueError as exc:
        raise SessionRuleError(f"secagg.neighbours: {exc}") from None
    return chosen if chosen is not None else (0, 0)


def minimum_session_size(plan: RunPlan) -> int:
    """The fewest participants any session of this plan may have."""
    return max(plan.quorum, plan.secagg.max_colluding_sites + 2, 2)


def vector_length(plan: RunPlan, purpose: Purpose, round_: int = 0) -> int:
    """Length of the release vector of `purpose` under `plan` (public: from the plan alone; the
    final evaluation's carries the plan's subgroup and importance blocks)."""
    schema = plan.feature_schema
    n_intervals = plan.time_grid.n_intervals
    if purpose is Purpose.STATS:
        return StatsLayout.for_schema(schema, n_intervals).length
    if purpose is Purpose.UPDATE:
        weighted = plan.training.mode == "local" and plan.training.aggregation == "weighted"
        shared = shared_parameter_count(plan.model, schema.n_encoded, n_intervals)
        return shared + int(weighted)
    return EvaluationRelease.for_round(plan, round_).length


def session_context(
    plan: RunPlan,
    run_id: str,
    purpose: Purpose,
    round_: int,
    attempt: int,
    participants: Mapping[int, str],
) -> bytes:
    """Bytes that tie a session to one step of one run of one plan among one participant list."""
    roster = ",".join(f"{ident}={site}" for ident, site in sorted(participants.items()))
    text = "|".join(
        [CONTEXT_VERSION, run_id, plan.sha256(), purpose.value, str(round_), str(attempt), roster]
    )
    return hashlib.sha256(text.encode()).digest() + text.encode()[:1024]


def session_config(
    plan: RunPlan,
    run_id: str,
    purpose: Purpose,
    round_: int,
    attempt: int,
    participants: Mapping[int, str],
) -> SessionConfig:
    """The only SessionConfig `plan` allows for this step among `participants` (id → site)."""
    sites = list(participants.values())
    if len(set(sites)) != len(sites):
        raise SessionRuleError("a site appears more than once among the participants")
    n = len(participants)
    neighbours, neighbour_threshold = sparse_parameters(plan, n)
    return SessionConfig(
        context=session_context(plan, run_id, purpose, round_, attempt, participants),
        round=round_,
        threshold=session_threshold(plan, n),
        participants=tuple(sorted(participants)),
        vector_length=vector_length(plan, purpose, round_),
        neighbours=neighbours,
        neighbour_threshold=neighbour_threshold,
    )
