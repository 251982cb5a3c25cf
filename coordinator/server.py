"""Run the coordinator: load config, open the store, resume unfinished runs, serve mutual TLS."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.admin_service import AdminService
from coordinator.app import Coordinator
from coordinator.auth import AuthorisationInterceptor, RosterWatcher
from coordinator.config import (
    ConfigError,
    CoordinatorConfig,
    load_coordinator_config,
    split_host_port,
)
from coordinator.federation_service import FederationService
from coordinator.guard import RateLimitedLog, RequestGuard, describe, quiet_grpc_loggers
from coordinator.handshake_log import HandshakeFailure, capture_handshake_failures
from coordinator.store import CoordinatorStore
from federation.faults import Faults, FaultSpecError
from federation.roster import Roster, RosterError
from federation.tls import TlsError, TransportSettings, server_credentials, server_options
from federation.wire.v1 import admin_pb2_grpc, federation_pb2_grpc

log = logging.getLogger("concordia.coordinator")

_WILDCARDS = frozenset({"0.0.0.0", "::"})
Resolver = Callable[..., Sequence[tuple[Any, ...]]]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _grpc_address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def listen_plan(
    listen: Sequence[str], resolve: Resolver = socket.getaddrinfo
) -> list[tuple[str, list[str]]]:
    """For each `[server] listen` entry, the concrete `ip:port` addresses to bind for it, so
    that binding can fail with a message naming the entry instead of a grpc error.

    A host name stands for the addresses it resolves to (as gRPC binds `host:port`). Each
    address is bound once (`localhost` and `127.0.0.1` on one port share 127.0.0.1), and a
    wildcard (`0.0.0.0` or `::`, which gRPC binds on both stacks) covers every address on its
    port. An entry whose addresses are all covered by earlier entries gets an empty list.
    """
    resolved: list[tuple[str, list[tuple[str, int]]]] = []
    for entry in listen:
        try:
            host, port = split_host_port(entry)
        except ValueError as exc:
            raise ConfigError(f"server.listen: {exc}") from None
        if _is_ip(host):
            ips = [host]
        else:
            try:
                infos = resolve(host, port, type=socket.SOCK_STREAM)
            except (socket.gaierror, UnicodeError) as exc:
                raise ConfigError(f"server.listen: cannot resolve {host!r}: {exc}") from None
            ips = list(dict.fromkeys(str(info[4][0]) for info in infos))
            if not ips:
                raise ConfigError(f"server.listen: {host!r} resolves to no address")
        resolved.append((entry, [(ip, port) for ip in ips]))
    wildcard_ports = {port for _, pairs in resolved for ip, port in pairs if ip in _WILDCARDS}
    seen: set[tuple[str, int]] = set()
    plan: list[tuple[str, list[str]]] = []
    for entry, pairs in resolved:
        todo = []
        for ip, port in pairs:
            wildcard = ip in _WILDCARDS
            if port in wildcard_ports and not wildcard:
                continue
            key = ("*" if wildcard else ip, port)
            if key not in seen:
                seen.add(key)
                todo.append(_grpc_address(ip, port))
        plan.append((entry, todo))
    return plan


def bind_listen_addresses(
    server: aio.Server,
    listen: Sequence[str],
    credentials: grpc.ServerCredentials,
    resolve: Resolver = socket.getaddrinfo,
) -> list[tuple[str, int]]:
    """Bind every address of `listen_plan`; the (address, port) pairs bound (port 0 in the
    config means an ephemeral port: the caller needs to know which one it got).

    An entry that is an IP address must bind; a host name needs at least one of its addresses
    (gRPC's rule: `localhost` without IPv6 still binds 127.0.0.1). ConfigError otherwise.
    """
    bound: list[tuple[str, int]] = []
    for entry, addresses in listen_plan(listen, resolve):
        entry_bound = not addresses  # all covered by earlier entries
        for address in addresses:
            try:
                port = server.add_secure_port(address, credentials)
            except RuntimeError as exc:
                log.warning("cannot bind %s (server.listen %s): %s", address, entry, describe(exc))
                port = 0
            if port:
                bound.append((address, port))
                entry_bound = True
        if not entry_bound:
            raise ConfigError(
                f"server.listen: cannot bind {entry} (is it an address of this host? behind NAT,"
                " a load balancer or in a container, set CONCORDIA_SERVER_LISTEN=0.0.0.0:PORT)"
            )
    return bound


async def serve(
    config: CoordinatorConfig, ready: asyncio.Event | None = None, faults: Faults | None = None
) -> None:
    """Serve until cancelled or SIGTERM/SIGINT; `faults` is test fault injection (none by
    default), handed to the application object rather than read from the environment there."""
    import time

    kit = config.tls_kit()
    roster = RosterWatcher(config.roster_path(), kit.ca_certificate)  # refuses to start without
    store = CoordinatorStore(config.resolve(config.store.path), clock=time.time)
    coordinator = Coordinator(store, coordinator_id=config.server.id, roster=roster, faults=faults)

    def audit_roster(loaded: Roster) -> None:
        detail = {"version": loaded.version, "path": str(roster.path)}
        store.audit.append("coordinator", "roster_loaded", detail)

    def roster_changed(loaded: Roster) -> None:
        audit_roster(loaded)
        coordinator.notify()  # every parked long-poll ends: each site is checked again

    audit_roster(roster.roster)
    roster.on_change = roster_changed
    resumed = coordinator.resume()
    if resumed:
        log.info("resumed runs: %s", ", ".join(resumed))
    settings = TransportSettings(max_message_bytes=config.server.max_message_mb * 1024 * 1024)
    quiet_grpc_loggers()  # a traceback grpc logs itself becomes one rate-limited line

    def audit_denied(identity: Any, method: str, reason: str) -> None:
        try:
            coordinator.audit_denied(identity, method, reason)
        except Exception as exc:  # the denial still stands; say once why it was not audited
            log.error("cannot audit a denied %s call: %s", method, describe(exc))

    server = aio.server(
        # Authorisation first; then RequestGuard: a malformed request or an exception escaping a
        # handler is answered (INVALID_ARGUMENT / INTERNAL) with one rate-limited log line.
        interceptors=[AuthorisationInterceptor(audit_denied, roster), RequestGuard()],
        # No SO_REUSEPORT (gRPC's default on Linux): a second coordinator on the same port must
        # fail to start, not silently share the connections with the first.
        options=[*server_options(settings), ("grpc.so_reuseport", 0)],
    )
    federation_pb2_grpc.add_FederationServicer_to_server(  # type: ignore[no-untyped-call]
        FederationService(coordinator), server
    )
    admin_pb2_grpc.add_AdminServicer_to_server(  # type: ignore[no-untyped-call]
        AdminService(coordinator), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = bind_listen_addresses(server, config.server.listen, server_credentials(kit))
    port = bound[0][1]
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "coordinator %s listening on %s",
        config.server.id,
        ", ".join(address for address, _ in bound),
    )
    print(f"coordinator listening on port {port}", flush=True)
    ticker = asyncio.create_task(coordinator.tick_forever())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        ticker.cancel()
        await server.stop(grace=2.0)
        store.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m coordinator`: exit status 2 with one line for any configuration problem."""
    parser = argparse.ArgumentParser(prog="concordia-coordinator")
    parser.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # Before logging is set up: Python's stderr moves off fd 2, which the gRPC core's handshake
    # records now go through, so a failed handshake becomes one line naming the peer.
    capture = capture_handshake_failures(_handshake_logger())
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = load_coordinator_config(args.config)
        # The one place the test fault hooks are read (CONCORDIA_TEST_CRASH_AT); unset: none.
        faults = Faults.from_environment()
        asyncio.run(serve(config, faults=faults))
    except (ConfigError, TlsError, RosterError, FaultSpecError) as exc:
        print(f"concordia-coordinator: {exc}", file=sys.stderr)
        return 2
    finally:
        if capture is not None:
            capture.close()
    return 0


def _handshake_logger() -> Callable[[HandshakeFailure], None]:
    """One WARNING per failed handshake, at most 10 per peer host and cause per 10 s: a site
    retrying with an expired certificate says so, without filling the log."""
    limiter = RateLimitedLog(logging.getLogger("concordia.coordinator.tls"))

    def on_failure(failure: HandshakeFailure) -> None:
        host = failure.peer.rsplit(":", 1)[0]
        limiter.log(f"{host} {failure.kind}", logging.WARNING, failure.line())

    return on_failure
