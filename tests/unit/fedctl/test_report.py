"""`fedctl report` without a server: `write_report` on an ExportRun answer and a RunStatus built
here (as the export tests build theirs), the HTML's sections and embedded figures, and the
Mitchell model card's sections with the plan's own figures."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedctl import cli
from fedctl.model_card import SECTIONS
from fedctl.report import CARD_JSON, CARD_MD, epsilon_series, write_report
from federation.plan import RunPlan
from federation.vectors import encode_vector
from federation.wire.v1 import admin_pb2, federation_pb2
from survival.spec import baseline_logits, initial_parameters
from tests.unit.survival.test_export import MEANS, STDS, export_plan

pytestmark = pytest.mark.unit

SITES = ("hospital-a", "hospital-b", "hospital-c")
EVENTS = [30.0, 25, 30, 30, 20]
AT_RISK = [3000.0, 2900, 2700, 2400, 2000]
EPSILON, DELTA = 2.5, 1e-6
ROUNDS = 4
SECTION_IDS = ("training", "privacy", "calibration", "hazard-ratios", "sites", "model-card")


def crafted_plan(kind: str) -> RunPlan:
    """test_export's crafted plan, with this report's rounds and budget."""
    return export_plan(
        kind,
        "report",
        training={"rounds": ROUNDS},
        privacy={"epsilon": EPSILON, "delta": DELTA},
    )


def crafted_export(kind: str = "linear") -> admin_pb2.ExportRunResponse:
    """An ExportRun answer shaped like `coordinator/convert.py model_card`'s."""
    plan = crafted_plan(kind)
    base = baseline_logits(np.array(EVENTS), np.array(AT_RISK))
    if kind == "linear":
        vector = np.concatenate([base, [0.6, 0.3, 0.4, 0.1]]).astype(np.float32)
    else:
        vector = initial_parameters(plan.model, 4, 5, seed=3, baseline=base)
    history: list[dict[str, Any]] = [
        {"purpose": "stats", "round": 0, "attempt": 0, "participants": list(SITES),
         "survivors": list(SITES), "metrics": {"patients": 3012.4}},
    ]  # fmt: skip
    for r in range(1, ROUNDS + 1):
        common = {"round": r, "attempt": 0, "participants": list(SITES)}
        history.append({"purpose": "update", **common, "survivors": list(SITES), "metrics": {}})
        metrics = {"patients": 6010.0, "events": 1500.0, "c_windowed": 0.55 + 0.02 * r,
                   "ibs": 0.2 - 0.01 * r}  # fmt: skip
        survivors = list(SITES[:2]) if r == 2 else list(SITES)  # hospital-c dropped once
        history.append({"purpose": "metrics", **common, "survivors": survivors, "metrics": metrics})
    card = {
        "run_id": f"run-{kind}",
        "plan": plan.model_dump(mode="json"),
        "plan_sha256": plan.sha256(),
        "status": "completed",
        "message": "",
        "round": ROUNDS,
        "feature_names": plan.feature_schema.encoded_names(),
        "standardization": {"means": MEANS, "stds": STDS},
        "history": history,
        "privacy": {
            s: {"epsilon_run": 2.1 + 0.1 * i, "epsilon_lifetime": 4.0 + i}
            for i, s in enumerate(SITES)
        },
        "code_version": "0.1.0",
    }
    return admin_pb2.ExportRunResponse(
        run_id=f"run-{kind}",
        round=ROUNDS,
        global_vector=encode_vector(vector),
        model_card_json=json.dumps(card, sort_keys=True),
    )


def crafted_status(kind: str = "linear") -> admin_pb2.RunStatus:
    status = admin_pb2.RunStatus(
        run_id=f"run-{kind}",
        plan_name=f"report-{kind}",
        state=federation_pb2.RUN_STATE_COMPLETED,
        stage=admin_pb2.RUN_STAGE_DONE,
        round=ROUNDS,
        total_rounds=ROUNDS,
        sites_alive=3,
        submitted_unix_ms=1_764_590_000_000,
        updated_unix_ms=1_764_590_600_000,
    )
    for i, site in enumerate(SITES):
        status.sites.add(
            site_id=site,
            decision=admin_pb2.PLAN_DECISION_ACCEPTED,
            alive=True,
            epsilon_spent=2.1 + 0.1 * i,
        )
    return status


def crafted_audit() -> list[dict[str, Any]]:
    return [
        {"actor": f"site:{site}", "action": "result",
         "detail": {"run_id": "run-linear", "round": r, "epsilon_run": 0.5 + 0.4 * r + 0.1 * i}}
        for r in range(ROUNDS + 1) for i, site in enumerate(SITES)
    ]  # fmt: skip


CONSORTIUM = {"events": EVENTS, "at_risk": AT_RISK, "sites": 3}


def _images(page: str) -> list[bytes]:
    found = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    return [base64.b64decode(b) for b in found]


def test_the_report_has_every_section_and_one_embedded_png_per_figure(tmp_path: Path) -> None:
    path = write_report(
        crafted_export(), crafted_status(), tmp_path, audit=crafted_audit(), consortium=CONSORTIUM
    )
    page = path.read_text()
    for ident in SECTION_IDS:
        assert f'<section id="{ident}">' in page
    images = _images(page)
    assert len(images) == 4  # training, ε, calibration, forest
    assert page.count("<img ") == 4
    assert all(image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 2000 for image in images)
    assert "http://" not in page and "https://" not in page  # nothing to fetch when viewing
    assert "from the audit log" in page
    assert "Greenwood plus the known noise" in page
    for site in SITES:
        assert site in page
    for name in ("model.pt", "model_card.json", CARD_JSON, CARD_MD):
        assert (tmp_path / name).is_file()


def test_an_mlp_report_notes_that_it_has_no_hazard_ratios(tmp_path: Path) -> None:
    page = write_report(crafted_export("mlp"), None, tmp_path).read_text()
    assert len(_images(page)) == 3
    assert "has no hazard ratios" in page
    assert "No consortium Kaplan–Meier" in page  # the card alone carries no interval counts
    assert "final, from the status" in page


def test_the_model_card_has_every_mitchell_section_with_the_plans_figures(tmp_path: Path) -> None:
    write_report(crafted_export(), crafted_status(), tmp_path, consortium=CONSORTIUM)
    card = json.loads((tmp_path / CARD_JSON).read_text())
    assert list(card) == list(SECTIONS)
    details = card["model_details"]
    assert details["plan_sha256"] == crafted_plan("linear").sha256()
    assert details["time_unit"] == "days"
    assert details["dates"]["submitted"].startswith("2025-12-01")
    assert details["code_version"]["coordinator"] == "0.1.0" and details["code_version"]["fedctl"]
    budget = card["training_data"]["privacy_budget_per_site"]
    assert (budget["epsilon"], budget["delta"]) == (EPSILON, DELTA)
    assert card["training_data"]["sites"] == list(SITES)
    assert card["training_data"]["epsilon_spent"]["hospital-b"]["run"] == pytest.approx(2.2)
    assert [f["name"] for f in card["factors"]["features"]] == ["age", "sex", "creatinine"]
    results = {m["name"]: m for m in card["metrics"]["results"]}
    c = results["c_windowed"]
    assert c["value"] == pytest.approx(0.63) and c["round"] == ROUNDS
    low, high = c["interval_95_dp_noise"]
    assert low < c["value"] < high
    markdown = (tmp_path / CARD_MD).read_text()
    for section in SECTIONS:
        assert f"## {section.replace('_', ' ').capitalize()}" in markdown
    assert "2.5" in markdown and "1e-06" in markdown


def test_epsilon_falls_back_to_the_final_figures_without_an_audit() -> None:
    card = json.loads(crafted_export().model_card_json)
    series, over_rounds = epsilon_series(card, crafted_status(), None)
    assert not over_rounds
    assert series["hospital-c"] == [(ROUNDS, pytest.approx(2.3))]
    series, over_rounds = epsilon_series(card, None, crafted_audit())
    assert over_rounds and len(series["hospital-a"]) == ROUNDS + 1


def test_without_an_audit_the_records_epsilon_gives_the_curve_over_rounds() -> None:
    card = json.loads(crafted_export().model_card_json)
    for r, record in enumerate(card["history"]):
        record["epsilon"] = {"hospital-a": 0.1 * (r + 1), "hospital-b": 0.2 * (r + 1)}
    series, over_rounds = epsilon_series(card, crafted_status(), None)
    assert over_rounds
    rounds = sorted({int(record["round"]) for record in card["history"]})
    assert [r for r, _ in series["hospital-a"]] == rounds
    eps = [e for _, e in series["hospital-b"]]
    assert eps == sorted(eps) and eps[-1] == pytest.approx(0.2 * len(card["history"]))


def test_fedctl_report_is_registered_and_explains_a_missing_matplotlib(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    code = cli.run(["report", "run-x", "--out", "/nonexistent"])
    assert code != 0
    assert "pip install 'concordia[report]'" in capsys.readouterr().err


class _FakeAdmin:
    """The three Admin calls `fedctl report` makes, answered from the crafted run; the audit
    log is paged like the coordinator's (entries after `after_seq`, at most `limit`)."""

    def __init__(self) -> None:
        self.entries = [
            admin_pb2.AuditEntry(
                seq=i + 1, actor=e["actor"], action=e["action"], detail_json=json.dumps(e["detail"])
            )
            for i, e in enumerate(crafted_audit())
        ]

    def ExportRun(self, request: admin_pb2.ExportRunRequest) -> admin_pb2.ExportRunResponse:
        return crafted_export()

    def GetRun(self, request: admin_pb2.GetRunRequest) -> admin_pb2.RunStatus:
        return crafted_status()

    def GetAudit(self, request: admin_pb2.GetAuditRequest) -> admin_pb2.GetAuditResponse:
        after = [e for e in self.entries if e.seq > request.after_seq][: request.limit]
        return admin_pb2.GetAuditResponse(entries=after)


def test_fedctl_report_fetches_export_status_and_audit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import fedctl.report

    monkeypatch.setattr(fedctl.report, "admin_stub", lambda _config: (_FakeAdmin(), None))
    monkeypatch.setattr(fedctl.report, "fetch_audit", _paged(fedctl.report.fetch_audit))
    code = cli.run(["report", "run-linear", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "report.html" in capsys.readouterr().out
    page = (tmp_path / "out" / "report.html").read_text()
    assert "from the audit log" in page  # ε over rounds came through the paged audit
    assert len(_images(page)) == 4
    assert "No consortium Kaplan–Meier" in page  # a server's export carries no interval counts


def _paged(fetch: Any) -> Any:
    return lambda stub, run_id: fetch(stub, run_id, page=4)  # several pages of audit


def _sgd_export() -> admin_pb2.ExportRunResponse:
    """The linear export of a plan whose noise has a closed form (SGD at the sites, FedAvg)."""
    export = crafted_export()
    card = json.loads(export.model_card_json)
    card["plan"]["training"]["optimizer"] = "sgd"
    plan = RunPlan.model_validate(card["plan"])
    card["plan"], card["plan_sha256"] = plan.model_dump(mode="json"), plan.sha256()
    export.model_card_json = json.dumps(card, sort_keys=True)
    return export


def test_the_hazard_ratios_carry_their_dp_noise_intervals_in_card_and_report(
    tmp_path: Path,
) -> None:
    page = write_report(_sgd_export(), crafted_status(), tmp_path).read_text()
    table = json.loads((tmp_path / CARD_JSON).read_text())["quantitative_analyses"]
    ratios = table["hazard_ratios"]["ratios"]
    assert [r["feature"] for r in ratios] == ["age", "sex=M", "creatinine", "creatinine:missing"]
    for row, beta in zip(ratios, [0.6, 0.3, 0.4, 0.1], strict=True):
        assert row["ratio"] == pytest.approx(np.exp(beta), rel=1e-6)
        assert row["lower"] < row["ratio"] < row["upper"]
        # symmetric on the log scale: one noise sd for every coefficient
        assert np.log(row["upper"] / row["ratio"]) == pytest.approx(
            np.log(row["ratio"] / row["lower"]), rel=1e-9
        )
    assert "DP noise only" in table["hazard_ratios"]["covers"]
    assert "DP noise only" in page and len(_images(page)) == 4
    assert "hazard_ratios" in (tmp_path / CARD_MD).read_text()


def test_a_ratio_of_a_transformed_feature_names_the_transform(tmp_path: Path) -> None:
    """A feature the plan log-transforms is modelled as log(1 + value): its row says so."""
    export = crafted_export()
    card = json.loads(export.model_card_json)
    for feature in card["plan"]["features"]:
        if feature["name"] == "creatinine":
            feature["transform"] = "log1p"
    plan = RunPlan.model_validate(card["plan"])
    card["plan"], card["plan_sha256"] = plan.model_dump(mode="json"), plan.sha256()
    export.model_card_json = json.dumps(card, sort_keys=True)
    write_report(export, crafted_status(), tmp_path)
    table = json.loads((tmp_path / CARD_JSON).read_text())["quantitative_analyses"]
    transforms = {r["feature"]: r.get("transform") for r in table["hazard_ratios"]["ratios"]}
    assert transforms == {
        "age": None,
        "sex=M": None,
        "creatinine": "log1p",
        "creatinine:missing": None,
    }


def test_a_plan_without_a_closed_form_draws_ratios_without_bars_and_says_why(
    tmp_path: Path,
) -> None:
    page = write_report(crafted_export(), crafted_status(), tmp_path).read_text()
    table = json.loads((tmp_path / CARD_JSON).read_text())["quantitative_analyses"]
    assert all("lower" not in r for r in table["hazard_ratios"]["ratios"])
    assert "training.optimizer" in table["hazard_ratios"]["covers"]
    assert "no interval" in page


def test_the_forest_plot_draws_the_interval_bars() -> None:
    from fedctl import report_plots

    ratios = {"age": 1.8, "sex=M": 0.9}
    bare = base64.b64decode(report_plots.forest_plot(ratios))
    bars = base64.b64decode(
        report_plots.forest_plot(ratios, {"age": (1.5, 2.2), "sex=M": (0.7, 1.2)})
    )
    assert bare.startswith(b"\x89PNG") and bars.startswith(b"\x89PNG")
    assert bare != bars
