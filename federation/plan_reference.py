"""The plan reference (docs/plan.md), generated from the plan's pydantic models.

An operator writing a plan needs every key, its type, default and meaning in one place. Written by
hand, such a page drifts from the models the coordinator and sites actually validate with; built
from those models (and checked by a test, like the protobuf stubs), it cannot. Types and bounds
are put in plain words ("integer in [1, 5000]") because the reader writes TOML, not Python.

`python -m federation.plan_reference` rewrites docs/plan.md; `--check` exits 1 when it is stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from federation.plan import PrivacyPlan, RunPlan
from federation.plan_anonymity import KAnonymityPlan
from federation.plan_evaluation import EvaluationPlan
from federation.plan_messages import is_list, models_in
from federation.plan_secagg import SecAggPlan
from federation.plan_training import TrainingPlan
from survival.schema import CategoricalFeature, NumericFeature
from survival.spec import ModelSpec
from survival.timegrid import TimeGrid

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC_PATH = REPO_ROOT / "docs" / "plan.md"

# The survival models are shared, torch-free types that carry few field descriptions; their
# meanings are stated here, next to the only page that needs them. A field missing from both its
# model and this table stops the generator, so a new field cannot go undocumented.
SURVIVAL_MEANINGS: dict[tuple[type[BaseModel], str], str] = {
    (ModelSpec, "kind"): "linear: logit h_k(x) = α_k + x·β (a discrete-time Cox model);"
    " mlp: logit h_k(x) = α_k + MLP(x)_k with ReLU hidden layers",
    (ModelSpec, "hidden"): "mlp: the width of each hidden layer (each 1 to 4096)",
    (ModelSpec, "dropout"): "mlp: dropout probability of the hidden layers",
    (TimeGrid, "cuts"): "strictly increasing positive cut points in `time_unit`; the last is the"
    " horizon. Interval k is (c_{k-1}, c_k]; a time beyond the horizon is censored in the last"
    " interval. Never derived from private event times",
    (NumericFeature, "kind"): "selects a numeric feature",
    (NumericFeature, "name"): "the column every site provides (unique across features)",
    (NumericFeature, "min"): "public clinical lower bound (finite, below max)",
    (NumericFeature, "max"): "public clinical upper bound; the bounds clip values and bound DP"
    " sensitivity",
    (NumericFeature, "required"): "false: a missing value is imputed and flagged in a"
    " `name:missing` column; true: a row missing it is excluded",
    (NumericFeature, "impute"): "the fixed value of a missing entry (never a site mean); required"
    " exactly when the feature is optional, and within [min, max]",
    (NumericFeature, "out_of_bounds"): "clip: a value outside the bounds is clipped and counted;"
    " exclude: its row is excluded",
    (NumericFeature, "transform"): "none: the model sees the clipped value; log1p: log(1 +"
    " value), for a heavy-tailed non-negative measurement (needs min >= 0; the DP bounds become"
    " log(1 + min), log(1 + max); bounds, impute, cuts and bands stay in the column's units)",
    (CategoricalFeature, "kind"): "selects a categorical feature",
    (CategoricalFeature, "name"): "the column every site provides (unique across features)",
    (CategoricalFeature, "levels"): "the declared levels (at least two, distinct); dummy-coded"
    " against the first, the reference; any other value excludes its row",
    (CategoricalFeature, "required"): "false: a missing value is flagged in a `name:missing`"
    " column; true: a row missing it is excluded",
}

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("Top-level keys", RunPlan),
    ("[training]", TrainingPlan),
    ("[privacy]", PrivacyPlan),
    ("[privacy.k_anonymity]", KAnonymityPlan),
    ("[secagg]", SecAggPlan),
    ("[evaluation]", EvaluationPlan),
    ("[model]", ModelSpec),
    ("[time_grid]", TimeGrid),
    ('[[features]] with kind = "numeric"', NumericFeature),
    ('[[features]] with kind = "categorical"', CategoricalFeature),
]
"""Every model a plan is made of, in the order an operator meets them."""

CROSS_FIELD_RULES = [
    "feature names are unique, and so are their encoded column names",
    "`sites`, when given, has no duplicate and at least `quorum` entries",
    '`model.baseline = "per-site"` needs `training.mode = "local"`',
    "`quorum` ≥ `secagg.max_colluding_sites` + 2",
    "`secagg.threshold`, when given, is at most `quorum`",
    "with `privacy.stats_noise_multiplier` set, `privacy.epsilon` exceeds 1.1 × the ε of that"
    " statistics release alone at `privacy.delta` (the minimum workable ε: e.g. 1.40 for σ = 3,"
    " δ = 1e-5); unset, the release spends `privacy.stats_epsilon_share` of ε instead",
    "`privacy.k_anonymity.quasi_identifiers` are plan feature names; `cuts` name numeric ones"
    " among them (points strictly inside the feature's bounds), `hierarchies` categorical ones"
    " (keys among the feature's levels)",
    "`evaluation.subgroups` are distinct plan feature names; `evaluation.cuts` name numeric ones"
    " among them (points strictly increasing, strictly inside the feature's bounds)",
]
"""RunPlan's model validator, in words (a validator has no schema to generate them from)."""

EXAMPLE_PLAN = """\
name = "flchain-example"
quorum = 3
time_unit = "days"
seed = 7
purpose = "research.survival-model"

[training]
mode = "local"
rounds = 10
local_epochs = 2
batch_size = 256
learning_rate = 0.05
server_optimizer = "fedadam"
server_learning_rate = 0.1

[privacy]
epsilon = 3.0
delta = 1e-5
accountant = "pld"

[secagg]
max_colluding_sites = 0
offer_timeout_s = 600

[model]
kind = "mlp"
hidden = [32, 32]
baseline = "shared"

[time_grid]
cuts = [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]

[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110

[[features]]
kind = "numeric"
name = "kappa"
min = 0.01
max = 50
required = false
impute = 1.2

[[features]]
kind = "categorical"
name = "sex"
levels = ["F", "M"]
"""
"""A complete plan that parses (the test checks it), shown at the end of the reference."""

_WORDS = {int: "integer", float: "number", str: "string", bool: "true or false"}
_PLURAL = {"integer": "integers", "number": "numbers", "string": "strings"}
_SINGULAR = {"entries": "entry", "characters": "character"}


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(metadata: list[Any]) -> str:
    """Bounds as an interval or a single comparison: "in (0, 1]", "≥ 1", "< 2147483648"."""
    low = high = None
    for item in metadata:
        if isinstance(item, at.Ge | at.Gt):
            low = ("[", item.ge) if isinstance(item, at.Ge) else ("(", item.gt)
        elif isinstance(item, at.Le | at.Lt):
            high = ("]", item.le) if isinstance(item, at.Le) else (")", item.lt)
    if low and high:
        return f" in {low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}"
    if low:
        return f" {'≥' if low[0] == '[' else '>'} {_number(low[1])}"
    if high:
        return f" {'≤' if high[0] == ']' else '<'} {_number(high[1])}"
    return ""


def _lengths(metadata: list[Any], unit: str) -> str:
    low = next((m.min_length for m in metadata if isinstance(m, at.MinLen)), None)
    high = next((m.max_length for m in metadata if isinstance(m, at.MaxLen)), None)
    if low is not None and high is not None:
        return f", {low} to {high} {unit}"
    if low is not None:
        return f", at least {low} {unit if low != 1 else _SINGULAR[unit]}"
    return f", at most {high} {unit}" if high is not None else ""


def _base_type(annotation: Any) -> str:
    """A type without its bounds, in words; tables are named by their section."""
    if typing.get_origin(annotation) is Literal:
        options = [str(arg) for arg in typing.get_args(annotation)]
        return f'"{options[0]}"' if len(options) == 1 else "one of " + ", ".join(options)
    if typing.get_origin(annotation) is typing.Annotated:
        return _base_type(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is dict:
        return "table (key → " + _base_type(typing.get_args(annotation)[1]) + ")"
    if typing.get_origin(annotation) in (list, tuple):
        args = [arg for arg in typing.get_args(annotation) if arg is not Ellipsis]
        if models_in(annotation):
            return "array of [[features]] tables"
        item = _base_type(args[0]) if args else "value"
        return "list of " + _PLURAL.get(item, item)
    models = models_in(annotation)
    if models:
        return f"table [{_table_of(models[0])}]"
    if isinstance(annotation, type) and annotation in _WORDS:
        return _WORDS[annotation]
    return str(annotation)  # pragma: no cover - a new kind of field: visible in the page


def _table_of(model: type[BaseModel], root: type[BaseModel] = RunPlan) -> str:
    """The dotted TOML table of a model, searched through the plan's nested tables."""
    for key, value in root.model_fields.items():
        inner = models_in(value.annotation)
        if inner == [model]:
            return key
        if len(inner) == 1 and inner[0] is not root:
            try:
                return f"{key}.{_table_of(model, inner[0])}"
            except LookupError:
                continue
    raise LookupError(model.__name__)


def plain_type(field: FieldInfo) -> str:
    """The field's type and bounds in words, e.g. "number in (0, 1] or absent"."""
    annotation = field.annotation
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    words = _base_type(annotation)
    metadata = list(field.metadata)
    if is_list(annotation):
        words += _lengths(metadata, "entries")
    elif words == "string":
        words += _lengths(metadata, "characters")
        pattern = next(
            (getattr(m, "pattern", None) for m in metadata if hasattr(m, "pattern")), None
        )
        if pattern:
            words += f" matching `{pattern}`"
    else:
        words += _range(metadata)
    return words + (" or absent" if optional else "")


def plain_default(field: FieldInfo) -> str:
    """The default as it would be written in TOML; "required" when there is none."""
    default = field.default
    if default is PydanticUndefined:
        return "required"
    if default is None:
        return "absent"
    if isinstance(default, BaseModel):
        return "all defaults"
    if isinstance(default, tuple):
        default = list(default)
    return f"`{json.dumps(default)}`" if not isinstance(default, float) else f"`{default!r}`"


def meaning(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The field's description, or survival's meaning for it; refuses an undocumented field."""
    text = field.description or SURVIVAL_MEANINGS.get((model, name))
    if not text:
        raise ValueError(f"{model.__name__}.{name} has no description: add one")
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _section(title: str, model: type[BaseModel]) -> list[str]:
    doc = inspect.cleandoc(model.__doc__ or "")
    lines = [f"## {title}", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        row = [f"`{name}`", plain_type(field), plain_default(field), meaning(model, name, field)]
        lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
    return [*lines, ""]


def render_plan_reference() -> str:
    """docs/plan.md: a section per TOML table, the cross-field rules, and an example plan."""
    lines = [
        "# Plan reference",
        "",
        "<!-- Generated by `python -m federation.plan_reference` from federation/plan.py and the"
        " survival models: do not edit by hand. -->",
        "",
        "A run plan is a TOML (or JSON) document; `fedctl` validates it before anything is stored,"
        " and every site checks it against its own policy. Everything in it is public. A key that"
        ' is not listed here is refused; "absent" means the key is left out, and "all defaults"'
        " that the table may be left out.",
        "",
    ]
    for title, model in SECTIONS:
        lines += _section(title, model)
    lines += ["## Rules across keys", ""]
    lines += [f"- {rule}" for rule in CROSS_FIELD_RULES]
    lines += ["", "## Example plan", "", "```toml", EXAMPLE_PLAN.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federation.plan_reference")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/plan.md is stale")
    args = parser.parse_args(argv)
    text = render_plan_reference()
    if args.check:
        current = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.is_file() else ""
        if current != text:
            print(
                f"{DOC_PATH} is stale: run `python -m federation.plan_reference` and commit it",
                file=sys.stderr,
            )
            return 1
        return 0
    DOC_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOC_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
