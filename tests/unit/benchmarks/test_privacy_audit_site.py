"""`python -m site_agent audit-privacy`: a site audits an exported model on its own rows (members
= its training partition), prints aggregates only, and refuses what it cannot audit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedctl.demo import plan_text
from federation.plan import RunPlan, parse_plan
from site_agent import audit_cli
from site_agent.__main__ import main as site_main
from site_agent.config import load_site_config
from site_agent.data import load_local_data
from survival.models import build_model, load_flat_parameters
from survival.schema import Standardization
from survival.spec import baseline_logits, initial_parameters

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, RunPlan]:
    """hospital-a of the demo and an export of a model trained (no DP) on its training rows."""
    from fedctl.localfed import LocalFederation, flchain_hospitals
    from site_agent.train import LocalTrainer, TrainerConfig

    root = tmp_path_factory.mktemp("audit")
    fed = LocalFederation(root / "fed", ("hospital-a", "hospital-b"))
    fed.prepare()
    flchain_hospitals(fed)
    config_path = fed.site_kit("hospital-a") / "site.toml"
    plan = parse_plan(plan_text(2))
    data = load_local_data(load_site_config(config_path).data, plan.feature_schema)
    raw, time_, event = data.split(holdout=False)
    std = Standardization.from_matrix(data.raw)
    interval, event_k = plan.time_grid.discretize(time_, event)
    p, k = plan.feature_schema.n_encoded, plan.time_grid.n_intervals
    start = initial_parameters(
        plan.model, p, k, 0, baseline_logits(*plan.time_grid.interval_counts(time_, event))
    )
    config = TrainerConfig(
        rounds=1,
        local_epochs=5,
        batch_size=64,
        learning_rate=0.05,
        optimizer="adam",
        max_grad_norm=1.0,
        target_epsilon=None,
        target_delta=1e-5,
    )
    trainer = LocalTrainer(plan.model, p, k, config, time_.size, seed=0)
    update = trainer.train_round(start, std.apply(raw), interval, event_k)
    model = build_model(plan.model, p, k)
    load_flat_parameters(model, start + update.delta)
    export = root / "export"
    export.mkdir()
    torch.save(model.state_dict(), export / "model.pt")
    card = {"plan": plan.model_dump(mode="json"), "standardization": std.model_dump()}
    (export / "model_card.json").write_text(json.dumps(card))
    return config_path, export, plan


def test_a_site_audits_the_exported_model_on_its_own_partitions(
    site: tuple[Path, Path, RunPlan], capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, export, plan = site
    argv = ["audit-privacy", "--config", str(config_path), "--model", str(export)]
    assert site_main([*argv, "--attribute", "sex", "--output", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    data = load_local_data(load_site_config(config_path).data, plan.feature_schema)
    assert record["members"] == data.n_train and record["non_members"] == data.n_holdout
    assert record["plan_sha256"] == plan.sha256() and record["epsilon"] == plan.privacy.epsilon
    for key in ("mia_advantage", "tpr_at_fpr_0.01", "auc", "attribute_accuracy_members"):
        assert 0.0 <= record[key] <= 1.0, key
    assert abs(record["attribute_gain"]) <= 1.0
    # aggregates only: every value is a number or a short label, no per-patient array
    assert all(isinstance(v, int | float | str) for v in record.values())
    assert site_main(argv) == 0
    text = capsys.readouterr().out
    assert "membership inference (loss threshold)" in text and "TPR at FPR 0.01" in text


def test_what_cannot_be_audited_is_one_clear_line(
    site: tuple[Path, Path, RunPlan], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path, export, plan = site
    argv = ["audit-privacy", "--config", str(config_path), "--model", str(tmp_path)]
    assert site_main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot read the exported model" in err and str(tmp_path) not in err
    argv = ["audit-privacy", "--config", str(config_path), "--model", str(export)]
    assert site_main([*argv, "--attribute", "age"]) == 2
    assert "not a required categorical feature" in capsys.readouterr().err
    body = plan.model_dump()
    body["training"]["holdout_min_site_rows"] = 100_000  # the site then holds nothing out
    data = load_local_data(load_site_config(config_path).data, plan.feature_schema)
    vector = np.zeros(1)
    with pytest.raises(audit_cli.AuditInputError, match="holds no patients out"):
        audit_cli.site_audit(RunPlan.model_validate(body), vector, [], [], data)
