"""Every dependency arrow of docs/architecture.md, and no import cycle among our modules.

Two views of the same rules:

- **static**: every module's imports, parsed with `ast` (function-level and `TYPE_CHECKING`
  imports included: a lazy import is still an arrow), resolved to the module they name;
- **at run time**: each package's modules imported in a fresh interpreter, then `sys.modules`
  inspected, which also catches what a third-party import drags in (torch, opacus).

The allowed arrows (a package may always import itself):

    secagg       → nothing of ours
    survival     → nothing of ours
    federation   → secagg; survival.schema, survival.spec, survival.timegrid (torch-free)
    coordinator  → federation, secagg, the same torch-free survival modules; never torch/opacus
    site_agent   → federation, secagg, survival
    fedctl       → federation, secagg, survival, site_agent; the coordinator only as a process

If one of these fails, move the code, do not widen the rule: see docs/architecture.md.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("secagg", "survival", "federation", "coordinator", "site_agent", "fedctl")
TORCH_FREE_SURVIVAL = frozenset(
    {"survival", "survival.schema", "survival.spec", "survival.timegrid"}
)
"""The survival modules that import neither torch nor opacus (`survival/__init__.py` says so)."""

ALLOWED: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # package: (packages it may import as a whole, single modules it may import)
    "secagg": (frozenset(), frozenset()),
    "survival": (frozenset(), frozenset()),
    "federation": (frozenset({"secagg"}), TORCH_FREE_SURVIVAL),
    "coordinator": (frozenset({"federation", "secagg"}), TORCH_FREE_SURVIVAL),
    "site_agent": (frozenset({"federation", "secagg", "survival"}), frozenset()),
    "fedctl": (frozenset({"federation", "secagg", "survival", "site_agent"}), frozenset()),
}

TORCH_FREE = ("federation", "coordinator")
"""Packages whose modules must never load torch or opacus (the coordinator image has neither)."""


# ------------------------------------------------------------------------------- the module graph
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of ours: dotted name → file."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[_module_name(path)] = path
    return found


def _imported_names(name: str, path: Path) -> Iterator[str]:
    """Every dotted name `path` imports, at any depth of the file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _resolve(dotted: str) -> str | None:
    """The module of ours that `dotted` names (the longest prefix that is one), else None."""
    parts = dotted.split(".")
    if parts[0] not in PACKAGES:
        return None
    while parts:
        candidate = ".".join(parts)
        if candidate in modules():
            return candidate
        parts.pop()
    return None


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module → the modules of ours it imports."""
    edges: dict[str, frozenset[str]] = {}
    for name, path in modules().items():
        targets = {_resolve(dotted) for dotted in _imported_names(name, path)}
        edges[name] = frozenset(t for t in targets if t is not None and t != name)
    return edges


def _allowed(package: str, target: str) -> bool:
    top = target.split(".")[0]
    packages, single_modules = ALLOWED[package]
    return top == package or top in packages or target in single_modules


def _rule(package: str) -> str:
    packages, single_modules = ALLOWED[package]
    parts = [", ".join(sorted(packages))] if packages else []
    if single_modules:
        parts.append("the modules " + ", ".join(sorted(single_modules)))
    return "; ".join(parts) or "nothing of ours"


def find_cycle(edges: Mapping[str, frozenset[str]]) -> list[str] | None:
    """One cycle of `edges` as [a, b, …, a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(edges):
        if state.get(start):
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(edges[start])))]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state.get(child) == 1:
                path = [n for n, _ in stack]
                return [*path[path.index(child) :], child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(edges.get(child, frozenset())))))
    return None


# ------------------------------------------------------------------------------- static rules
def test_every_package_is_covered() -> None:
    names = modules()
    for package in PACKAGES:
        assert package in names, f"{package}/__init__.py not found under {ROOT}"
    assert set(ALLOWED) == set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_dependency_arrows(package: str) -> None:
    broken = sorted(
        f"{source} imports {target}"
        for source, targets in graph().items()
        if source.split(".")[0] == package
        for target in targets
        if not _allowed(package, target)
    )
    assert not broken, f"{package} may import only {_rule(package)}:\n  " + "\n  ".join(broken)


def test_no_import_cycles() -> None:
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_cycle_search_finds_cycles() -> None:
    """The control for the test above: a graph with a cycle (direct or longer) is caught."""
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset()}) is None
    assert find_cycle({"a": frozenset({"b"}), "b": frozenset({"a"})}) == ["a", "b", "a"]
    edges = {"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"d", "b"})}
    assert find_cycle(edges) == ["b", "c", "b"]


# ------------------------------------------------------------------------------- at run time
_PROBE = """
import importlib, json, sys
sys.path.insert(0, {root!r})
failed = {{}}
for name in {names!r}:
    try:
        importlib.import_module(name)
    except BaseException as exc:  # SystemExit from a __main__ too
        failed[name] = f"{{type(exc).__name__}}: {{exc}}"
print(json.dumps({{"loaded": sorted(sys.modules), "failed": failed}}))
"""


def _runtime_modules(package: str) -> tuple[set[str], dict[str, str]]:
    """Import every module of `package` (except `__main__`s) in a fresh interpreter; returns
    what is in `sys.modules` afterwards and the modules that failed to import."""
    names = [n for n in modules() if n.split(".")[0] == package and not n.endswith("__main__")]
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(root=str(ROOT), names=names)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return set(report["loaded"]), report["failed"]


@pytest.mark.parametrize("package", PACKAGES)
def test_importing_a_package_loads_only_what_it_may(package: str) -> None:
    loaded, failed = _runtime_modules(package)
    assert not failed, f"modules of {package} that do not import: {failed}"
    ours = {name for name in loaded if name.split(".")[0] in PACKAGES}
    problems = [f"loaded {name}" for name in sorted(ours) if not _allowed(package, name)]
    if package in TORCH_FREE:
        heavy = sorted(name for name in loaded if name.split(".")[0] in ("torch", "opacus"))
        problems += [
            f"loaded {name} (the coordinator never loads torch or opacus)" for name in heavy[:3]
        ]
    assert not problems, f"importing every {package} module " + "; ".join(problems)
