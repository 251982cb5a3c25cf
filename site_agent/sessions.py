"""Which secure-aggregation session this site will join: derived here, never taken as sent.

The coordinator chooses only which accepted sites take part in a step. Everything else — the
threshold, the vector length, the round, the context that binds the session to the run, plan,
purpose, attempt and participant list — follows from the plan this site accepted (its hash is
pinned in the saved plan) and the task, by `federation.sessions.session_config`. The site then
checks the choice it cannot derive against its own policy:

- n ≥ max(plan quorum, policy.min_session_sites, policy.max_colluding_sites + 2);
- t > (n + policy.max_colluding_sites)/2 (the plan's rule already guarantees it for an accepted
  plan; checked again so that a policy tightened after acceptance still holds);
- the participants are distinct sites, this site is one of them exactly once, and every one is
  in the plan's `sites` list when the plan has one;
- the round fits the purpose and the plan, and the attempt is below `secagg.max_attempts`;
- with sparse masking, the degree and neighbourhood threshold still meet the 2^-40 security
  bound against policy.max_colluding_sites, and the partial sums it allows still cover
  policy.trusted_noise_sites (the neighbour graph itself is a pure function of the config, so
  the byte-identical check already pins it).

Any difference between the offered config and the derived one is a refusal that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

from federation.plan import RunPlan
from federation.releases import Purpose
from federation.sessions import SessionRuleError, majority_threshold, session_config
from federation.tasks import SessionKey
from secagg.config import SessionConfig
from secagg.errors import SecAggError
from secagg.graph import SECURITY_BITS, failure_bounds
from site_agent.config import SitePolicy


class SessionRefused(Exception):
    """This site will not join the offered session; the message says why (audited, sent back)."""


def check_step(plan: RunPlan, step: SessionKey) -> None:
    """The round and attempt a plan can have for this purpose: any other session is refused, so
    the sessions (and retries) a coordinator can open are bounded by the plan."""
    rounds = plan.training.rounds
    if step.purpose is Purpose.STATS and step.round != 0:
        raise SessionRefused(f"a statistics session is in round 0, not round {step.round}")
    if step.purpose is not Purpose.STATS and not 1 <= step.round <= rounds:
        raise SessionRefused(
            f"round {step.round} of a {step.purpose.value} session is outside the plan's"
            f" rounds 1..{rounds}"
        )
    if not 0 <= step.attempt < plan.secagg.max_attempts:
        raise SessionRefused(
            f"attempt {step.attempt} is outside the plan's secagg.max_attempts"
            f" {plan.secagg.max_attempts}"
        )


def expected_config(
    plan: RunPlan,
    policy: SitePolicy,
    site_id: str,
    step: SessionKey,
    participants: Mapping[int, str],
) -> SessionConfig:
    """The only SessionConfig this site joins for `step` among `participants` (id → site)."""
    check_step(plan, step)
    sites = list(participants.values())
    if len(set(sites)) != len(sites):
        raise SessionRefused(f"a site is listed twice among the participants {sorted(sites)}")
    if sites.count(site_id) != 1:
        raise SessionRefused("this site is not a participant")
    if plan.sites is not None:
        outside = sorted(set(sites) - set(plan.sites))
        if outside:
            raise SessionRefused(f"participants {outside} are not among the plan's sites")
    n = len(sites)
    floor = max(plan.quorum, policy.min_session_sites, policy.max_colluding_sites + 2)
    if n < floor:
        raise SessionRefused(
            f"a session of {n} sites is below this site's floor of {floor} (plan.quorum"
            f" {plan.quorum}, policy.min_session_sites {policy.min_session_sites},"
            f" policy.max_colluding_sites {policy.max_colluding_sites} + 2)"
        )
    trusted = noise_floor(plan, policy)
    if n < trusted:
        raise SessionRefused(
            f"a session of {n} sites is below policy.trusted_noise_sites {trusted}: this"
            " site's noise share assumes that many honest participants"
        )
    try:
        config = session_config(
            plan, step.run_id, step.purpose, step.round, step.attempt, participants
        )
    except (SessionRuleError, SecAggError) as exc:
        raise SessionRefused(str(exc)) from None
    needed = majority_threshold(n, policy.max_colluding_sites)
    if config.threshold < needed:
        raise SessionRefused(
            f"threshold {config.threshold} of {n} is not above (n + max_colluding_sites)/2;"
            f" this site needs at least {needed}"
        )
    if config.sparse:
        security, _ = failure_bounds(
            n,
            policy.max_colluding_sites,
            plan.secagg.dropout_fraction,
            config.neighbours,
            config.neighbour_threshold,
        )
        if security > Fraction(1, 2**SECURITY_BITS):
            raise SessionRefused(
                f"sparse masking with {config.neighbours} neighbours (t_k"
                f" {config.neighbour_threshold}) among {n} is not safe against"
                f" policy.max_colluding_sites {policy.max_colluding_sites}"
            )
        # the fewest honest inputs in a partial sum a coordinator can unmask (docs/secagg.md)
        k, t_k = config.neighbours, config.neighbour_threshold
        group = t_k if policy.max_colluding_sites == 0 else k + 2 - t_k
        if group < trusted:
            raise SessionRefused(
                f"sparse masking with {k} neighbours (t_k {t_k}) can leave partial sums of"
                f" {group} honest sites, below policy.trusted_noise_sites {trusted}"
            )
    return config


def noise_floor(plan: RunPlan, policy: SitePolicy) -> int:
    """The fewest participants (and survivors) a distributed-mode session needs for this site:
    its noise share is sized for `trusted_noise_sites` honest ones (1 in local mode, where
    every release carries the site's full noise)."""
    if plan.training.mode != "distributed" or policy.budget_epsilon == "worst_case":
        return 1
    return policy.trusted_noise_sites


def check_survivors(plan: RunPlan, policy: SitePolicy, survivors: int) -> None:
    """Refuse to unmask a sum of fewer survivors than the noise share assumes: the dropped
    sites' shares are missing from it."""
    trusted = noise_floor(plan, policy)
    if survivors < trusted:
        raise SessionRefused(
            f"{survivors} survivors are below policy.trusted_noise_sites {trusted}: the sum"
            " would lack the noise shares this site's release relies on"
        )


def check_offered(expected: SessionConfig, offered: SessionConfig) -> None:
    """Refuse an offered config that differs in any field from the derived one, naming each
    field, so the operator sees what the coordinator changed."""
    if offered.to_bytes() == expected.to_bytes():
        return
    differences = []
    fields = ("threshold", "participants", "vector_length", "round", "neighbours")
    for field in (*fields, "neighbour_threshold"):
        mine, theirs = getattr(expected, field), getattr(offered, field)
        if mine != theirs:
            differences.append(f"{field} {theirs!r} (this site derives {mine!r})")
    if offered.context != expected.context:
        differences.append("context (run, plan hash, purpose, round, attempt or participants)")
    raise SessionRefused("offered session differs from the plan's: " + "; ".join(differences))
