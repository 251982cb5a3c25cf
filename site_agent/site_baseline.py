"""Each site's own baseline hazard under `model.baseline = "per-site"`: kept here, never sent.

A site-stratified model shares the covariate effects and lets every hospital keep its own
baseline hazard (case mix, follow-up practice). The site trains the whole model with DP-SGD as
usual, from the global covariate parameters and its *own* baseline; the baseline part of each
round's update stays here and only the covariate part is released. Privacy: the baseline starts
from this site's DP-noised statistics release (already charged) and then moves only by DP-SGD's
noised steps, so everything released later is post-processing of DP outputs.

The values are kept per round in `state_dir/plans/<run>.baseline` (0600, written atomically), so a
retried round starts again from the baseline before it and a restarted agent carries on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from federation.fsmodes import write_private_file_atomic

KEEP_ROUNDS = 3
"""Rounds of history kept: a retried round needs the one before it."""


class SiteBaselines:
    """The per-site baselines of this site's runs, by run and round."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, run_id: str) -> Path:
        """The run's file (its suffix keeps it apart from the saved plans, `<run>.json`)."""
        return self.directory / f"{run_id}.baseline"

    def before(self, run_id: str, round_: int, initial: Callable[[], np.ndarray]) -> np.ndarray:
        """The baseline a round starts from: the latest kept for an earlier round, or `initial()`
        (from the site's noised statistics) before the first."""
        history = self._load(run_id)
        earlier = [r for r in history if r < round_]
        if not earlier:
            return np.asarray(initial(), dtype=np.float32)
        return np.asarray(history[max(earlier)], dtype=np.float32)

    def keep(self, run_id: str, round_: int, values: np.ndarray) -> None:
        """Record the baseline after `round_` (durably, before the round's release is cached)."""
        history = self._load(run_id)
        history[round_] = [float(v) for v in np.asarray(values, dtype=np.float64)]
        kept = {r: history[r] for r in sorted(history)[-KEEP_ROUNDS:]}
        body = json.dumps({str(r): v for r, v in kept.items()}).encode()
        write_private_file_atomic(self.path(run_id), body)

    def forget(self, run_id: str) -> None:
        """Drop the run's baselines (retention purge, erasure of the run's state)."""
        self.path(run_id).unlink(missing_ok=True)

    def _load(self, run_id: str) -> dict[int, list[float]]:
        path = self.path(run_id)
        if not path.exists():
            return {}
        return {int(r): list(v) for r, v in json.loads(path.read_text()).items()}
