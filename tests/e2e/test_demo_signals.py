"""`fedctl demo` leaves nothing running when it is stopped by SIGTERM, not only by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line mentions `text` (the demo's children carry its workdir)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


def test_sigterm_during_the_run_stops_the_coordinator_and_every_agent(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "fedctl", "demo", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:  # until the federation is up and the run submitted
            lines.append(line)
            if line.startswith("submitted run-"):
                break
        else:
            pytest.fail("the demo ended before submitting its run:\n" + "".join(lines))
        children = [pid for pid in _processes_mentioning(str(workdir)) if pid != demo.pid]
        assert len(children) == 4, children  # coordinator + three agents, all running
        demo.send_signal(signal.SIGTERM)
        demo.communicate(timeout=60)
        assert demo.returncode == 128 + signal.SIGTERM
        deadline = time.monotonic() + 5  # reaped by the demo itself; allow /proc to catch up
        while _processes_mentioning(str(workdir)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_mentioning(str(workdir)) == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in _processes_mentioning(str(workdir)):
            os.kill(pid, signal.SIGKILL)
