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
from fedctl.dpia import EVIDENCE, cmd_dpia, odds_factor, read_privacy_audit, render_dpia, to_html
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


def _args(
    plan: Path, out: Path, *reports: Path, html: bool = False, audit: Path | None = None
) -> argparse.Namespace:
    return argparse.Namespace(
        plan=plan, site_report=list(reports), out=out, html=html, privacy_audit=audit
    )


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


def _audit_record(epsilon: float | None, lower: float, adv: float, **extra: Any) -> dict[str, Any]:
    """A record as `benchmarks/privacy_audit.py --json` writes it (the keys the DPIA reads)."""
    return {
        "kind": "privacy_audit",
        "control": False,
        "setting": "no DP" if epsilon is None else f"DP ε={epsilon:g}",
        "epsilon": epsilon,
        "epsilon_spent": None if epsilon is None else epsilon * 0.9,
        "empirical_epsilon_lower": lower,
        "empirical_confidence": 0.95,
        "bound_held": None if epsilon is None else lower <= epsilon * 0.9,
        "mia_advantage": adv,
        "tpr_at_fpr_0.01": adv / 4,
        "attribute": "sex",
        "attribute_gain": adv / 10,
        **extra,
    }


AUDIT = [
    _audit_record(None, 0.41, 0.0625),
    _audit_record(1.0, 0.0, 0.0125),
    _audit_record(3.0, 0.172, 0.0313),
    _audit_record(8.0, 0.25, 0.0438),
    {**_audit_record(None, 2.5, 0.5), "control": True, "setting": "control"},
]


def test_the_privacy_audit_figures_are_cited_in_risks_and_measures(plan: RunPlan) -> None:
    text = render_dpia(plan, [], AUDIT)
    assert "and an empirical privacy audit" in text
    risks = text[text.index("## (c) ") : text.index("## (d) ")]
    mia = next(line for line in risks.splitlines() if line.startswith("| Membership inference"))
    # the plan's ε (3) and the no-DP run, never the positive control
    assert "measured at ε = 3: attack advantage 0.0313, TPR 0.00783 at FPR 0.01" in mia
    assert "without DP 0.0625" in mia and "0.5" not in mia.split("without DP")[1]
    attribute = next(line for line in risks.splitlines() if line.startswith("| Attribute"))
    assert "ε = 3: guessing `sex` gains 0.00313 accuracy over the prior" in attribute
    assert "no DP: guessing `sex` gains 0.00625" in attribute
    measures = text[text.index("## (d) ") : text.index("## (e) ")]
    assert (
        "| ε = 3 (this plan) | 2.7 | 0.172 (95%) | yes | 0.0313 | 0.00783 | 0.00313 |" in measures
    )
    assert "| ε = 1 | 0.9 | 0 (95%) | yes |" in measures
    assert "| no DP | — | 0.41 (95%) | — (no DP) | 0.0625 |" in measures
    assert "| control | — | 2.5 (95%) | — (no DP) | 0.5 |" in measures
    assert "test_a_tiny_audit_runs_end_to_end_and_the_bound_holds" in measures
    assert "VIOLATED" not in text and "not a proof of safety" in measures


def test_a_bound_above_the_reported_epsilon_is_printed_loudly(plan: RunPlan) -> None:
    broken = [_audit_record(3.0, 3.4, 0.2)]  # lower bound 3.4 > ε spent 2.7
    text = render_dpia(plan, [], broken)
    assert "| ε = 3 (this plan) | 2.7 | 3.4 (95%) | **NO: VIOLATED" in text
    assert "do not rely on the DP figures above until this is explained" in text
    unmarked = [{k: v for k, v in broken[0].items() if k != "bound_held"}]
    assert "**NO: VIOLATED" in render_dpia(plan, [], unmarked)  # recomputed, not trusted


def test_without_an_audit_the_dpia_says_how_to_get_one(plan: RunPlan) -> None:
    text = render_dpia(plan, [])
    assert "**Empirical privacy audit**: none cited; run `benchmarks/privacy_audit.py" in text
    assert "(privacy audit)" not in text
    other = render_dpia(plan, [], [_audit_record(8.0, 0.1, 0.05)])
    assert "the privacy audit did not run ε = 3" in other


def test_k_anonymity_of_the_plan_and_the_sites_is_a_measure(plan: RunPlan) -> None:
    body = plan.model_dump()
    body["privacy"]["k_anonymity"] = {"k": 5, "quasi_identifiers": ["age", "sex"]}
    k_plan = RunPlan.model_validate(body)
    report = {
        "site": "hospital-b",
        "rows_read": 10,
        "rows_valid": 10,
        "excluded": {},
        "k_anonymity": {"k": 7, "l": 2, "quasi_identifiers": ["age", "sex"], "rows_suppressed": 3},
    }
    text = render_dpia(k_plan, [report])
    assert "suppresses the rows still in a class smaller than k = 5" in text
    assert "quasi-identifiers `age`, `sex`" in text
    assert "hospital-b: k = 7, l = 2 over ['age', 'sex'], 3 row(s) suppressed" in text
    assert "k-anonymity at k = 5 over age, sex (plan, enforced at each site)" in text
    assert "**k-anonymity**" not in render_dpia(plan, [report])  # not in a plan without it


def test_cmd_dpia_reads_the_audit_json_and_skips_other_records(
    tmp_path: Path, plan: RunPlan
) -> None:
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(plan_text(10))
    audit_file = tmp_path / "audit.json"
    extra = {"kind": "k_anonymity_cost", "epsilon": 3.0, "c_index": 0.79}
    audit_file.write_text(json.dumps([*AUDIT, extra]))
    assert read_privacy_audit(audit_file) == AUDIT
    out = tmp_path / "dpia.md"
    assert cmd_dpia(_args(plan_file, out, audit=audit_file)) == 0
    assert out.read_text(encoding="utf-8") == render_dpia(plan, [], AUDIT)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{}", "must be a JSON list of records"),
        ("not json", "is not JSON"),
        ('[{"kind": "k_anonymity_cost"}]', "has no privacy_audit record"),
        ('[{"epsilon": 3.0, "mia_advantage": 0.1}]', r"record 1 lacks \['empirical_epsilon_lower'"),
    ],
)
def test_a_bad_audit_json_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "audit.json"
    path.write_text(content)
    with pytest.raises(CliError, match=message):
        read_privacy_audit(path)
    with pytest.raises(CliError, match="cannot read privacy audit"):
        read_privacy_audit(tmp_path / "missing.json")
