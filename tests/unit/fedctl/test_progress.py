"""`fedctl run` / `fedctl watch` output (fedctl/progress.py): one line per change on a pipe,
lowercase JSON Lines, the live view on a terminal, and Ctrl-C that leaves the run going."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from fedctl import progress
from federation.wire.v1 import admin_pb2, federation_pb2

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")

PENDING, RUNNING = federation_pb2.RUN_STATE_PENDING, federation_pb2.RUN_STATE_RUNNING
COMPLETED, FAILED = federation_pb2.RUN_STATE_COMPLETED, federation_pb2.RUN_STATE_FAILED
OFFER, TRAIN = admin_pb2.RUN_STAGE_PLAN_OFFER, admin_pb2.RUN_STAGE_TRAIN
EVALUATE, DONE = admin_pb2.RUN_STAGE_EVALUATE, admin_pb2.RUN_STAGE_DONE
ACCEPTED, PENDING_D = admin_pb2.PLAN_DECISION_ACCEPTED, admin_pb2.PLAN_DECISION_PENDING
REFUSED = admin_pb2.PLAN_DECISION_REFUSED
LIFETIME_BEFORE = 1.5  # ε each site had spent before this run


def status(
    state: int = RUNNING,
    stage: int = TRAIN,
    rnd: int = 0,
    sites: Iterable[tuple[str, int, bool, float]] = (),
    metrics: dict[str, float] | None = None,
    metrics_round: int = 0,
    message: str = "",
    reason: dict[str, str] | None = None,
    updated: int = 0,
    total: int = 3,
) -> admin_pb2.RunStatus:
    sites = list(sites)
    return admin_pb2.RunStatus(
        run_id="run-x",
        plan_name="demo",
        state=state,
        stage=stage,
        round=rnd,
        total_rounds=total,
        sites_alive=sum(1 for s in sites if s[2]),
        sites=[
            admin_pb2.SiteRunStatus(
                site_id=name,
                decision=decision,
                alive=alive,
                epsilon_spent=eps,
                epsilon_lifetime=eps + LIFETIME_BEFORE if eps else 0.0,
                last_seen_unix_ms=updated,
                reason=(reason or {}).get(name, ""),
            )
            for name, decision, alive, eps in sites
        ],
        latest_metrics=[admin_pb2.Metric(name=k, value=v) for k, v in (metrics or {}).items()],
        metrics_round=metrics_round,
        message=message,
        updated_unix_ms=updated,
    )


def sites(eps: float, decision: int = ACCEPTED, alive: bool = True) -> list[Any]:
    return [("a", decision, alive, eps), ("b", decision, alive, eps)]


class FakeStub:
    """WatchRun yields the crafted statuses (an exception in the list is raised there)."""

    def __init__(self, stream: list[Any], get_run: admin_pb2.RunStatus | None = None) -> None:
        self.stream, self.get_run, self.get_run_calls = stream, get_run, 0

    def WatchRun(self, request: admin_pb2.WatchRunRequest) -> Iterator[admin_pb2.RunStatus]:
        for item in self.stream:
            if isinstance(item, BaseException):
                raise item
            yield item

    def GetRun(self, request: admin_pb2.GetRunRequest) -> admin_pb2.RunStatus:
        self.get_run_calls += 1
        assert self.get_run is not None, "unexpected GetRun"
        return self.get_run


OFFERING = [
    status(PENDING, OFFER, 0, [("a", PENDING_D, True, 0), ("b", PENDING_D, True, 0)]),
    status(PENDING, OFFER, 0, [("a", ACCEPTED, True, 0), ("b", PENDING_D, True, 0)]),
    status(PENDING, OFFER, 0, [("a", ACCEPTED, True, 0), ("b", PENDING_D, True, 0)], updated=5),
]
M1 = {"c_windowed": 0.61, "ibs": 0.18, "loss": 1.5}
EVERY_ROUND = [
    *OFFERING,
    status(rnd=1, sites=sites(0)),
    status(rnd=1, sites=sites(0)),  # a repeat
    status(rnd=1, stage=EVALUATE, sites=sites(0.8), metrics=M1, metrics_round=1),
    status(rnd=2, sites=sites(0.8), metrics=M1, metrics_round=1),
    status(rnd=2, sites=sites(0.8), metrics=M1, metrics_round=1, updated=9),  # a repeat
    status(COMPLETED, DONE, 2, sites(1.6), {"c_windowed": 0.64, "ibs": 0.17}, 2, "", total=2),
]
# evaluate_every = 2 over 3 rounds: the last round releases no metrics, and the final status
# streamed has none; the summary takes them from a final GetRun.
EVERY_OTHER = [
    *OFFERING,
    status(rnd=1, sites=sites(0)),
    status(rnd=2, stage=EVALUATE, sites=sites(1.0), metrics=M1, metrics_round=2),
    status(rnd=3, sites=sites(1.0)),
    status(COMPLETED, DONE, 3, sites(1.5)),
    status(COMPLETED, DONE, 3, sites(1.5)),  # a repeat
]
FINAL_WITH_METRICS = status(COMPLETED, DONE, 3, sites(1.5), M1, 2)
REFUSAL = [
    status(PENDING, OFFER, 0, [("a", REFUSED, True, 0)], reason={"a": "ε above policy"}),
    status(PENDING, OFFER, 0, [("a", REFUSED, True, 0)], reason={"a": "ε above policy"}),
    status(
        FAILED,
        DONE,
        0,
        [("a", REFUSED, True, 0)],
        reason={"a": "ε above policy"},
        message="quorum not reached",
    ),
]
EARLY_END = [*OFFERING, status(rnd=1, sites=sites(0.5))]  # coordinator restart mid-run
EARLY_END_FINAL = status(FAILED, TRAIN, 1, sites(0.5), message="coordinator restarted")


def run(stub: FakeStub, output: str = "text", **kw: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    clock = iter(range(1_800_000_000, 1_900_000_000, 3))
    code = progress.follow(
        stub, "run-x", output, out=out, err=err, clock=lambda: float(next(clock)), **kw
    )
    return code, out.getvalue(), err.getvalue()


CASES = {
    "every_round": (FakeStub(EVERY_ROUND), 0, "run run-x completed: 2/2 rounds"),
    "every_other": (FakeStub(EVERY_OTHER, FINAL_WITH_METRICS), 0, "run run-x completed"),
    "refusal": (FakeStub(REFUSAL, REFUSAL[-1]), 1, "run run-x failed in round 0/3"),
    "early_end": (FakeStub(EARLY_END, EARLY_END_FINAL), 1, "run run-x failed in round 1/3"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pipe_prints_changes_only_then_the_summary(case: str) -> None:
    stub, expected_code, head = CASES[case]
    code, out, err = run(stub)
    assert code == expected_code and not err
    lines = out.splitlines()
    summary_at = next(i for i, line in enumerate(lines) if line.startswith("run run-x "))
    changes = [STAMP.sub("", line) for line in lines[:summary_at]]
    assert all(STAMP.match(line) for line in lines[:summary_at])
    assert all(a != b for a, b in pairwise(changes)), out
    assert len(changes) == len(set(changes)), out  # a repeated status printed nothing
    assert lines[summary_at].startswith(head)
    assert lines[summary_at + 1].startswith("  ε spent: a=")
    assert lines[summary_at + 2].startswith(("  metrics (round ", "  metrics: none"))
    assert len(lines) == summary_at + 3
    assert "sites alive 2/1" not in out and "PLAN_" not in out and "RUN_" not in out


def test_pipe_lines_read_as_the_issue_says() -> None:
    _, out, _ = run(CASES["every_round"][0], plan_epsilon=3.0)
    assert "run-x pending round 0/3 plan_offer · sites answered 0/2" in out
    assert "run-x pending round 0/3 plan_offer · sites answered 1/2" in out
    assert "run-x round 2/3 train · sites 2/2 alive · ε a=0.80 b=0.80 · c_windowed=0.610" in out
    assert out.endswith(
        "  ε spent: a=1.60 b=1.60 (plan ε 3)\n  metrics (round 2): c_windowed=0.640 ibs=0.170\n"
    )


def test_summary_takes_metrics_from_getrun_when_the_last_status_had_none() -> None:
    stub = FakeStub(EVERY_OTHER, FINAL_WITH_METRICS)
    _, out, _ = run(stub)
    assert stub.get_run_calls == 1
    assert out.splitlines()[-1] == "  metrics (round 2): c_windowed=0.610 ibs=0.180 loss=1.500"
    # and when GetRun has none either, the last metrics streamed
    _, out, _ = run(FakeStub(EVERY_OTHER, EVERY_OTHER[-1]))
    assert out.splitlines()[-1] == "  metrics (round 2): c_windowed=0.610 ibs=0.180 loss=1.500"


def test_refusal_reason_shows_once() -> None:
    _, out, _ = run(CASES["refusal"][0])
    assert out.count("a refused the plan: ε above policy") == 1
    assert "quorum not reached" in out.splitlines()[-3]


def _lowercase_values(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            assert k == k.lower(), k
            yield from _lowercase_values(v, k)
    elif isinstance(value, list):
        for item in value:
            yield from _lowercase_values(item, key)
    else:
        yield key, value


@pytest.mark.parametrize("case", sorted(CASES))
def test_json_lines_are_lowercase_events(case: str) -> None:
    stub, expected_code, _ = CASES[case]
    _, out, _ = run(stub, "json")
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["event"] for e in events[:-1]] == ["status"] * (len(events) - 1)
    assert events[-1]["event"] == "finished" and events[-1]["exit_code"] == expected_code
    for e in events:
        for key, value in _lowercase_values(e):
            if key in ("state", "stage", "decision", "event"):
                assert value == value.lower() and "_state_" not in value, (key, value)
        assert set(e) >= {"time", "run_id", "state", "stage", "round", "total_rounds", "sites"}
        assert e["time"].endswith("Z") and e["run_id"] == "run-x"
    bodies = [json.dumps({k: v for k, v in e.items() if k != "time"}) for e in events]
    assert all(a != b for a, b in pairwise(bodies))
    if case.startswith("every"):
        assert events[-1]["metrics"], "the final event carries the latest metrics"


def test_json_event_shape() -> None:
    _, out, _ = run(CASES["every_round"][0], "json")
    events = [json.loads(line) for line in out.splitlines()]
    train = next(e for e in events if e["stage"] == "evaluate")
    assert train["state"] == "running" and train["round"] == 1 and train["total_rounds"] == 3
    assert train["sites"][0] == {
        "site": "a",
        "decision": "accepted",
        "alive": True,
        "epsilon": 0.8,
        "epsilon_lifetime": 0.8 + LIFETIME_BEFORE,
        "reason": "",
    }
    assert train["metrics"] == M1 and train["metrics_round"] == 1
    assert events[-1]["state"] == "completed" and events[-1]["rounds_completed"] == 2


@pytest.mark.parametrize("output", ["text", "json", "auto"])
def test_ctrl_c_leaves_the_run_going(output: str) -> None:
    code, out, err = run(FakeStub([*OFFERING, KeyboardInterrupt()]), output)
    assert code == 130
    assert "the run continues on the coordinator" in err
    assert "fedctl watch run-x" in err and "fedctl stop run-x" in err
    assert "run-x" in out and "fedctl watch" not in out


def test_auto_is_text_when_stdout_is_not_a_terminal() -> None:
    assert progress.choose_mode("auto", io.StringIO()) == "text"
    _, auto, _ = run(CASES["every_round"][0], "auto")
    _, text, _ = run(CASES["every_round"][0], "text")
    assert auto == text


LIVE_SCRIPT = """
import time
from fedctl import progress
from tests.unit.fedctl import test_progress as t

class SlowStub(t.FakeStub):
    def WatchRun(self, request):
        for item in super().WatchRun(request):
            time.sleep(0.05)
            yield item

code = progress.follow(SlowStub(t.EVERY_OTHER, t.FINAL_WITH_METRICS), "run-x", "auto",
                       plan_epsilon=3.0)
raise SystemExit(code)
"""


def run_under_pty(script: str) -> tuple[int, bytes]:
    """Run `script` with a pseudo-terminal as stdin/stdout/stderr; its exit code and output."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 110, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "PYTHONPATH": str(ROOT)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=ROOT,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks)


def test_live_view_updates_in_place_then_prints_the_summary() -> None:
    code, captured = run_under_pty(LIVE_SCRIPT)
    assert code == 0, captured.decode(errors="replace")
    assert b"\x1b[?25l" in captured  # cursor hidden while live
    assert b"\x1b[2K" in captured or b"\x1b[1A" in captured or b"\r" in captured
    assert re.search(rb"\x1b\[\d*A", captured), "moves the cursor up to redraw in place"
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", captured.decode(errors="replace"))
    assert "rounds" in text and "ε spent" in text and "1.50 / 3" in text
    assert "run run-x completed: 3/3 rounds" in text
    assert "metrics (round 2): c_windowed=0.610 ibs=0.180 loss=1.500" in text


def test_ctrl_c_propagates_when_not_detachable() -> None:
    """The demo stops its own federation on Ctrl-C: no "the run continues" there."""
    err = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        progress.follow(
            FakeStub([*OFFERING, KeyboardInterrupt()]),
            "run-x",
            "text",
            out=io.StringIO(),
            err=err,
            detachable=False,
        )
    assert err.getvalue() == ""


def test_the_live_view_shows_each_sites_epsilon_spent_run_limit_and_lifetime() -> None:
    """The site table of one rendered frame (rich, recorded instead of a terminal)."""
    from rich.console import Console

    from fedctl.live_view import LiveView

    now = 1_800_000_000.0
    view = LiveView(io.StringIO(), clock=lambda: now, plan_epsilon=3.0)
    view.show(status(rnd=2, sites=sites(0.8), updated=int((now - 7) * 1000)))
    console = Console(file=io.StringIO(), width=140, record=True)
    console.print(view._render())
    frame = console.export_text()
    assert "ε spent / run limit" in frame and "lifetime ε" in frame
    rows = [line for line in frame.splitlines() if line.startswith(("a ", "b "))]
    assert len(rows) == 2, frame
    for row in rows:
        assert "0.80 / 3" in row and f"{0.8 + LIFETIME_BEFORE:.2f}" in row, row
        assert "7s ago" in row and "accepted" in row, row


def test_the_live_view_keeps_subgroup_figures_out_of_its_metrics_line() -> None:
    """A real run releases dozens of `subgroup:…` figures; the view shows the overall ones and
    how many more the summary holds."""
    from fedctl.live_view import LiveView

    metrics = {"c_windowed": 0.61, "subgroup:sex=F:c_windowed": 0.6, "subgroup:sex=M:ibs": 0.2}
    view = LiveView(io.StringIO(), clock=lambda: 0.0, plan_epsilon=3.0)
    view.show(status(rnd=1, sites=sites(0.8), metrics=metrics, metrics_round=1))
    from rich.console import Console

    console = Console(file=io.StringIO(), width=140, record=True)
    console.print(view._render())
    line = next(x for x in console.export_text().splitlines() if x.startswith("metrics"))
    assert "c_windowed=0.610" in line and "sex=" not in line, line
    assert "+2 subgroup/feature figures" in line, line
