"""Runs that share sites: each spends from the same site budget, so a submission that overlaps
live runs is refused unless the operator asks for it (`--allow-concurrent`) and is shown what
each shared site could spend in all of them together."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from coordinator.engine import RunEngine
from federation.plan import RunPlan


@dataclass(frozen=True)
class SiteOverlap:
    """A candidate of a new run that is already a candidate of live runs: each run spends from
    the same site budget, so the operator is told what the site could spend in all of them.

    `combined_epsilon` is an upper bound: the sum of the plans' ε (a site's spend in a run never
    exceeds its plan's ε), though a site may refuse, drop out of, or cap (max ε per run) any run."""

    site: str
    live_runs: tuple[tuple[str, float], ...]  # (run id, its plan's ε), by run id
    new_epsilon: float

    @property
    def combined_epsilon(self) -> float:
        """Σ plan ε over the live runs and the new one."""
        return sum(eps for _, eps in self.live_runs) + self.new_epsilon

    def message(self) -> str:
        """One line for the operator: the site, its live runs and the bound."""
        runs = ", ".join(f"{run_id} (ε {eps:g})" for run_id, eps in self.live_runs)
        return (
            f"site {self.site} is already in live run{'s' if len(self.live_runs) > 1 else ''}"
            f" {runs}: with this plan (ε {self.new_epsilon:g}) it could spend up to"
            f" ε {self.combined_epsilon:g} combined (an upper bound: the sum of the plans' ε)"
        )

    def to_json(self) -> dict[str, Any]:
        """The spelling in audit entries."""
        return {
            "site": self.site,
            "live_runs": {run_id: eps for run_id, eps in self.live_runs},
            "combined_epsilon": self.combined_epsilon,
        }


class ConcurrentRunError(Exception):
    """A submission whose candidates overlap live runs, without `allow_concurrent`: refused,
    because a second run silently charges every shared site's budget again."""

    HINT = "pass --allow-concurrent (SubmitRunRequest.allow_concurrent) to start it anyway"

    def __init__(self, overlaps: Sequence[SiteOverlap]) -> None:
        self.overlaps = tuple(overlaps)
        super().__init__("; ".join([o.message() for o in self.overlaps] + [self.HINT]))


def live_overlaps(
    engines: Iterable[RunEngine], plan: RunPlan, candidates: Sequence[str]
) -> list[SiteOverlap]:
    """The candidates that are also candidates of a live (not terminal) run, with those
    runs. A site that refused a live run's offer spends nothing in it, so that run is not
    counted against it, nor is a dry run, which charges no site anything."""
    live = [
        (engine.run_id, engine.plan.privacy.epsilon, engine.progress())
        for engine in engines
        if not engine.dry_run
    ]
    found = []
    for site in candidates:
        runs = tuple(
            sorted(
                (run_id, eps)
                for run_id, eps, progress in live
                if not progress.status.terminal
                and site in progress.candidates
                and progress.decision(site) != "refused"
            )
        )
        if runs:
            found.append(SiteOverlap(site, runs, plan.privacy.epsilon))
    return found
