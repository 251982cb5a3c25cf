"""Container health checks for the Concordia images (Dockerfile HEALTHCHECK, Kubernetes exec probe).

    python /opt/concordia/healthcheck.py coordinator
    python /opt/concordia/healthcheck.py site

Exit 0 when healthy, 1 when not; one line on stdout says why.

coordinator
    Calls the standard gRPC health service (grpc.health.v1.Health/Check) of the coordinator in the
    same container, over mutual TLS. The coordinator requires a client certificate from the
    consortium CA and its own kit holds only a server certificate, so the probe presents a probe
    kit mounted at $CONCORDIA_HEALTH_PROBE_KIT (default /probe: ca.pem, client.pem, client.key —
    an operator kit with the `viewer` role). The server certificate is checked against the probe
    kit's CA under a name taken from the coordinator's own certificate. Without a probe kit the
    check falls back to a TLS handshake against the port (proves the server is up with a valid
    consortium certificate, not that gRPC answers) and says so.

site
    The site agent accepts no connections, so it proves liveness through a file: its event loop
    writes state_dir/heartbeat.json every 10 s (also during training). Healthy means a running
    `site_agent` process, a heartbeat younger than CONCORDIA_HEALTH_HEARTBEAT_MAX_AGE_S (default
    60 s) when the state folder is known, and a site client certificate within its validity period
    (an expired certificate means the coordinator refuses the site: it would retry forever while
    looking alive). Whether the coordinator is reachable is reported, not judged: a coordinator
    outage is not the hospital's container's fault.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import sys
import time
import tomllib
from pathlib import Path

TIMEOUT_S = 5.0


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name, default))


def _tls_paths(config: Path) -> dict[str, Path]:
    """[tls] ca/cert/key of a kit config, with CONCORDIA_TLS_* overrides, relative to the file."""
    table: dict[str, object] = {}
    if config.is_file():
        loaded = tomllib.loads(config.read_text(encoding="utf-8")).get("tls", {})
        if isinstance(loaded, dict):
            table = loaded
    paths = {}
    for field in ("ca", "cert", "key"):
        value = os.environ.get(f"CONCORDIA_TLS_{field.upper()}") or table.get(field)
        if isinstance(value, str) and value:
            path = Path(value)
            paths[field] = path if path.is_absolute() else config.parent / path
    return paths


def _certificate(path: Path):  # type: ignore[no-untyped-def]
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _server_name(cert_path: Path) -> str:
    """A name the coordinator's certificate is valid for (its first DNS, else IP, SAN)."""
    from cryptography import x509

    try:
        san = _certificate(cert_path).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (OSError, ValueError, x509.ExtensionNotFound):
        return "localhost"
    names = san.value.get_values_for_type(x509.DNSName)
    if names:
        return str(names[0])
    ips = san.value.get_values_for_type(x509.IPAddress)
    return str(ips[0]) if ips else "localhost"


def _listen_port(config: Path) -> int:
    """The port of the first `[server] listen` address (a string, a comma-separated string as in
    CONCORDIA_SERVER_LISTEN, or a list of them)."""
    listen: object = os.environ.get("CONCORDIA_SERVER_LISTEN")
    if not listen and config.is_file():
        server = tomllib.loads(config.read_text(encoding="utf-8")).get("server", {})
        listen = server.get("listen") if isinstance(server, dict) else None
    if isinstance(listen, list):
        listen = listen[0] if listen else None
    first = str(listen or "0.0.0.0:50051").split(",")[0].strip()
    return int(first.rsplit(":", 1)[1])


def check_coordinator() -> tuple[bool, str]:
    config = _env_path("CONCORDIA_HEALTH_CONFIG", "/kit/coordinator.toml")
    port = _listen_port(config)
    address = f"127.0.0.1:{port}"
    name = _server_name(_tls_paths(config).get("cert", config.parent / "server.pem"))
    probe = _env_path("CONCORDIA_HEALTH_PROBE_KIT", "/probe")
    files = [probe / "ca.pem", probe / "client.pem", probe / "client.key"]
    if not all(f.is_file() for f in files):
        return _tls_handshake(port, name, config)

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ca, cert, key = (f.read_bytes() for f in files)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )
    options = [("grpc.ssl_target_name_override", name)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            return False, f"gRPC health check of {address} failed: {exc.code().name}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    return answer.status == health_pb2.HealthCheckResponse.SERVING, f"gRPC health: {status}"


def _tls_handshake(port: int, name: str, config: Path) -> tuple[bool, str]:
    ca = _tls_paths(config).get("ca", config.parent / "ca.pem")
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.set_alpn_protocols(["h2"])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
            context.wrap_socket(raw, server_hostname=name),
        ):
            pass
    except (OSError, ssl.SSLError) as exc:
        return False, f"TLS handshake with 127.0.0.1:{port} failed: {exc}"
    return True, (
        f"TLS handshake OK on port {port} (no probe kit in "
        f"{_env_path('CONCORDIA_HEALTH_PROBE_KIT', '/probe')}: gRPC health not asked)"
    )


def _agent_processes() -> list[tuple[int, str]]:
    """(pid, state) of every `python -m site_agent` process visible in /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if b"site_agent" in argv and b"-m" in argv:
            state = stat.rsplit(")", 1)[1].split()[0]
            found.append((int(entry.name), state))
    return found


def _state_dir(config: Path) -> Path | None:
    """[site] state_dir of a site config (CONCORDIA_SITE_STATE_DIR wins), relative to the file."""
    value = os.environ.get("CONCORDIA_SITE_STATE_DIR")
    if not value and config.is_file():
        site = tomllib.loads(config.read_text(encoding="utf-8")).get("site", {})
        value = site.get("state_dir") if isinstance(site, dict) else None
    if not isinstance(value, str) or not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else config.parent / path


def check_heartbeat(state_dir: Path, max_age_s: float, now: float) -> tuple[bool, str]:
    """Is the agent's heartbeat file fresh? (False, why) if missing, unreadable or stale."""
    path = state_dir / "heartbeat.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        age = now - float(record["ts"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return False, f"no readable heartbeat at {path} ({type(exc).__name__})"
    if age > max_age_s:
        return False, f"heartbeat is {age:.0f} s old (limit {max_age_s:.0f} s): the agent is stuck"
    link = "connected" if record.get("connected") else "not connected to the coordinator"
    return True, f"heartbeat {age:.0f} s ago, {link}"


def check_site() -> tuple[bool, str]:
    processes = _agent_processes()
    running = [(pid, state) for pid, state in processes if state not in ("Z", "X", "T", "t")]
    if not running:
        return False, f"no running site_agent process (found {processes or 'none'})"
    config = _env_path("CONCORDIA_HEALTH_CONFIG", "/kit/site.toml")
    state_dir = _state_dir(config)
    beat = ""
    if state_dir is not None:
        max_age = float(os.environ.get("CONCORDIA_HEALTH_HEARTBEAT_MAX_AGE_S", "60"))
        fresh, beat = check_heartbeat(state_dir, max_age, time.time())
        if not fresh:
            return False, beat
        beat = f"; {beat}"
    cert = _tls_paths(config).get("cert")
    if cert is None:
        return True, f"site_agent running (pid {running[0][0]}){beat}; certificate not checked"
    try:
        certificate = _certificate(cert)
    except (OSError, ValueError) as exc:
        return False, f"cannot read the site certificate {cert}: {exc}"
    now = dt.datetime.now(dt.UTC)
    if now >= certificate.not_valid_after_utc:
        return False, f"site certificate expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
    if now < certificate.not_valid_before_utc:
        return False, f"site certificate not valid before {certificate.not_valid_before_utc}"
    days = (certificate.not_valid_after_utc - now).days
    return (
        True,
        f"site_agent running (pid {running[0][0]}){beat}; certificate valid {days} more days",
    )


def main(argv: list[str]) -> int:
    checks = {"coordinator": check_coordinator, "site": check_site}
    if len(argv) != 1 or argv[0] not in checks:
        print(f"usage: healthcheck.py {{{','.join(checks)}}}", file=sys.stderr)
        return 2
    try:
        healthy, message = checks[argv[0]]()
    except Exception as exc:  # a health check reports, it never raises
        healthy, message = False, f"{type(exc).__name__}: {exc}"
    print(("healthy: " if healthy else "unhealthy: ") + message)
    return 0 if healthy else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
