"""Coordinator configuration: the provisioned `coordinator.toml`, with CONCORDIA_… overrides.

`[server] listen` (one `host:port` or a list of them), `[tls] ca/cert/key` (relative to the
file), `[store] path`, and optional `[server] id` and `max_message_mb`, and `[tls] roster` (the
signed consortium roster; default `roster.json` beside the CA certificate). Each field can be
overridden by
CONCORDIA_<SECTION>_<FIELD> (e.g. CONCORDIA_SERVER_LISTEN, CONCORDIA_STORE_PATH,
CONCORDIA_TLS_ROSTER), which is how containers configure it; CONCORDIA_SERVER_LISTEN takes a
comma-separated list of addresses (e.g. `0.0.0.0:50051` in a container).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from federation.configfile import (
    ConfigError,
    apply_env_overrides,
    read_toml,
    resolve_path,
    validation_message,
)
from federation.roster import ROSTER_FILE
from federation.tls import TlsKit

__all__ = [
    "ConfigError",
    "CoordinatorConfig",
    "ServerSection",
    "StoreSection",
    "TlsSection",
    "load_coordinator_config",
    "split_host_port",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[ipv6]:port` → (host without brackets, port); ValueError if malformed."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{address!r}: write an IPv6 address in brackets, [addr]:port")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r}: the port must be a number from 0 to 65535")
    if not host:
        raise ValueError(f"{address!r} has no host")
    return host, int(port_text)


class ServerSection(_Section):
    """`[server]`: where to listen, the coordinator's id in audit entries, the message limit.

    The provisioned kit lists only the hosts sites dial, so the coordinator does not listen on
    every interface unless told to (`CONCORDIA_SERVER_LISTEN=0.0.0.0:50051` in a container).
    """

    # Addresses to listen on, each host:port ([v6]:port); a host name is bound on the addresses
    # it resolves to. A single string, or a comma-separated one (CONCORDIA_SERVER_LISTEN), works.
    listen: list[str] = Field(default_factory=lambda: ["0.0.0.0:50051"], min_length=1)
    id: str = "coordinator"
    max_message_mb: int = Field(default=64, ge=1, le=1024)

    @field_validator("listen", mode="before")
    @classmethod
    def _split_listen(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: list[str]) -> list[str]:
        for address in value:
            split_host_port(address)
        return value


class TlsSection(_Section):
    """`[tls]`: the kit's CA, server certificate and key, and the signed roster the coordinator
    admits participants by (paths relative to `coordinator.toml`)."""

    ca: str
    cert: str
    key: str
    roster: str | None = None


class StoreSection(_Section):
    """`[store]`: the SQLite file that holds every run; a restarted coordinator resumes from it."""

    path: str = "coordinator.sqlite"


class CoordinatorConfig(_Section):
    """A validated `coordinator.toml`; `base` is the file's folder, which relative paths are
    taken from when they are used (so the kit can be moved as a whole)."""

    server: ServerSection = ServerSection()
    tls: TlsSection
    store: StoreSection = StoreSection()
    base: Path = Path(".")

    def resolve(self, path: str) -> Path:
        """A configured path, relative ones taken from the folder of `coordinator.toml`."""
        return resolve_path(path, self.base)

    def roster_path(self) -> Path:
        """The signed roster: `[tls] roster`, else `roster.json` next to the CA certificate."""
        if self.tls.roster:
            return self.resolve(self.tls.roster)
        return self.resolve(self.tls.ca).parent / ROSTER_FILE

    def tls_kit(self) -> TlsKit:
        """The server's TLS kit, loaded (and its key checked against its certificate) at start."""
        return TlsKit.from_files(
            self.resolve(self.tls.ca), self.resolve(self.tls.cert), self.resolve(self.tls.key)
        )


_SECTIONS: dict[str, type[BaseModel]] = {
    "server": ServerSection,
    "tls": TlsSection,
    "store": StoreSection,
}


def load_coordinator_config(path: Path, env: Mapping[str, str] | None = None) -> CoordinatorConfig:
    """Read `coordinator.toml`, apply CONCORDIA_<SECTION>_<FIELD>, validate: one-line errors."""
    env = os.environ if env is None else env
    source = str(path)
    data = read_toml(path)
    keys = {section: tuple(model.model_fields) for section, model in _SECTIONS.items()}
    from_env = apply_env_overrides(data, keys, env, source=source)
    try:
        return CoordinatorConfig.model_validate({**data, "base": path.parent})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source, from_env)) from None
