"""Plain-word plan validation messages, for operators who write plans by hand.

Pydantic's own wording ("Extra inputs are not permitted", "Input tag 'numerc' found using 'kind'
does not match…", list indices in locations) names the mechanism, not the mistake. An operator
editing a TOML plan needs the table, the key, the feature by its name, and, for a typo, the word
they probably meant. This module only rewords: it never accepts or refuses anything itself, so
`federation.plan` stays the one definition of what a valid plan is. It takes the root model as an
argument rather than importing `federation.plan`, which imports it.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Node = type[BaseModel] | dict[str, type[BaseModel]] | None
"""What a plan location holds: one model, a `kind`-tagged choice of models, or a plain value."""


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold, through list, Optional, unions and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for model in models_in(arg):
            if model not in found:
                found.append(model)
    return found


def _node(annotation: Any) -> Node:
    found = models_in(annotation)
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    return {str(model.model_fields["kind"].default): model for model in found}


def is_list(annotation: Any) -> bool:
    """Whether a field holds a list (or tuple): its TOML form is an array."""
    if typing.get_origin(annotation) in (list, tuple):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(is_list(arg) for arg in typing.get_args(annotation))
    return False


class _Location:
    """A pydantic error location walked through the models and the submitted data."""

    def __init__(self, root: type[BaseModel], loc: Sequence[int | str], data: Any) -> None:
        node: Node = root
        value = data
        self.parts: list[str] = []
        self.model: type[BaseModel] | None = root  # the model the last key belongs to
        self.parent: list[str] = []
        for part in loc:
            if isinstance(part, int):
                value = value[part] if isinstance(value, list) and 0 <= part < len(value) else None
                label = f"[{part}]"
                name = value.get("name") if isinstance(value, dict) else None
                if isinstance(name, str) and name:
                    label += f" ({name})"
                self.parts[-1] += label
                continue
            if isinstance(node, dict):  # the tag of a discriminated union: not a key
                node = node.get(part)
                self.model = node if isinstance(node, type) else None
                continue
            self.model = node if isinstance(node, type) else None
            self.parent = list(self.parts)
            self.parts.append(part)
            field = self.model.model_fields.get(part) if self.model is not None else None
            node = _node(field.annotation) if field is not None else None
            value = value.get(part) if isinstance(value, dict) else None
        self.node = node
        self.tag_models = node if isinstance(node, dict) else None

    @property
    def where(self) -> str:
        return ".".join(self.parts) or "plan"

    @property
    def table(self) -> str:
        """The TOML table the last key sits in, as an operator would write it."""
        if not self.parent:
            return "at the top level"
        if any("[" in part for part in self.parent):  # an array of tables: name the entry
            return "in " + ".".join(self.parent)
        return "in [" + ".".join(self.parent) + "]"


def _annotation(model: type[BaseModel] | None, key: str) -> Any:
    field = model.model_fields.get(key) if model is not None else None
    return field.annotation if field is not None else None


def _suggest(word: object, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    # not "; did you mean": "; " separates errors, and coordinator/admin_service.py splits on it
    return f" (did you mean {close[0]!r}?)" if close else ""


def _options(text: str) -> list[str]:
    """ "'a', 'b' or 'c'" (pydantic's rendering of the choices) -> ["a", "b", "c"]."""
    return [part.strip().strip("'\"") for part in text.replace(" or ", ", ").split(",") if part]


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str | int | float | bool) else type(value).__name__


def plain_message(item: ErrorDetails, loc: _Location) -> str:
    """One error in words an operator can act on; pydantic's own wording when there are none."""
    kind, msg = item["type"], item["msg"]
    ctx = item.get("ctx") or {}
    key = loc.parts[-1] if loc.parts else "plan"
    if kind == "extra_forbidden":
        fields = list(loc.model.model_fields) if loc.model is not None else []
        return f"unknown key {key!r} {loc.table}{_suggest(key, fields)}"
    if kind == "missing":
        table = isinstance(loc.node, type) and not is_list(_annotation(loc.model, key))
        return "missing required key" + (f" (the [{loc.where}] table)" if table else "")
    if kind == "union_tag_invalid":
        tags = _options(str(ctx.get("expected_tags", "")))
        tag = ctx.get("tag")
        return f"kind {tag!r} is not one of {', '.join(tags)}{_suggest(tag, tags)}"
    if kind == "union_tag_not_found":
        tags = list(loc.tag_models or {})
        return "missing required key 'kind'" + (f" (one of {', '.join(tags)})" if tags else "")
    if kind in ("literal_error", "enum"):
        options = _options(str(ctx.get("expected", "")))
        got = item.get("input")
        return f"{_shown(got)} is not one of {', '.join(options)}{_suggest(got, options)}"
    if kind in ("value_error", "assertion_error"):
        return msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    rest = msg.partition(" ")[2]
    if rest.startswith("should "):  # "Input should be greater than 0": name the key instead
        return f"{key} {rest}, got {_shown(item.get('input'))}"
    return msg


def validation_problems(error: ValidationError, root: type[BaseModel], data: Any) -> list[str]:
    """Every error of one validation, each as `location: plain message`, in pydantic's order.
    One entry per problem: a message may itself contain ";" or ":"."""
    lines = []
    for item in error.errors():
        loc = _Location(root, item["loc"], data)
        lines.append(f"{loc.where}: {plain_message(item, loc)}")
    return lines
