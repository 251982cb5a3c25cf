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
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from federation.roster import ROSTER_FILE
from federation.tls import TlsKit


class ConfigError(ValueError):
    """A configuration problem, in one line naming the field."""


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
    ca: str
    cert: str
    key: str
    roster: str | None = None


class StoreSection(_Section):
    path: str = "coordinator.sqlite"


class CoordinatorConfig(_Section):
    server: ServerSection = ServerSection()
    tls: TlsSection
    store: StoreSection = StoreSection()
    base: Path = Path(".")

    def resolve(self, path: str) -> Path:
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.base / candidate

    def roster_path(self) -> Path:
        """The signed roster: `[tls] roster`, else `roster.json` next to the CA certificate."""
        if self.tls.roster:
            return self.resolve(self.tls.roster)
        return self.resolve(self.tls.ca).parent / ROSTER_FILE

    def tls_kit(self) -> TlsKit:
        return TlsKit.from_files(
            self.resolve(self.tls.ca), self.resolve(self.tls.cert), self.resolve(self.tls.key)
        )


def apply_env_overrides(
    data: dict[str, object], sections: Mapping[str, type[BaseModel]], env: Mapping[str, str]
) -> None:
    """Set data[section][field] from CONCORDIA_<SECTION>_<FIELD> for every known field."""
    for section, model in sections.items():
        for name in model.model_fields:
            value = env.get(f"CONCORDIA_{section.upper()}_{name.upper()}")
            if value is not None:
                table = data.setdefault(section, {})
                if not isinstance(table, dict):
                    raise ConfigError(f"{section}: must be a table")
                table[name] = value


def load_coordinator_config(path: Path, env: Mapping[str, str] | None = None) -> CoordinatorConfig:
    env = os.environ if env is None else env
    try:
        data: dict[str, object] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    apply_env_overrides(
        data, {"server": ServerSection, "tls": TlsSection, "store": StoreSection}, env
    )
    try:
        config = CoordinatorConfig.model_validate({**data, "base": path.parent})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None
    return config
