"""`fedctl dpia`: every Art. 35(7) part is there, filled with the plan's real figures, the DPO's
form is left blank, the site checks' figures come through, and bad input is one CliError."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from fedctl.demo import plan_text
from fedctl.dpia import EVIDENCE, cmd_dpia, odds_factor, render_dpia, to_html
from fedctl.errors import CliError
from federation.plan import RunPlan, parse_plan
from federation.sessions import session_threshold

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
SECTIONS = ("## (a) ", "## (b) ", "## (c) ", "## (d) ", "## (e) ")
RISKS = (
    "Re-identification",
    "Membership inference",
    "Attribute inference",
    "Model inversion",
    "Cheating coordinator",
    "Compromised site",
    "Data breach at a site",
)


@pytest.fixture(scope="module")
def plan() -> RunPlan:
    return parse_plan(plan_text(10))


@pytest.fixture(scope="module")
def site_report(tmp_path_factory: pytest.TempPathFactory, plan: RunPlan) -> dict[str, Any]:
    """The JSON `python -m site_agent check --plan … --output json` prints, built by its code."""
    from fedctl.localfed import LocalFederation, flchain_hospitals
    from site_agent.check import build_report
    from site_agent.config import load_site_config

    fed = LocalFederation(tmp_path_factory.mktemp("dpia") / "fed", ("hospital-a", "hospital-b"))
    fed.prepare()
    flchain_hospitals(fed)
    report = build_report(load_site_config(fed.site_kit("hospital-a") / "site.toml"), plan)
    return dict(json.loads(json.dumps(report)))  # exactly what a file round trip gives


def test_every_section_and_the_plans_figures(plan: RunPlan) -> None:
    text = render_dpia(plan, [])
    positions = [text.index(heading) for heading in SECTIONS]
    assert positions == sorted(positions)
    assert plan.purpose in text and plan.sha256() in text
    assert f"ε = {plan.privacy.epsilon:g}" in text and f"δ = {plan.privacy.delta:g}" in text
    for feature in plan.features:
        assert f"- `{feature.name}`: justification: ________" in text  # one line per feature
        assert f"| `{feature.name}` | {feature.kind} |" in text
    assert "| `age` | numeric | bounds [40, 110]" in text
    assert "levels F, M (reference F)" in text
    assert f"{plan.time_grid.n_intervals} intervals" in text and "5000 days" in text
    t = session_threshold(plan, plan.quorum)
    assert f"| {plan.quorum} | {t} |" in text
    assert "A session of two reveals" in text  # the demo's quorum is 2
    assert f"`{plan.privacy.accountant}`" in text and "`local`" in text
    assert "retention_days` (default 365)" in text
    for risk in RISKS:
        assert re.search(rf"^\| {risk} \|.*☐ low ☐ medium ☐ high \|$", text, re.M), risk


def test_e_to_the_epsilon_is_printed_in_plain_words(plan: RunPlan) -> None:
    text = render_dpia(plan, [])
    assert math.isclose(math.exp(3.0), 20.0855, rel_tol=1e-4)
    assert "rise at most by a factor e^ε ≈ 20.1 (e^3)" in text
    assert "about one in 100,000" in text
    assert "at most 95.3% certainty" in text  # e^3 / (1 + e^3) from a 50% prior
    assert odds_factor(0.5) == "1.65" and odds_factor(10) == "22,026"


def test_the_dpo_form_is_left_blank(plan: RunPlan) -> None:
    text = render_dpia(plan, [])
    form = text[text.index("## (e) ") :]
    assert "DPO's advice (Art. 35(2)): ________" in form
    assert "| name | role | date | decision |" in form
    assert "| ________ | DPO | ________ | ☐ approve ☐ approve with conditions ☐ reject |" in form


def test_distributed_mode_and_listed_sites_are_described() -> None:
    body = parse_plan(plan_text(3)).model_dump()
    body["training"]["mode"] = "distributed"
    body["privacy"]["noise_shares"] = 3
    body.update(sites=["a-site", "b-site", "c-site", "d-site"], quorum=3)
    plan = RunPlan.model_validate(body)
    out = render_dpia(plan, [])
    assert "noise_shares = 3" in out and "1/3 of the target noise" in out
    assert "trusted_noise_sites" in out
    assert f"| 3 | {session_threshold(plan, 3)} |" in out
    assert f"| 4 | {session_threshold(plan, 4)} |" in out
    assert "A session of two reveals" not in out


def test_every_cited_test_exists() -> None:
    for measure, tests in EVIDENCE.items():
        for cited in tests:
            path, name = cited.split("::")
            source = (ROOT / path).read_text(encoding="utf-8")
            assert re.search(rf"^(async )?def {name}\(", source, re.M), (measure, cited)


def test_a_real_site_check_adds_its_figures(plan: RunPlan, site_report: dict[str, Any]) -> None:
    site_report["site"] = "hospital-a"
    text = render_dpia(plan, [site_report])
    rows, valid = site_report["rows_read"], site_report["rows_valid"]
    assert f"| hospital-a | {rows} | {valid} | none |" in text
    k = site_report["k_anonymity"]
    assert f"hospital-a: k = {k['k']}, l = {k['l']} over {k['quasi_identifiers']}" in text
    assert "| True | 3.0 |" in text and "another plan" not in text
    assert f"- hospital-a: {rows} rows read, {valid} valid" in text


def test_a_report_of_another_plan_and_a_retention_figure_are_shown(plan: RunPlan) -> None:
    report = {
        "site": "hospital-z",
        "rows_read": 120,
        "rows_valid": 100,
        "excluded": {"consent: none for purpose research.survival-model": 20},
        "plan": {"plan_sha256": "0" * 64, "accepted": True, "epsilon_run": 3.0},
        "policy": {"retention_days": 90},
    }
    text = render_dpia(plan, [report])
    assert "**checked against another plan**" in text
    assert "**Retention**: hospital-z: 90 days" in text
    assert "consent: none for purpose research.survival-model: 20" in text


def _args(plan: Path, out: Path, *reports: Path, html: bool = False) -> argparse.Namespace:
    return argparse.Namespace(plan=plan, site_report=list(reports), out=out, html=html)


def test_cmd_dpia_writes_markdown_and_html(
    tmp_path: Path, site_report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(plan_text(10))
    report_file = tmp_path / "hospital-a.json"
    report_file.write_text(json.dumps(site_report))
    out = tmp_path / "dpia.md"
    assert cmd_dpia(_args(plan_file, out, report_file, html=True)) == 0
    text = out.read_text(encoding="utf-8")
    assert text == render_dpia(parse_plan(plan_text(10)), [{**site_report, "site": "hospital-a"}])
    page = (tmp_path / "dpia.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert "<h2>(e) Consultation" in page and "<th>feature</th>" in page
    assert "<code>age</code>" in page and "<li>" in page
    assert "wrote" in capsys.readouterr().out


def test_to_html_escapes_and_renders_the_subset() -> None:
    page = to_html("# T <x>\n\npara **b** `a|b`\n\n- one\n- two\n\n| h |\n| --- |\n| a \\| b |\n")
    assert "<h1>T &lt;x&gt;</h1>" in page and "<strong>b</strong>" in page
    assert "<code>a|b</code>" in page and "<ul><li>one</li><li>two</li></ul>" in page
    assert "<td>a | b</td>" in page


def test_bad_input_is_one_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "dpia.md"
    with pytest.raises(CliError, match=r"cannot read plan .*none\.toml"):
        cmd_dpia(_args(tmp_path / "none.toml", out))
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n')
    with pytest.raises(CliError, match="invalid plan: features: missing required key") as exc:
        cmd_dpia(_args(bad, out))
    assert exc.value.exit_code == 2 and "\n" not in str(exc.value)
    good = tmp_path / "plan.toml"
    good.write_text(plan_text(10))
    junk = tmp_path / "junk.json"
    junk.write_text('{"rows": 1}')
    with pytest.raises(CliError, match=r"lacks \['rows_read', 'rows_valid', 'excluded'\]"):
        cmd_dpia(_args(good, out, junk))
    assert not out.exists()
