"""`fedctl status|runs|sites|run --output json` against a real coordinator: documented field names,
lowercase words for every enum, never a protobuf spelling (`RUN_STATE_RUNNING`).

The fields and words are read from docs/operations.md ("JSON output of ..."), so the output and
the documentation cannot drift apart; every value of every wire enum fedctl prints must have a
word there (a new .proto value without one fails here, not in a user's script).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from fedctl.cli import run as fedctl
from fedctl.localfed import LocalFederation
from fedctl.wire_names import PLAN_DECISIONS, RUN_STAGES, RUN_STATES, SITE_STATES, UNKNOWN
from federation.wire.v1 import admin_pb2, federation_pb2
from tests.integration.coordinator_process import AGE_PLAN, TWO_SITES, coordinator_only, site_stub

pytestmark = pytest.mark.integration

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
SECTION = DOC.split("#### JSON output of", 1)[1].split("\n### ", 1)[0]
PROTOBUF_SPELLING = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$")


def documented_fields(table_head: str) -> set[str]:
    """The backticked names in the first column of the section's table headed `table_head`,
    plus the keys quoted inside its cells (`{"site_id", "decision", …}`)."""
    table = SECTION.split(f"| {table_head} |", 1)[1].split("\n\n", 1)[0]
    names: set[str] = set()
    for row in table.splitlines()[2:]:
        first, rest = row.split("|")[1], "|".join(row.split("|")[2:])
        names.update(re.findall(r"`([a-z_]+)`", first))
        names.update(re.findall(r'"([a-z_]+)"', rest))
    return names


@pytest.mark.parametrize(
    ("enum", "words"),
    [
        (federation_pb2.RunState, RUN_STATES),
        (admin_pb2.RunStage, RUN_STAGES),
        (admin_pb2.PlanDecision, PLAN_DECISIONS),
        (admin_pb2.SiteState, SITE_STATES),
    ],
)
def test_every_enum_value_has_a_documented_lowercase_word(
    enum: EnumTypeWrapper, words: dict[int, str]
) -> None:
    for value in enum.values():
        word = words.get(value)
        assert word is not None, f"{enum.Name(value)} has no word in fedctl/wire_names.py"
        assert word == word.lower() and not PROTOBUF_SPELLING.match(word), word
        if word != UNKNOWN:
            assert f"`{word}`" in SECTION or f"`{word}`" in DOC, f"{word} not documented"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    with coordinator_only(tmp_path_factory.mktemp("json") / "fed", TWO_SITES) as federation:
        policy = federation_pb2.PolicySummary(max_epsilon_per_run=5.0, lifetime_epsilon_budget=10.0)
        for name in TWO_SITES:
            site_stub(federation, name).Hello(
                federation_pb2.HelloRequest(site_id=name, agent_version="t", policy=policy)
            )
        yield federation


def json_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert fedctl(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, out
    parsed: dict[str, Any] = json.loads(out[0])
    return parsed


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)
    elif isinstance(value, str):
        yield value


def test_status_runs_sites_and_run_print_the_documented_fields(
    fed: LocalFederation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = ["--config", str(fed.operator_config())]
    plan = tmp_path / "plan.toml"
    plan.write_text(AGE_PLAN.replace("{name}", "json-fields") + "[privacy]\nepsilon = 2\n")

    submitted = json_of(["run", str(plan), "--detach", *config, "--output", "json"], capsys)
    assert set(submitted) == {"run_id", "plan_sha256", "errors"}
    run_id = submitted["run_id"]

    status = json_of(["status", run_id, *config, "--output", "json"], capsys)
    runs = json_of(["runs", *config, "--output", "json"], capsys)
    sites = json_of(["sites", *config, "--output", "json"], capsys)

    run_fields = documented_fields("run field")
    assert set(status) | {"site_id", "decision", "alive", "epsilon_spent"} <= run_fields
    assert {k for s in status["sites"] for k in s} <= run_fields
    assert {s["site_id"] for s in status["sites"]} == set(TWO_SITES)
    assert status["state"] in {w for w in RUN_STATES.values() if w != UNKNOWN}
    assert status["stage"] in set(RUN_STAGES.values())
    assert {s["decision"] for s in status["sites"]} <= set(PLAN_DECISIONS.values())

    assert set(runs) == {"runs"} and run_id in {r["run_id"] for r in runs["runs"]}
    assert all(set(r) == set(status) for r in runs["runs"])

    site_fields = documented_fields("site field (`fedctl sites`)")
    assert set(sites) == {"online_timeout_s", "sites"}
    listed = {s["site_id"]: s for s in sites["sites"]}
    assert set(listed) == set(TWO_SITES)
    for site in listed.values():
        assert set(site) <= site_fields and set(site["policy"]) <= site_fields
        assert site["state"] == "online" and site["policy"]["max_epsilon_per_run"] == 5.0

    for document in (submitted, status, runs, sites):
        for text in strings(document):
            assert not PROTOBUF_SPELLING.match(text), text
