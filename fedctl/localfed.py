"""A whole federation on one machine: kits, hospital data, and real processes over loopback mTLS.

Used by `fedctl demo` and by the end-to-end tests, so the demo an operator runs and the federation
the tests kill pieces of are the same thing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc

from federation.consortium import parse_consortium
from federation.provisioning import provision
from federation.wire.v1 import admin_pb2, admin_pb2_grpc

MARKER = ".concordia-demo"
OPERATOR = "operator"


class LocalFederationError(RuntimeError):
    """A process died or did not come up; the message points at its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SIGTERM_GRACE_S = 20.0
"""After SIGTERM the process unwinds (stopping its children in `finally`, at most ~10 s); if it
is still alive this long after, it exits anyway. Measured: in about one run of four the demo's
interpreter kept waiting at exit after its children had stopped (a thread it waits for; not yet
identified), so `tests/e2e/test_demo_signals.py` sometimes timed out."""


def exit_on_sigterm() -> None:
    """Make SIGTERM (`kill`, `timeout`, a CI runner) unwind like Ctrl-C, so that the `finally`
    calling `LocalFederation.stop_all` runs: Python's default SIGTERM action skips it and leaves
    the coordinator and every agent running, holding their ports. A watchdog then guarantees the
    exit within SIGTERM_GRACE_S, with the same exit code."""

    def handler(signum: int, _frame: object) -> None:
        code = 128 + signum

        def hard_exit() -> None:
            time.sleep(SIGTERM_GRACE_S)
            os._exit(code)

        threading.Thread(target=hard_exit, name="sigterm-watchdog", daemon=True).start()
        raise SystemExit(code)

    signal.signal(signal.SIGTERM, handler)


class LocalFederation:
    """Coordinator + hospitals as separate processes under `workdir`."""

    def __init__(self, workdir: Path, hospitals: tuple[str, ...], viewer: bool = False) -> None:
        self.workdir = workdir.resolve()
        self.hospitals = hospitals
        self.kits = self.workdir / "kits"
        self.logs = self.workdir / "logs"
        self.port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._viewer = viewer
        self._channel: grpc.Channel | None = None

    # ------------------------------------------------------------------ setup
    def prepare(self) -> None:
        if self.workdir.exists():
            if not (self.workdir / MARKER).exists():
                raise LocalFederationError(f"{self.workdir} exists and is not a scratch folder")
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        (self.workdir / MARKER).write_text("scratch folder of a local federation; safe to delete\n")
        operators = [{"name": OPERATOR, "role": "admin"}]
        if self._viewer:
            operators.append({"name": "viewer", "role": "viewer"})
        consortium = parse_consortium(
            {
                "consortium": {"name": "concordia-local"},
                "coordinator": {"hosts": ["localhost", "127.0.0.1"], "port": self.port},
                "sites": list(self.hospitals),
                "operators": operators,
            }
        )
        provision(consortium, self.kits)
        self.logs.mkdir()

    def site_kit(self, hospital: str) -> Path:
        return self.kits / "sites" / hospital

    def site_configs(self) -> list[tuple[str, Path]]:
        """(hospital, its site.toml) for every hospital, in order."""
        return [(h, self.site_kit(h) / "site.toml") for h in self.hospitals]

    def configure_site(
        self,
        hospital: str,
        csv: Path,
        columns: Mapping[str, str],
        time_column: str,
        event_column: str,
        policy: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """Fill the provisioned starter site.toml: its [site], [coordinator] and [tls] as
        provisioned, its [data] and [policy] replaced by this hospital's. `data` adds [data]
        keys for an export spelled its own way (`delimiter`, `na_values`, `time_unit`,
        `event_values`, `censored_values`, `id_column`, and `values` as
        {feature: {consortium value: [local spellings]}})."""
        kit = self.site_kit(hospital)
        starter = tomllib.loads((kit / "site.toml").read_text())
        extra = dict(data or {})
        values: Mapping[str, Mapping[str, list[str]]] = extra.pop("values", {})
        tables: list[tuple[str, Mapping[str, Any]]] = [
            ("site", {**starter["site"], "state_dir": str(kit / "state")}),
            ("coordinator", starter["coordinator"]),
            ("tls", starter["tls"]),
            (
                "data",
                {
                    "csv": str(csv),
                    "time_column": time_column,
                    "event_column": event_column,
                    "split_salt": os.urandom(16).hex(),
                    **extra,
                },
            ),
            ("data.columns", columns),
        ]
        tables += [
            (f"data.values.{json.dumps(name)}", spellings) for name, spellings in values.items()
        ]
        merged = {
            "max_epsilon_per_run": 3.0,
            "lifetime_epsilon": 10.0,
            "max_delta": 1e-5,
            "min_cohort_size": 100,
            # The demo plan goes ahead with two of three hospitals when one drops out; a two-site
            # sum tells each of the two the other's DP-noised release, so the local hospitals opt
            # in explicitly (the policy default is 3; docs/threat-model.md).
            "min_session_sites": 2,
            **(policy or {}),
        }
        tables.append(("policy", merged))
        (kit / "site.toml").write_text(
            "\n".join(
                f"[{name}]\n"
                + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in table.items())
                for name, table in tables
            )
        )

    # ------------------------------------------------------------------ processes
    def _spawn(self, name: str, args: list[str], env: Mapping[str, str] | None) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def start_coordinator(self) -> None:
        config = self.kits / "coordinator" / "coordinator.toml"
        self._spawn("coordinator", ["-m", "coordinator", "--config", str(config)], None)

    def start_site(
        self, hospital: str, env: Mapping[str, str] | None = None, record: Path | None = None
    ) -> None:
        args = ["-m", "site_agent", "--config", str(self.site_kit(hospital) / "site.toml")]
        if record is not None:
            args += ["--record-updates", str(record)]
        self._spawn(hospital, args, env)

    def start_simulated_sites(self, name: str = "simulator") -> None:
        """Every hospital as a `SiteAgent` in one simulator process (`site_agent.simulator`),
        instead of one process each: for scale (one torch import for all of them)."""
        configs = [str(path) for _, path in self.site_configs()]
        self._spawn(name, ["-m", "site_agent.simulator", *configs], None)

    def kill(self, name: str) -> None:
        """SIGKILL: no cleanup, no goodbye — a crash."""
        process = self.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def alive(self, name: str) -> bool:
        return name in self.processes and self.processes[name].poll() is None

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # ------------------------------------------------------------------ operator
    def operator_config(self, name: str = OPERATOR) -> Path:
        return self.kits / "operators" / name / "fedctl.toml"

    def admin(self, name: str = OPERATOR) -> admin_pb2_grpc.AdminStub:
        from fedctl.remote import admin_stub

        stub, channel = admin_stub(self.operator_config(name))
        if name == OPERATOR:
            self._channel = channel
        return stub

    def wait_for_sites(
        self, stub: admin_pb2_grpc.AdminStub, count: int, timeout: float = 120
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None and process.returncode not in (-signal.SIGKILL,):
                    raise LocalFederationError(
                        f"{name} exited with code {process.returncode}; see {self.logs / name}.log"
                    )
            try:
                sites = stub.ListSites(admin_pb2.ListSitesRequest(), timeout=5)
                online = [s for s in sites.sites if s.state == admin_pb2.SITE_STATE_ONLINE]
                if len(online) >= count:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
        raise LocalFederationError(f"{count} sites did not connect within {timeout:.0f} s")

    def start_all(self, timeout: float = 120) -> admin_pb2_grpc.AdminStub:
        """Coordinator and every hospital, then wait until all sites are online; the admin stub."""
        self.start_coordinator()
        for hospital in self.hospitals:
            self.start_site(hospital)
        stub = self.admin()
        self.wait_for_sites(stub, len(self.hospitals), timeout)
        return stub

    def wait_ready(self, stub: admin_pb2_grpc.AdminStub, timeout: float = 60) -> None:
        """Until the coordinator answers an admin call (after a start or a restart)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive("coordinator"):
                raise LocalFederationError(
                    f"the coordinator exited; see {self.logs / 'coordinator'}.log"
                )
            try:
                stub.ListSites(admin_pb2.ListSitesRequest(), timeout=5)
                return
            except grpc.RpcError:
                time.sleep(0.3)
        raise LocalFederationError(f"the coordinator did not answer within {timeout:.0f} s")

    def log_text(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def flchain_hospitals(
    federation: LocalFederation, policy: Mapping[str, Any] | None = None
) -> tuple[Any, Any, list[Path], list[dict[str, str]]]:
    """Write FLCHAIN's training split as one CSV per hospital (age bands, own column names) and
    configure every site. Returns (train, test, csv paths, column mappings)."""
    from survival.data import fixed_split, hospital_column_names, load_flchain, write_hospital_csvs

    train, test = fixed_split(load_flchain())
    k = len(federation.hospitals)
    csvs = write_hospital_csvs(federation.workdir / "data", train, k, "age", seed=0)
    names = hospital_column_names(k)
    for hospital, csv, mapping in zip(federation.hospitals, csvs, names, strict=True):
        columns = {key: value for key, value in mapping.items() if key not in ("time", "event")}
        federation.configure_site(hospital, csv, columns, mapping["time"], mapping["event"], policy)
    return train, test, csvs, names
