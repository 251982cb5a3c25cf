"""The operator's connection to the coordinator: its kit's `fedctl.toml`, mutual TLS, Admin stub.

`fedctl.toml` is read like every other component's configuration (`federation/configfile.py`):
`[coordinator] address` can be overridden by CONCORDIA_COORDINATOR_ADDRESS, and the `[tls]` paths
are relative to the file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import grpc

from fedctl.errors import CliError
from federation.configfile import ConfigError, apply_env_overrides, read_toml
from federation.tls import TlsError, TlsKit, TransportSettings, secure_channel
from federation.wire.v1 import admin_pb2_grpc
from site_agent.connection import diagnose

DEFAULT_CONFIG = "fedctl.toml"
DIAGNOSE_TIMEOUT_S = 5.0
_target: dict[str, tuple[str, TlsKit]] = {}
"""The address and kit of the last `admin_stub`: what `rpc_error` diagnoses when the
coordinator is unreachable (a fedctl process talks to one coordinator)."""
_FOR_OPERATOR = (
    # site_agent.connection words its diagnosis for a site; the steps are the same for fedctl
    (
        "renewed site kit (fedctl provision renew SITE)",
        "renewed operator kit (fedctl provision renew NAME)",
    ),
    ("ask the operator whether the coordinator is running", "check that the coordinator runs"),
    ("site.toml", "fedctl.toml"),
    ("this site's", "this operator's"),
    ("this site", "this operator"),
)
ENV_KEYS = {"coordinator": ("address",)}
"""The keys of `fedctl.toml` an environment variable may override (an operator's shell often
has a CONCORDIA_… variable meant for something else, so only these are looked up)."""


def add_config_argument(parser: Any, *, follows: bool = False) -> None:
    """`--config` and `--output`, the options every command that talks to the coordinator has.

    A command that follows a run (`run`, `watch`) also offers `--output auto`, its default: a live
    view on a terminal, one line per change otherwise (`fedctl/progress.py`)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="operator kit's fedctl.toml (default: $CONCORDIA_FEDCTL_CONFIG or ./fedctl.toml)",
    )
    if follows:
        parser.add_argument("--output", choices=("auto", "text", "json"), default="auto")
    else:
        parser.add_argument("--output", choices=("text", "json"), default="text")


def config_path(given: Path | None) -> Path:
    """`--config`, else $CONCORDIA_FEDCTL_CONFIG, else ./fedctl.toml."""
    if given is not None:
        return given
    return Path(os.environ.get("CONCORDIA_FEDCTL_CONFIG", DEFAULT_CONFIG))


def admin_stub(given: Path | None) -> tuple[admin_pb2_grpc.AdminStub, grpc.Channel]:
    """An Admin stub over mutual TLS with the operator's certificate."""
    path = config_path(given)
    try:
        data = read_toml(path, missing="no operator configuration (pass --config)")
        apply_env_overrides(data, ENV_KEYS, os.environ, source=str(path), skip_empty=True)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    table = data.get("coordinator")
    address = table.get("address") if isinstance(table, dict) else None
    if not isinstance(address, str) or not address:
        raise CliError(f"{path}: coordinator.address is missing")
    try:
        kit = TlsKit.from_table(data.get("tls"), base=path.parent, source=str(path))
    except TlsError as exc:
        raise CliError(str(exc)) from None
    channel = secure_channel(address, kit, TransportSettings())
    _target["current"] = (address, kit)
    return admin_pb2_grpc.AdminStub(channel), channel  # type: ignore[no-untyped-call]


def unreachable(details: str) -> str:
    """Why the coordinator cannot be reached, as one line naming the address and the cause
    (DNS, refused, unknown CA, expired certificate, host name mismatch, ...): gRPC says only
    UNAVAILABLE, so the connection is repeated step by step (`site_agent.connection.diagnose`)."""
    target = _target.get("current")
    if target is None:
        return f"coordinator unreachable: {details}"
    address, kit = target
    problem = diagnose(address, kit.ca_pem, kit.cert_pem, kit.key_pem, DIAGNOSE_TIMEOUT_S)
    if problem is None:  # name, TCP and TLS all work now: say what gRPC said
        return f"coordinator at {address} unreachable: {details}"
    message = problem.message
    for site_words, operator_words in _FOR_OPERATOR:
        message = message.replace(site_words, operator_words)
    return f"coordinator unreachable [{problem.code}]: {message}"


def rpc_error(exc: grpc.RpcError) -> CliError:
    """One line for a failed call; unreachable coordinator and denials are bad input (exit 2)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return CliError(unreachable(str(details)))
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return CliError(f"not allowed: {details}")
    if code == grpc.StatusCode.NOT_FOUND:
        return CliError(str(details))
    name = code.name if code is not None else "ERROR"
    return CliError(f"{name}: {details}", exit_code=1)
