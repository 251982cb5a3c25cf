"""Coordinator hardening, the pure parts: site input validation, the rate-limited log, the
listen addresses (config parsing and the bind plan)."""

from __future__ import annotations

import logging
import math
import socket
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import ConfigError, ServerSection, load_coordinator_config
from coordinator.guard import GrpcTracebackFilter, RateLimitedLog, one_line
from coordinator.server import listen_plan
from coordinator.validation import SiteInputError, check_policy_summary, check_privacy_report
from federation.provisioning import coordinator_config_text
from federation.wire.v1 import federation_pb2

pytestmark = pytest.mark.unit

BAD_EPSILONS = [math.nan, math.inf, -math.inf, -1.0, -1e-300]


# --- privacy reports and policy summaries ------------------------------------------------------


def test_a_sane_privacy_report_passes() -> None:
    check_privacy_report(federation_pb2.PrivacyReport())
    check_privacy_report(
        federation_pb2.PrivacyReport(epsilon_spent_run=3.0, epsilon_spent_lifetime=9.5, delta=1e-5)
    )


@pytest.mark.parametrize("field", ["epsilon_spent_run", "epsilon_spent_lifetime"])
@pytest.mark.parametrize("value", BAD_EPSILONS)
def test_a_non_finite_or_negative_epsilon_is_refused(field: str, value: float) -> None:
    with pytest.raises(SiteInputError) as caught:
        check_privacy_report(federation_pb2.PrivacyReport(**{field: value}))
    assert f"privacy.{field}" in caught.value.reason and "\n" not in caught.value.reason


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5, 1.0, 2.0])
def test_delta_must_be_finite_and_below_one(value: float) -> None:
    with pytest.raises(SiteInputError, match=r"privacy\.delta must"):
        check_privacy_report(federation_pb2.PrivacyReport(delta=value))


def _policy(**overrides: Any) -> federation_pb2.PolicySummary:
    fields: dict[str, Any] = {
        "allowed_features": ["age", "sex"],
        "max_epsilon_per_run": 3.0,
        "lifetime_epsilon_budget": 10.0,
        "lifetime_epsilon_spent": 2.5,
        "max_delta": 1e-5,
        "min_cohort_size": 100,
        "allowed_model_kinds": ["linear"],
    }
    fields.update(overrides)
    return federation_pb2.PolicySummary(**fields)


def test_policy_summary_floats_are_checked() -> None:
    check_policy_summary(_policy())
    check_policy_summary(federation_pb2.PolicySummary())
    for field in ("max_epsilon_per_run", "lifetime_epsilon_budget", "lifetime_epsilon_spent"):
        for value in BAD_EPSILONS:
            with pytest.raises(SiteInputError, match=rf"policy\.{field}"):
                check_policy_summary(_policy(**{field: value}))
    for value in (math.nan, math.inf, -1e-9, 1.0):
        with pytest.raises(SiteInputError, match=r"policy\.max_delta"):
            check_policy_summary(_policy(max_delta=value))
    with pytest.raises(SiteInputError, match="allowed_features has 2000 names"):
        check_policy_summary(_policy(allowed_features=["f"] * 2000))
    with pytest.raises(SiteInputError, match="allowed_model_kinds has a name of 300"):
        check_policy_summary(_policy(allowed_model_kinds=["k" * 300]))


# --- the rate-limited log --------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_lets_n_lines_through_per_window_then_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    logger = logging.getLogger("test.ratelog")
    rate = RateLimitedLog(logger, limit=3, window_s=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        logged = [rate.log("peer-a", logging.WARNING, f"bad {i}\nsecond line") for i in range(50)]
        assert logged == [True] * 3 + [False] * 47
        assert rate.log("peer-b", logging.WARNING, "other peer")  # its own budget
        clock.now += 10.0
        assert rate.log("peer-a", logging.WARNING, "next window")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "bad 0 second line",
        "bad 1 second line",
        "bad 2 second line",
        "other peer",
        "suppressed 47 similar lines from peer-a in 10 s",
        "next window",
    ]
    assert one_line("x" * 1000).endswith("…") and len(one_line("x" * 1000)) == 300


def test_grpc_traceback_filter_makes_one_line_and_rate_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    grpc_logger = logging.getLogger("test.fake_grpc")
    installed = GrpcTracebackFilter(RateLimitedLog(logging.getLogger("test.x"), 2, 10.0, clock))
    grpc_logger.addFilter(installed)
    try:
        with caplog.at_level(logging.INFO, logger="test.fake_grpc"):
            for _ in range(20):
                try:
                    raise ValueError("Error parsing message\nWire format was corrupt")
                except ValueError:
                    grpc_logger.exception("Unexpected [%s] raised by servicer", "DecodeError")
            grpc_logger.info("a plain line passes")
    finally:
        grpc_logger.removeFilter(installed)
    assert [r.getMessage() for r in caplog.records] == [
        "Unexpected [DecodeError] raised by servicer: ValueError: Error parsing message Wire"
        " format was corrupt",
    ] * 2 + ["a plain line passes"]
    assert "Traceback" not in caplog.text


# --- listen addresses ---------------------------------------------------------------------------


def test_listen_accepts_a_string_a_comma_separated_string_or_a_list(tmp_path: Path) -> None:
    assert ServerSection().listen == ["0.0.0.0:50051"]
    assert ServerSection(listen="a.example:1").listen == ["a.example:1"]
    assert ServerSection(listen="a.example:1, [::1]:2").listen == ["a.example:1", "[::1]:2"]
    config = tmp_path / "coordinator.toml"
    text = coordinator_config_text("c", 7443, ["coord.example.org", "10.0.0.5", "::1"])
    config.write_text(text.replace("[tls]\n", '[tls]\nroster = "r.json"\n'))
    loaded = load_coordinator_config(config, env={})
    assert loaded.server.listen == ["coord.example.org:7443", "10.0.0.5:7443", "[::1]:7443"]
    overridden = load_coordinator_config(
        config, env={"CONCORDIA_SERVER_LISTEN": "0.0.0.0:50051,[::]:50051"}
    )
    assert overridden.server.listen == ["0.0.0.0:50051", "[::]:50051"]
    for bad in ("no-port", "::1:5", "host:70000", ""):
        with pytest.raises(ConfigError, match=r"server\.listen"):
            load_coordinator_config(config, env={"CONCORDIA_SERVER_LISTEN": bad})
    assert "0.0.0.0:7443" in coordinator_config_text("c", 7443)  # no hosts: all interfaces


def _resolver(table: dict[str, list[str]]) -> Any:
    def resolve(host: str, port: int, type: int = 0) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, type, 6, "", (ip, port))
            for ip in table[host]
        ]

    return resolve


def test_bind_plan_resolves_names_and_binds_each_address_once() -> None:
    resolve = _resolver({"localhost": ["::1", "127.0.0.1", "127.0.0.1"], "coord": ["10.0.0.5"]})
    assert listen_plan(["localhost:5", "127.0.0.1:5"], resolve) == [
        ("localhost:5", ["[::1]:5", "127.0.0.1:5"]),
        ("127.0.0.1:5", []),  # already bound through localhost
    ]
    assert listen_plan(["coord:5", "10.0.0.5:6", "[::1]:5"], resolve) == [
        ("coord:5", ["10.0.0.5:5"]),
        ("10.0.0.5:6", ["10.0.0.5:6"]),
        ("[::1]:5", ["[::1]:5"]),
    ]
    # a wildcard covers every address on its port, and 0.0.0.0 / :: are one (dual-stack) bind
    assert listen_plan(["localhost:5", "0.0.0.0:5", "[::]:5", "coord:6"], resolve) == [
        ("localhost:5", []),
        ("0.0.0.0:5", ["0.0.0.0:5"]),
        ("[::]:5", []),
        ("coord:6", ["10.0.0.5:6"]),
    ]
    with pytest.raises(ConfigError, match=r"cannot resolve 'nowhere\.invalid'"):
        listen_plan(["nowhere.invalid:5"], resolve)
