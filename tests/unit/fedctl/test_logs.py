"""`fedctl logs RUN` (fedctl/logs.py) against a fake Admin stub: only the run's entries, `--site`
keeps one site's, one readable line per event, JSON Lines with stable fields, `--follow` pages on
from its cursor without repeating an entry and stops when GetRun says the run ended."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

import grpc
import pytest

from fedctl import logs
from fedctl.cli import build_parser
from fedctl.cli import run as fedctl
from federation.wire.v1 import admin_pb2, federation_pb2

pytestmark = pytest.mark.unit

RUN = "run-0001"
OTHER = "run-0002"
T0 = 1_796_126_400.0  # 2026-12-01T12:00:00Z
RUNNING, COMPLETED = federation_pb2.RUN_STATE_RUNNING, federation_pb2.RUN_STATE_COMPLETED
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  \S+ {2,}[a-z_]+ {2,}\S")


def entry(seq: int, actor: str, action: str, **detail: Any) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        seq=seq,
        ts=T0 + seq,
        actor=actor,
        action=action,
        detail_json=json.dumps(detail, sort_keys=True),
        prev_hash="0" * 64,
        hash=f"{seq:064x}",
    )


def run_log() -> list[admin_pb2.AuditEntry]:
    """A short run as the coordinator writes it, interleaved with another run's and with
    coordinator-wide entries that name no run."""
    return [
        entry(1, "coordinator", "roster_loaded", sites=["hospital-a", "hospital-b"]),
        entry(2, "site:hospital-a", "hello", agent_version="1.0"),
        entry(
            3,
            "urn:concordia:operator:alice:admin",
            "run_submitted",
            run_id=RUN,
            plan_sha256="ab" * 32,
            candidates=["hospital-a", "hospital-b", "hospital-c"],
        ),
        entry(4, "site:hospital-a", "result", run_id=RUN, kind="plan_offer", round=0, bytes=0),
        entry(
            5,
            "site:hospital-c",
            "result",
            run_id=RUN,
            kind="plan_offer",
            round=0,
            bytes=0,
            error="policy_refused",
            message="feature bmi not allowed",
        ),
        entry(6, "site:hospital-a", "result", run_id=OTHER, kind="train", round=1, bytes=9),
        entry(
            7,
            "site:hospital-a",
            "result",
            run_id=RUN,
            kind="train",
            round=3,
            bytes=1200,
            epsilon_run=1.2,
        ),
        entry(
            8,
            "coordinator",
            "run_progress",
            run_id=RUN,
            status="running",
            phase="train",
            round=3,
            attempt=1,
            step="local",
            message="retrying train round 3: 1 sites ready, 2 needed",
        ),
        entry(
            9,
            "coordinator",
            "aggregated",
            run_id=RUN,
            purpose="update",
            round=3,
            attempt=1,
            participants=["hospital-a", "hospital-b", "hospital-c"],
            survivors=["hospital-a", "hospital-b"],
            metrics={},
        ),
        entry(10, "urn:concordia:site:hospital-b", "denied", method="GetAudit", reason="role"),
        entry(
            11,
            "coordinator",
            "run_progress",
            run_id=RUN,
            status="completed",
            phase="done",
            round=3,
            attempt=0,
            step="local",
            message="3 rounds done",
        ),
    ]


class FakeStub:
    """GetAudit pages `entries` by after_seq/limit as the coordinator does; GetRun answers from
    `states`, one per call (the last repeats). `grow` appends entries after each GetAudit call
    that reached the end, as a live coordinator would between polls."""

    def __init__(
        self,
        entries: list[admin_pb2.AuditEntry],
        states: list[Any],
        grow: list[list[admin_pb2.AuditEntry]] | None = None,
    ) -> None:
        self.entries = list(entries)
        self.states = list(states)
        self.grow = list(grow or [])
        self.audit_calls: list[tuple[int, int]] = []
        self.run_calls = 0

    def GetAudit(self, request: admin_pb2.GetAuditRequest) -> admin_pb2.GetAuditResponse:
        self.audit_calls.append((request.after_seq, request.limit))
        page = [e for e in self.entries if e.seq > request.after_seq][: request.limit]
        response = admin_pb2.GetAuditResponse(entries=page, head_seq=len(self.entries))
        if len(page) < request.limit and self.grow:
            self.entries.extend(self.grow.pop(0))
        return response

    def GetRun(self, request: admin_pb2.GetRunRequest) -> admin_pb2.RunStatus:
        index = min(self.run_calls, len(self.states) - 1)
        self.run_calls += 1
        return admin_pb2.RunStatus(
            run_id=request.run_id,
            state=self.states[index],
            round=3,
            total_rounds=3,
            updated_unix_ms=int((T0 + 99) * 1000),
            message="3 rounds done",
        )


def events(stub: FakeStub, **kwargs: Any) -> list[logs.Event]:
    return list(logs.stream(stub, RUN, sleep=lambda _s: None, **kwargs))


def test_only_the_runs_entries_oldest_first() -> None:
    got = events(FakeStub(run_log(), [COMPLETED]))
    assert [e.seq for e in got] == [3, 4, 5, 7, 8, 9, 11]
    assert {e.run_id for e in got} == {RUN}
    assert got[0].action == "run_submitted" and got[-1].action == "run_progress"


def test_site_filter_keeps_that_sites_own_entries() -> None:
    got = events(FakeStub(run_log(), [COMPLETED]), site="hospital-c")
    assert [(e.seq, e.site, e.action) for e in got] == [(5, "hospital-c", "result")]
    assert events(FakeStub(run_log(), [COMPLETED]), site="nowhere") == []


def test_text_lines_read_as_a_story() -> None:
    lines = [logs.text_line(e) for e in events(FakeStub(run_log(), [COMPLETED]))]
    assert all(LINE.match(line) for line in lines), lines
    assert lines[0].startswith("2026-12-01T12:00:03Z  operator:alice ")
    assert "run_submitted" in lines[0]
    assert "offered to 3 sites (hospital-a, hospital-b, hospital-c)" in lines[0]
    assert lines[1].endswith("result         plan offer: accepted")
    assert "hospital-c" in lines[2]
    assert lines[2].endswith("plan offer: refused (policy_refused: feature bmi not allowed)")
    assert lines[3] == (
        "2026-12-01T12:00:07Z  hospital-a      result         train round 3: accepted (ε run 1.20)"
    )
    assert lines[4].endswith(
        "progress       running, train round 3 (attempt 2):"
        " retrying train round 3: 1 sites ready, 2 needed"
    )
    assert lines[5].endswith(
        "aggregated     train round 3 (attempt 2): 2 of 3 sites (hospital-a, hospital-b),"
        " dropped hospital-c"
    )
    assert lines[6].endswith("run completed in round 3: 3 rounds done")
    text = "\n".join(lines)
    assert "RUN_STATE" not in text and "PLAN_DECISION" not in text and "TASK_ERROR" not in text


def test_json_lines_parse_with_stable_fields() -> None:
    got = events(FakeStub(run_log(), [COMPLETED]))
    records = [json.loads(logs.json_line(e)) for e in got]
    assert all(
        set(r) == {"seq", "time", "actor", "action", "run_id", "site", "detail"} for r in records
    )
    refusal = records[2]
    assert refusal["time"] == "2026-12-01T12:00:05.000Z"
    assert refusal["actor"] == "site:hospital-c" and refusal["site"] == "hospital-c"
    assert refusal["action"] == "result" and refusal["run_id"] == RUN
    assert refusal["detail"]["error"] == "policy_refused"
    assert records[0]["site"] is None
    assert records[0]["actor"] == "urn:concordia:operator:alice:admin"


def test_follow_stops_when_the_run_ends_without_duplicates() -> None:
    initial = run_log()[:7]  # up to the train result (seq 7)
    later = run_log()[7:]
    # Polls: GetRun says running twice; entries arrive in two batches; then completed. The second
    # batch repeats seq 9 (an overlapping page must not print it twice).
    stub = FakeStub(initial, [RUNNING, RUNNING, COMPLETED], grow=[later[:2], [later[1], later[3]]])
    got = events(stub, follow=True)
    seqs = [e.seq for e in got]
    assert seqs == [3, 4, 5, 7, 8, 9, 11]
    assert len(seqs) == len(set(seqs))
    assert stub.run_calls == 3
    # Each poll reads on from the last seq it saw, never from the start again.
    assert [after for after, _ in stub.audit_calls] == [0, 7, 9]


def test_follow_adds_the_end_from_getrun_when_the_log_does_not_say_it() -> None:
    without_end = run_log()[:-1]
    got = events(FakeStub(without_end, [RUNNING, COMPLETED]), follow=True)
    last = got[-1]
    assert (last.seq, last.action, last.detail["status"]) == (None, "run_finished", "completed")
    assert logs.text_line(last).endswith("run_finished   run completed in round 3: 3 rounds done")
    assert json.loads(logs.json_line(last))["seq"] is None


def test_without_follow_a_live_run_is_read_once() -> None:
    stub = FakeStub(run_log()[:7], [RUNNING])
    got = events(stub)
    assert [e.seq for e in got] == [3, 4, 5, 7]
    assert stub.run_calls == 1


def test_long_logs_are_read_in_pages() -> None:
    many = [
        entry(i, "site:hospital-a", "result", run_id=RUN, kind="train", round=1)
        for i in range(1, 2502)
    ]
    stub = FakeStub(many, [COMPLETED])
    got = events(stub)
    assert len(got) == 2501 + 1  # and the closing line: no terminal run_progress in this log
    assert [after for after, _ in stub.audit_calls] == [0, 1000, 2000]


def test_unknown_actions_show_their_detail() -> None:
    odd = entry(1, "coordinator", "something_new", run_id=RUN, widgets=3)
    (event,) = [e for e in events(FakeStub([odd], [RUNNING]))]
    assert logs.summary(event) == '{"widgets":3}'


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["logs", *argv])


def test_command_is_registered_with_its_options() -> None:
    args = _args(RUN, "--follow", "--site", "hospital-a", "--output", "json")
    assert args.handler is logs.cmd_logs
    assert (args.run_id, args.follow, args.site, args.output) == (RUN, True, "hospital-a", "json")


def _with_stub(monkeypatch: pytest.MonkeyPatch, stub: Any) -> None:
    monkeypatch.setattr(logs, "admin_stub", lambda _config: (stub, None))


def test_command_prints_json_lines(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _with_stub(monkeypatch, FakeStub(run_log(), [COMPLETED]))
    assert logs.cmd_logs(_args(RUN, "--output", "json")) == 0
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in out] == [3, 4, 5, 7, 8, 9, 11]


def test_ctrl_c_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Interrupted(FakeStub):
        def GetRun(self, request: admin_pb2.GetRunRequest) -> admin_pb2.RunStatus:
            if self.run_calls:
                raise KeyboardInterrupt
            return super().GetRun(request)

    _with_stub(monkeypatch, Interrupted(run_log()[:4], [RUNNING]))
    monkeypatch.setattr(logs, "POLL_S", 0.0)
    assert logs.cmd_logs(_args(RUN, "--follow")) == 130
    captured = capsys.readouterr()
    assert captured.err == ""
    assert len(captured.out.splitlines()) == 2  # seq 3 and 4, printed before the interrupt


def test_unknown_run_is_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class NotFound(grpc.RpcError):  # type: ignore[misc]
        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.NOT_FOUND

        def details(self) -> str:
            return "no run 'run-x'"

    class Missing(FakeStub):
        def GetRun(self, request: admin_pb2.GetRunRequest) -> admin_pb2.RunStatus:
            raise NotFound()

    _with_stub(monkeypatch, Missing([], [RUNNING]))
    assert fedctl(["logs", "run-x"]) == 2
    assert capsys.readouterr().err == "fedctl: error: no run 'run-x'\n"
