"""`python -m site_agent audit-privacy --config site.toml --model EXPORT_DIR`: a hospital's own
membership-inference audit of a released global model, on its own rows, nothing sent anywhere.

Only the site knows which of its patients the run trained on (its training partition, from the
keyed split in `site.toml`) and which it held out, so only the site can run this attack on the
real model: the loss-threshold attack of `site_agent.membership_audit` (members = training
partition, non-members = held-out partition), and optionally attribute inference of one
categorical feature. It prints aggregate figures only (counts, rates, the advantage), never a
patient's value, so its output may be shared with the consortium and cited in a DPIA
(`fedctl dpia --privacy-audit`, with `--output json`). The shadow-model attack and the canary
bound need many trainings and live in `benchmarks/privacy_audit.py` (docs/privacy-audit.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from federation.configfile import ConfigError
from federation.plan import PlanError, RunPlan
from site_agent import membership_audit as ma
from site_agent.config import load_site_config
from site_agent.data import DataError, LocalDataset

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def register(parser: argparse.ArgumentParser, name: str = "audit-privacy") -> None:
    parser.description = __doc__.splitlines()[0] if __doc__ else None
    parser.add_argument("--config", type=Path, required=True, help="site.toml")
    parser.add_argument(
        "--model", type=Path, required=True, help="a `fedctl export` folder (model_card.json)"
    )
    parser.add_argument(
        "--attribute", default=None, help="a categorical plan feature to attempt to infer"
    )
    parser.add_argument("--output", choices=("text", "json"), default="text")


class AuditInputError(ValueError):
    """The model folder or the site's data cannot support the audit; the message says why."""


def load_export(folder: Path) -> tuple[RunPlan, np.ndarray, list[float], list[float]]:
    """(plan, global vector, standardisation means, stds) of a `fedctl export` folder."""
    import torch

    from survival.models import build_model, flat_parameters

    card_path, model_path = folder / "model_card.json", folder / "model.pt"
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
        state = torch.load(model_path, weights_only=True)
    except (OSError, json.JSONDecodeError, RuntimeError) as exc:
        raise AuditInputError(
            f"cannot read the exported model in {folder.name}: {type(exc).__name__};"
            " pass the folder `fedctl export` wrote (model.pt and model_card.json)"
        ) from None
    plan = RunPlan.model_validate(card["plan"])
    model = build_model(plan.model, plan.feature_schema.n_encoded, plan.time_grid.n_intervals)
    model.load_state_dict(state)
    std = card["standardization"]
    return plan, flat_parameters(model), list(std["means"]), list(std["stds"])


def audit_rows(plan: RunPlan, data: LocalDataset) -> tuple[LocalDataset, np.ndarray]:
    """The rows the run read (after the plan's k-anonymity layer) and which were trained on."""
    from site_agent.anonymity import anonymise
    from site_agent.cohort import holds_out

    rows = anonymise(plan, data)
    if not holds_out(plan, rows) or rows.n_holdout == 0 or rows.n_train == 0:
        raise AuditInputError(
            "this site holds no patients out under the plan (fewer than"
            f" training.holdout_min_site_rows = {plan.training.holdout_min_site_rows} rows):"
            " with no non-members there is nothing to compare; use benchmarks/privacy_audit.py"
        )
    return rows, ~rows.holdout


def site_audit(
    plan: RunPlan,
    vector: np.ndarray,
    means: list[float],
    stds: list[float],
    data: LocalDataset,
    attribute: str | None = None,
) -> dict[str, Any]:
    """The threshold attack (and attribute inference) on this site's rows: aggregate figures."""
    rows, member = audit_rows(plan, data)
    nll = ma.patient_nll(plan, vector, rows.raw, rows.time, rows.event, means, stds)
    result = ma.roc(ma.logit_likelihood(nll), member)
    n1, n0 = result.members, result.non_members
    record: dict[str, Any] = {
        "kind": "site_privacy_audit",
        "plan_sha256": plan.sha256(),
        "epsilon": plan.privacy.epsilon,
        "attack": "loss threshold",
        "members": n1,
        "non_members": n0,
        "mia_advantage": result.advantage,
        "tpr_at_fpr_0.01": result.tpr_at_low_fpr,
        "auc": result.auc,
        # what max(TPR − FPR) reaches by chance alone at these sizes (two-sample KS, 95 %)
        "mia_advantage_chance_95": 1.358 * math.sqrt((n1 + n0) / (n1 * n0)),
    }
    if attribute is not None:
        record.update(_attribute(plan, vector, means, stds, rows, member, attribute))
    return record


def _attribute(
    plan: RunPlan,
    vector: np.ndarray,
    means: list[float],
    stds: list[float],
    rows: LocalDataset,
    member: np.ndarray,
    name: str,
) -> dict[str, Any]:
    feature = next((f for f in plan.feature_schema.features if f.name == name), None)
    levels = list(getattr(feature, "levels", None) or [])
    if feature is None or not levels or not feature.required:
        raise AuditInputError(f"--attribute {name}: not a required categorical feature of the plan")
    names = plan.feature_schema.encoded_names()
    columns = [names.index(f"{name}={level}") for level in levels[1:]]
    truth = np.zeros(rows.n_valid, dtype=np.int64)
    for k, column in enumerate(columns, start=1):
        truth[rows.raw[:, column] == 1.0] = k
    prior = np.bincount(truth[~member], minlength=len(levels)) / max(int((~member).sum()), 1)
    nll = []
    for k in range(len(levels)):
        raw = rows.raw.copy()
        raw[:, columns] = 0.0
        if k > 0:
            raw[:, columns[k - 1]] = 1.0
        nll.append(ma.patient_nll(plan, vector, raw, rows.time, rows.event, means, stds))
    hit = ma.attribute_guess(np.stack(nll, axis=1), prior) == truth
    return {
        "attribute": name,
        "attribute_accuracy_members": float(hit[member].mean()),
        "attribute_accuracy_non_members": float(hit[~member].mean()),
        "attribute_prior_accuracy": float(prior.max()),
        "attribute_gain": float(hit[member].mean() - prior.max()),
    }


def format_text(record: dict[str, Any]) -> str:
    lines = [
        f"membership inference ({record['attack']}) on this site's rows:"
        f" {record['members']} trained on, {record['non_members']} held out",
        f"  advantage max(TPR − FPR) = {record['mia_advantage']:.4f}"
        f" (chance alone reaches ≈ {record['mia_advantage_chance_95']:.4f} at 95 %)",
        f"  TPR at FPR 0.01 = {record['tpr_at_fpr_0.01']:.4f}, AUC = {record['auc']:.4f}",
        f"  plan ε = {record['epsilon']:g} per site",
    ]
    if "attribute" in record:
        lines.append(
            f"attribute inference of `{record['attribute']}`: accuracy on members"
            f" {record['attribute_accuracy_members']:.4f} vs the prior's"
            f" {record['attribute_prior_accuracy']:.4f} (gain {record['attribute_gain']:+.4f})"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the site's rows as a run of the model's plan reads them and audit the model."""
    from site_agent.check import _gate
    from site_agent.data import load_local_data

    try:
        config = load_site_config(args.config)
        plan, vector, means, stds = load_export(args.model)
        data = load_local_data(
            config.data,
            plan.feature_schema,
            time_unit=plan.time_unit,
            horizon=plan.time_grid.horizon,
            gate=_gate(config, plan),
        )
        record = site_audit(plan, vector, means, stds, data, args.attribute)
    except (ConfigError, PlanError, DataError, ValueError, KeyError) as exc:  # one line each
        print(f"site_agent audit-privacy: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        json.dumps(record, indent=2, sort_keys=True)
        if args.output == "json"
        else format_text(record)
    )
    return EXIT_OK
