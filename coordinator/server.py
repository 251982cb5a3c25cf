"""Run the coordinator: load config, open the store, resume unfinished runs, serve mutual TLS."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.auth import AuthorisationInterceptor
from coordinator.config import ConfigError, CoordinatorConfig, load_coordinator_config
from coordinator.service import AdminService, Coordinator, FederationService
from coordinator.store import CoordinatorStore
from federation.tls import TlsError, TransportSettings, server_credentials, server_options
from federation.wire.v1 import admin_pb2_grpc, federation_pb2_grpc

log = logging.getLogger("concordia.coordinator")


async def serve(config: CoordinatorConfig, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled or SIGTERM/SIGINT."""
    import time

    kit = config.tls_kit()
    store = CoordinatorStore(config.resolve(config.store.path), clock=time.time)
    coordinator = Coordinator(store, coordinator_id=config.server.id)
    resumed = coordinator.resume()
    if resumed:
        log.info("resumed runs: %s", ", ".join(resumed))
    settings = TransportSettings(max_message_bytes=config.server.max_message_mb * 1024 * 1024)
    server = aio.server(
        interceptors=[AuthorisationInterceptor(coordinator.audit_denied)],
        options=server_options(settings),
    )
    federation_pb2_grpc.add_FederationServicer_to_server(  # type: ignore[no-untyped-call]
        FederationService(coordinator), server
    )
    admin_pb2_grpc.add_AdminServicer_to_server(  # type: ignore[no-untyped-call]
        AdminService(coordinator), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(config.server.listen, server_credentials(kit))
    if port == 0:
        raise ConfigError(f"server.listen: cannot bind {config.server.listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "coordinator %s listening on %s (port %d)", config.server.id, config.server.listen, port
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
    parser = argparse.ArgumentParser(prog="concordia-coordinator")
    parser.add_argument("--config", type=Path, required=True, help="coordinator.toml")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = load_coordinator_config(args.config)
        asyncio.run(serve(config))
    except (ConfigError, TlsError) as exc:
        print(f"concordia-coordinator: {exc}", file=sys.stderr)
        return 2
    return 0
