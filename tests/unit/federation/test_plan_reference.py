"""docs/plan.md is generated from the plan models: it must be fresh, complete, its example valid."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from federation import plan_reference
from federation.plan import parse_plan

pytestmark = pytest.mark.unit

STALE = "docs/plan.md is stale: run `python -m federation.plan_reference` and commit"


def test_committed_reference_matches_a_fresh_render() -> None:
    committed = plan_reference.DOC_PATH.read_text(encoding="utf-8")
    assert committed == plan_reference.render_plan_reference(), STALE


def test_every_field_of_every_plan_model_is_a_row() -> None:
    text = plan_reference.render_plan_reference()
    for title, model in plan_reference.SECTIONS:
        section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
        for name in model.model_fields:
            assert re.search(rf"^\| `{name}` \|", section, re.M), f"{title}: {name} missing"


def test_every_nested_model_has_a_section() -> None:
    documented = {model for _, model in plan_reference.SECTIONS}
    pending = list(documented)
    while pending:
        model = pending.pop()
        for field in model.model_fields.values():
            for nested in plan_reference.models_in(field.annotation):
                assert nested in documented, f"{nested.__name__} has no section"


def test_the_example_plan_in_the_reference_parses() -> None:
    text = plan_reference.render_plan_reference()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    plan = parse_plan(example)
    assert [f.name for f in plan.features] == ["age", "kappa", "sex"]


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plan.md"
    monkeypatch.setattr(plan_reference, "DOC_PATH", target)
    assert plan_reference.main(["--check"]) == 1
    assert plan_reference.main([]) == 0
    assert plan_reference.main(["--check"]) == 0


def test_types_and_defaults_are_plain_words() -> None:
    text = plan_reference.render_plan_reference()
    assert "| `rounds` | integer in [1, 5000] | `5` |" in text
    assert "| `sample_rate` | number in (0, 1] | `1.0` |" in text
    assert '| `mode` | one of local, distributed | `"local"` |' in text
    assert "| `sites` | list of strings or absent | absent |" in text
    assert "| `evaluate_every` | integer ≥ 0 |" in text
