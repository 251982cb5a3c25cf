"""How wide the hazard-ratio intervals of `federation/hazard_intervals.py` are against the real
spread of the coefficients over re-runs of the demo's training with fresh DP noise.

In-process (no processes, no secure aggregation: the sum is exact, so nothing but the sites' DP
noise and Poisson sampling differs between repeats): the demo plan's linear model, three sites
of FLCHAIN's training split (random thirds of 80 % of it, the rest held out as the demo's sites
do), exact consortium standardisation and baseline, `rounds` rounds of each site's own
`LocalTrainer` (the agents' DP-SGD) and weighted FedAvg. Each repeat reseeds every site's noise.
It prints the predicted noise std of each coefficient and the measured std over the repeats
(per coordinate, summarised by median and max), and how many of the repeats' per-SD intervals
cover the repeats' mean coefficient (a stand-in for the noise-free run).

    .venv/bin/python benchmarks/hr_interval_bench.py --repeats 12
"""

from __future__ import annotations

import argparse
import json
import statistics

import numpy as np

from fedctl.demo import plan_text
from federation.hazard_intervals import Z95, coefficient_noise
from federation.plan import parse_plan
from site_agent.train import LocalTrainer, plan_trainer_config
from survival.data import FLCHAIN_SCHEMA, fixed_split, load_flchain
from survival.schema import Standardization
from survival.spec import baseline_logits, initial_parameters

SITES = ("a", "b", "c")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    plan = parse_plan(plan_text(args.rounds))
    train, _ = fixed_split(load_flchain())
    columns = {name: train[name].tolist() for name in FLCHAIN_SCHEMA.names}
    valid = FLCHAIN_SCHEMA.validate_rows(columns).valid
    raw = FLCHAIN_SCHEMA.raw_matrix(columns, valid)
    time_ = train["time"].to_numpy(float)[valid]
    event = train["event"].to_numpy(int)[valid]
    order = np.random.default_rng(0).permutation(time_.size)[: int(0.8 * time_.size)]
    shards = np.array_split(order, len(SITES))
    std = Standardization.from_matrix(raw[order])
    x = std.apply(raw)
    interval, event_k = plan.time_grid.discretize(time_, event)
    events, at_risk = plan.time_grid.interval_counts(time_[order], event[order])
    p, k = FLCHAIN_SCHEMA.n_encoded, plan.time_grid.n_intervals
    start = initial_parameters(plan.model, p, k, plan.seed, baseline_logits(events, at_risk))
    sizes = {site: float(len(shard)) for site, shard in zip(SITES, shards, strict=True)}
    betas = []
    for repeat in range(args.repeats):
        trainers = {
            site: LocalTrainer(
                plan.model,
                p,
                k,
                plan_trainer_config(plan, shard.size),
                shard.size,
                seed=1000 * repeat + i,
            )
            for i, (site, shard) in enumerate(zip(SITES, shards, strict=True))
        }
        vector = start.astype(np.float32)
        for _ in range(args.rounds):
            total = sum(sizes.values())
            mean = np.zeros_like(vector, dtype=np.float64)
            for site, shard in zip(SITES, shards, strict=True):
                update = trainers[site].train_round(
                    vector, x[shard], interval[shard], event_k[shard]
                )
                mean += sizes[site] / total * update.delta
            vector = (vector + plan.training.server_learning_rate * mean).astype(np.float32)
        betas.append(vector[k:].astype(np.float64))
        print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)
    beta = np.array(betas)
    measured = beta.std(axis=0, ddof=1)
    history = [{"purpose": "stats", "survivors": list(SITES), "metrics": {"patients": total}}]
    history += [
        {"purpose": "update", "round": r + 1, "survivors": list(SITES)} for r in range(args.rounds)
    ]
    exact = coefficient_noise(plan, history, site_rows=sizes)
    equal = coefficient_noise(plan, history)
    centre = beta.mean(axis=0)
    covered = int(np.sum(np.abs(beta - centre) <= Z95 * exact.sd))
    print(
        json.dumps(
            {
                "repeats": args.repeats,
                "rounds": args.rounds,
                "site_rows": sizes,
                "site_sigma": list(exact.noise_multipliers),
                "predicted_sd_site_rows": exact.sd,
                "predicted_sd_equal_sites": equal.sd,
                "measured_sd_median": float(statistics.median(measured)),
                "measured_sd_max": float(measured.max()),
                "measured_sd_min": float(measured.min()),
                "covered": f"{covered}/{beta.size}",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
