"""The small-site benchmark's setting per split (`Bench`) and the plans and site policies its
federated rows run (`small_sites_bench.py`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _small_sites import SplitData, plan_text


@dataclass
class Bench:
    """One split's sites, their training rows, and the settings every row reads."""

    args: argparse.Namespace
    scratch: Path
    split: SplitData
    csvs: dict[str, Path]
    rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]

    @property
    def n(self) -> int:
        return len(self.split.sites)

    @property
    def n_train(self) -> int:
        return sum(int(t.size) for _, t, _ in self.rows.values())


# ---------------------------------------------------------------------- plans and policies
def privacy(b: Bench, **extra: Any) -> dict[str, Any]:
    a = b.args
    base = {"epsilon": a.epsilon, "delta": a.delta, "metrics_noise_multiplier": 2.0}
    return base | {"accountant": a.accountant} | extra


SECAGG = {"offer_timeout_s": 300.0, "stage_timeout_s": 120.0, "train_timeout_s": 900.0}


def policy(b: Bench, **extra: Any) -> dict[str, Any]:
    return {
        "max_epsilon_per_run": b.args.epsilon,
        "max_delta": b.args.delta,
        "min_cohort_size": 20,  # the smallest sites have 40 (FLCHAIN) and 43 (GBSG2) rows
        "min_session_sites": 3,  # <= n; the plan's quorum (n) sets every session's floor anyway
    } | extra


def local_plan(b: Bench, aggregation: str = "unweighted") -> str:
    a = b.args
    training = {
        "rounds": a.rounds,
        "local_epochs": a.local_epochs,
        "batch_size": a.batch_size,
        "learning_rate": a.learning_rate,
        "optimizer": "sgd",
        "max_grad_norm": a.max_grad_norm,
        "server_optimizer": "fedavg",
        "server_learning_rate": 1.0,
        "evaluate_every": a.rounds,
    }
    # mode and "unweighted" are what a checkout without these plan fields does anyway, so they
    # are written only if the plan has them; "weighted" is always written (pending without).
    optional: dict[str, Any] = {"mode": "local"}
    if a.holdout_min_site_rows is not None:
        optional["holdout_min_site_rows"] = a.holdout_min_site_rows
    if aggregation == "unweighted":
        optional["aggregation"] = "unweighted"
    else:
        training["aggregation"] = aggregation
    return plan_text(
        b.split,
        f"small-sites-{b.split.name}-local-{aggregation}",
        quorum=b.n,
        training=training,
        privacy=privacy(b),
        secagg=SECAGG,
        optional_training=optional,
    )


def distributed_plan(b: Bench, shares: int) -> str:
    a = b.args
    training = {
        "mode": "distributed",
        "rounds": a.dist_rounds,  # one DP-SGD step of the pooled Poisson batch per round
        "sample_rate": a.dist_sample_rate,
        "max_grad_norm": a.dist_max_grad_norm,
        "server_optimizer": a.dist_server_optimizer,
        "server_learning_rate": a.dist_server_lr,
        "evaluate_every": a.dist_rounds,
    }
    if a.holdout_min_site_rows is not None:
        training["holdout_min_site_rows"] = a.holdout_min_site_rows
    width = a.dist_mlp_width
    return plan_text(
        b.split,
        f"small-sites-{b.split.name}-distributed-h{shares}",
        quorum=b.n,
        training=training,
        privacy=privacy(b, noise_shares=shares),
        secagg=SECAGG,
        model={"kind": "mlp", "hidden": [width, width]} if width else None,
    )
