"""A model card in the structure of Mitchell et al. 2019 ("Model Cards for Model Reporting"),
built from what an export carries: the coordinator's card (`coordinator/convert.py
model_card`: plan, plan hash, history, per-site privacy, code version) and the run's status.

The coordinator's `model_card.json` is what `survival.export.load_model` reads, so it is left as
it is; this card is a reader's document beside it (`model_card_mitchell.json` and `.md`). Every
figure in it comes from the plan or from a DP release, never from a guess: where a section needs
something the federation does not release (subgroup results when the plan names no subgroups,
per-site figures a site's policy did not publish), the card says so instead of leaving the
section out, because a missing section reads as "nothing to report". Subgroup figures, their gaps
and the permutation importances come from the final evaluation's prefixed metrics
(`federation/subgroup_metrics.py`), each site's own published figures from its `site:` ones
(`fedctl/model_card_sites.py`).

The metric intervals are the DP noise's alone (its std is public: σ·Δ·√sites per coordinate of
the summed release), not sampling intervals: the sites release no variance.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from fedctl.model_card_sites import per_site_analyses
from federation.plan import RunPlan
from federation.releases import MetricsLayout
from federation.subgroup_metrics import importance_rows, subgroup_gaps, subgroup_rows
from federation.version import __version__ as FEDCTL_VERSION
from federation.wire.v1 import admin_pb2

SECTIONS = (
    "model_details",
    "intended_use",
    "factors",
    "metrics",
    "evaluation_data",
    "training_data",
    "quantitative_analyses",
    "ethical_considerations",
    "caveats_and_recommendations",
)
"""Mitchell et al.'s nine sections, in their order."""

Z95 = 1.959963984540054


def _iso(unix_ms: int) -> str | None:
    if not unix_ms:
        return None
    return datetime.fromtimestamp(unix_ms / 1000, tz=UTC).isoformat(timespec="seconds")


def metric_noise_std(plan: RunPlan, record: dict[str, Any]) -> dict[str, float]:
    """The standard error of a metrics release's `ibs` and `c_windowed`: the coordinator's
    recorded `<name>_se` (DP noise and sampling error) when the record has it, else the DP noise
    std computed here (records of older coordinators):

    Each of the n summing sites adds N(0, (σ·S)²) to its weighted release (S = the layout's
    sensitivity), so the sum's raw coordinate i has std σ·S·√n / weight_i. `ibs` is
    brier·max_weight / patients; `c_windowed` is concordant / comparable, whose denominator is not
    in the record: it is taken as events·window (each event compared with the next `window`
    patients), an upper bound of it, so that interval is a lower estimate. Both by the delta method.
    """
    layout = MetricsLayout()
    metrics = record.get("metrics", {})
    recorded = {
        name: float(metrics[f"{name}_se"])
        for name in ("ibs", "c_windowed", "oe_ratio")
        if name in metrics and f"{name}_se" in metrics
    }
    if recorded:  # the coordinator's own errors (noise and sampling, federation/metric_intervals)
        return recorded
    n = max(len(record.get("survivors", [])), 1)
    base = plan.privacy.metrics_noise_multiplier * layout.sensitivity * math.sqrt(n)
    std = [base / w for w in layout.weights]
    out: dict[str, float] = {}
    patients = float(metrics.get("patients", 0.0))
    if "ibs" in metrics and patients >= 1:
        out["ibs"] = layout.max_weight * std[2] / patients
    events = float(metrics.get("events", 0.0))
    if "c_windowed" in metrics and events >= 1:
        comparable = events * layout.window
        c = float(metrics["c_windowed"])
        out["c_windowed"] = math.sqrt(std[3] ** 2 + c * c * std[4] ** 2) / comparable
    return out


def metric_interval(value: float, std: float | None, high: float = 1.0) -> list[float] | None:
    """A 95% interval of the DP noise around `value`, clipped to [0, `high`] like the metrics
    (`high` is infinite for `oe_ratio`, a ratio of counts)."""
    if std is None or not math.isfinite(value):
        return None
    return [max(0.0, value - Z95 * std), min(high, value + Z95 * std)]


def evaluations(card: dict[str, Any]) -> list[dict[str, Any]]:
    """The card history's metrics releases that carry figures, oldest first."""
    return [r for r in card.get("history", []) if r.get("purpose") == "metrics" and r["metrics"]]


def _features(plan: RunPlan) -> list[dict[str, Any]]:
    rows = []
    for feature in plan.features:
        data = feature.model_dump(mode="json")
        rows.append({k: v for k, v in data.items() if v is not None})
    return rows


def build_model_card(
    card: dict[str, Any], status: admin_pb2.RunStatus | None = None, export_round: int = 0
) -> dict[str, Any]:
    """The nine-section card of an export (`card` is its coordinator model card)."""
    plan = RunPlan.model_validate(card["plan"])
    privacy: dict[str, dict[str, float]] = card.get("privacy", {})
    history: list[dict[str, Any]] = card.get("history", [])
    evals = evaluations(card)
    stats = next((r for r in history if r.get("purpose") == "stats"), None)
    sites = sorted({s for r in history for s in r.get("participants", [])} | set(privacy))
    model = plan.model
    kind = (
        "logistic-hazard linear model (discrete-time Cox)"
        if model.kind == "linear"
        else (f"discrete-time hazard MLP, hidden layers {list(model.hidden)}")
    )
    latest = evals[-1] if evals else None
    metrics_out: list[dict[str, Any]] = []
    if latest is not None:
        noise = metric_noise_std(plan, latest)
        for name in ("c_windowed", "ibs", "oe_ratio", "patients", "events"):
            if name in latest["metrics"]:
                value = float(latest["metrics"][name])
                std = noise.get(name)
                high = math.inf if name == "oe_ratio" else 1.0
                entry: dict[str, Any] = {
                    "name": name,
                    "value": value,
                    "round": latest["round"],
                    "dp_noise_std": std,
                    "interval_95_dp_noise": metric_interval(value, std, high)
                    if name in ("c_windowed", "ibs", "oe_ratio")
                    else None,
                }
                if f"{name}_resolvable" in latest["metrics"]:
                    entry["resolvable"] = latest["metrics"][f"{name}_resolvable"] > 0.5
                metrics_out.append(entry)
    return {
        "model_details": {
            "name": plan.name,
            "run_id": card.get("run_id"),
            "model_type": kind,
            "baseline_hazard": model.baseline,
            "exported_round": card.get("round", export_round),
            "run_status": card.get("status"),
            "dates": {
                "submitted": _iso(status.submitted_unix_ms) if status else None,
                "last_updated": _iso(status.updated_unix_ms) if status else None,
                "card_generated": datetime.now(tz=UTC).isoformat(timespec="seconds"),
            },
            "plan_sha256": card.get("plan_sha256") or plan.sha256(),
            "code_version": {
                "coordinator": card.get("code_version"),
                "fedctl": FEDCTL_VERSION,
            },
            "time_unit": plan.time_unit,
            "time_grid_cuts": list(plan.time_grid.cuts),
            "training": {
                "mode": plan.training.mode,
                "rounds": plan.training.rounds,
                "aggregation": plan.training.aggregation,
                "server_optimizer": plan.training.server_optimizer,
            },
            "developed_by": "the consortium's sites, by federated DP-SGD with secure aggregation",
        },
        "intended_use": {
            "purpose": plan.purpose,
            "primary_uses": [
                f"predict event-free survival at the grid's cuts (up to {plan.time_grid.cuts[-1]:g}"
                f" {plan.time_unit}) for patients like those of the consortium's sites",
                "rank patients by risk within one model (predict_risk)",
            ],
            "out_of_scope": [
                "survival beyond the last cut (the model knows nothing past the horizon)",
                "feature values outside the plan's declared ranges or levels (refused)",
                "individual clinical decisions without local validation",
                "populations unlike the sites' (no transport analysis was made)",
            ],
        },
        "factors": {
            "features": _features(plan),
            "groups": {"sites": sites, "subgroups": list(plan.evaluation.subgroups)},
            "evaluation_factors": _evaluation_factors(plan),
        },
        "metrics": {
            "definitions": {
                "c_windowed": "concordance of each event with the next 10 patients in time (not"
                " Harrell's C; runs well below it); compare across rounds",
                "ibs": "integrated Brier score with IPCW weights clipped at 4 (biased low)",
                "oe_ratio": "calibration in the large: observed / expected events up to the"
                " horizon, expected = the model's cumulative hazard at each patient's time"
                " (capped at 4); 1 = calibrated, > 1 = the model predicts too few events",
            },
            "intervals": "95% intervals from the coordinator's standard errors: the known DP noise"
            " (public σ, delta method) and the sampling error (federation/metric_intervals.py)",
            "results": metrics_out,
        },
        "evaluation_data": {
            "source": "each site's local held-out split (sites with fewer than"
            f" {plan.training.holdout_min_site_rows} usable rows hold nothing out)",
            "patients": latest["metrics"].get("patients") if latest else None,
            "events": latest["metrics"].get("events") if latest else None,
            "sites": latest.get("survivors", []) if latest else [],
            "note": "counts are DP-noised consortium totals",
        },
        "training_data": {
            "sites": sites,
            "patients_noised": stats["metrics"].get("patients") if stats else None,
            "privacy_budget_per_site": {
                "epsilon": plan.privacy.epsilon,
                "delta": plan.privacy.delta,
                "accountant": plan.privacy.accountant,
            },
            "epsilon_spent": {
                site: {
                    "run": float(p.get("epsilon_run", 0.0)),
                    "lifetime": float(p.get("epsilon_lifetime", 0.0)),
                }
                for site, p in sorted(privacy.items())
            },
            "standardization": "consortium means and stds from the DP statistics release",
        },
        "quantitative_analyses": {
            "per_round": [
                {"round": r["round"], "sites": r.get("survivors", []), **_consortium(r)}
                for r in evals
            ],
            **fairness_analyses(latest),
        },
        "ethical_considerations": [
            f"each site's data is protected by ({plan.privacy.epsilon:g}, {plan.privacy.delta:g})"
            "-differential privacy over the whole run; no patient row left a site",
            "sites' updates were summed by secure aggregation: no single site's release was seen",
            _fairness_statement(latest),
            f"processing purpose declared in the plan: {plan.purpose}",
        ],
        "caveats_and_recommendations": [
            "every metric is DP-noised; small consortia give wide intervals",
            "c_windowed is not comparable with a published Harrell's C",
            "validate locally on your own population before use",
            "predictions exist only at the time grid's cuts",
        ],
    }


def _consortium(record: dict[str, Any]) -> dict[str, Any]:
    """A record's consortium figures: the subgroup and importance ones have their own part."""
    return {k: v for k, v in record["metrics"].items() if ":" not in k}


def _evaluation_factors(plan: RunPlan) -> str:
    if not plan.evaluation.subgroups:
        return (
            "consortium totals only: the plan names no subgroups ([evaluation] subgroups);"
            " per-site figures only from sites whose policy publishes them"
            " (quantitative_analyses.per_site)"
        )
    return (
        f"the final evaluation released per-subgroup consortium totals for"
        f" {', '.join(plan.evaluation.subgroups)} (public levels and bands from the plan);"
        " per-site figures only from sites whose policy publishes them"
        " (quantitative_analyses.per_site)"
    )


def fairness_analyses(latest: dict[str, Any] | None) -> dict[str, Any]:
    """The final evaluation's subgroup figures, their gaps (flagged when larger than their
    uncertainty) and the permutation importances, from the record's prefixed metrics."""
    metrics = latest["metrics"] if latest else {}
    rows = subgroup_rows(metrics)
    out: dict[str, Any] = {
        "subgroups": [_subgroup_entry(r) for r in rows]
        or "not released: the plan names no subgroups ([evaluation] subgroups)",
        "subgroup_gaps": subgroup_gaps(metrics),
        # each site's own figures, only where its policy published them (fedctl/model_card_sites)
        "per_site": per_site_analyses(latest),
    }
    importance = importance_rows(metrics)
    if importance:
        out["permutation_importance"] = [
            {
                "feature": r["feature"],
                "delta_c": r["delta_c"],
                "interval_95_dp_noise": [r["delta_c_lo"], r["delta_c_hi"]],
                "resolvable": bool(r.get("delta_c_resolvable", 0.0) > 0.5),
            }
            for r in importance
        ]
    return out


def _subgroup_entry(row: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"feature": row["feature"], "level": row["level"]}
    for name in ("patients", "events", "c_windowed", "ibs", "oe_ratio"):
        if name in row:
            entry[name] = row[name]
            if name in ("c_windowed", "ibs", "oe_ratio") and f"{name}_lo" in row:
                entry[f"{name}_interval_95"] = [row[f"{name}_lo"], row[f"{name}_hi"]]
                entry[f"{name}_resolvable"] = bool(row.get(f"{name}_resolvable", 0.0) > 0.5)
    return entry


def _fairness_statement(latest: dict[str, Any] | None) -> str:
    gaps = subgroup_gaps(latest["metrics"] if latest else {})
    if not subgroup_rows(latest["metrics"] if latest else {}):
        return "fairness across patient subgroups was not evaluated (the plan names no subgroups)"
    flagged = [f"{g['metric']} by {g['feature']}" for g in gaps if g["flagged"]]
    if flagged:
        return (
            "subgroup gaps larger than their uncertainty (|gap| > 1.96 SE): "
            + ", ".join(flagged)
            + "; see quantitative_analyses.subgroup_gaps"
        )
    return (
        "no subgroup gap between resolvable figures exceeded its uncertainty (|gap| ≤ 1.96 SE);"
        " wide intervals and unresolvable figures can hide gaps"
    )


def _md_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return ", ".join(_md_value(v) for v in value) or "—"
    if value is None:
        return "—"
    return str(value)


def _md_block(value: Any, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(value, dict):
        lines = []
        for key, inner in value.items():
            if isinstance(inner, dict) or (
                isinstance(inner, list) and any(isinstance(v, dict | list) for v in inner)
            ):
                lines.append(f"{pad}- **{key}**:")
                lines.extend(_md_block(inner, depth + 1))
            else:
                lines.append(f"{pad}- **{key}**: {_md_value(inner)}")
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict):
                lines.append(
                    f"{pad}- " + "; ".join(f"{k}: {_md_value(v)}" for k, v in item.items())
                )
            else:
                lines.append(f"{pad}- {_md_value(item)}")
        return lines
    return [f"{pad}{_md_value(value)}"]


def to_markdown(card: dict[str, Any]) -> str:
    """The card as Markdown, one `##` heading per Mitchell section."""
    name = card["model_details"]["name"]
    lines = [f"# Model card: {name}", ""]
    for section in SECTIONS:
        lines.append(f"## {section.replace('_', ' ').capitalize()}")
        lines.append("")
        lines.extend(_md_block(card[section], 0))
        lines.append("")
    return "\n".join(lines)
