"""Coordinator configuration: the provisioned `coordinator.toml`, with CONCORDIA_… overrides.

`[server] listen`, `[tls] ca/cert/key` (relative to the file), `[store] path`, and optional
`[server] id` and `max_message_mb`. Each field can be overridden by CONCORDIA_<SECTION>_<FIELD>
(e.g. CONCORDIA_SERVER_LISTEN, CONCORDIA_STORE_PATH), which is how containers configure it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federation.tls import TlsKit


class ConfigError(ValueError):
    """A configuration problem, in one line naming the field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSection(_Section):
    listen: str = "0.0.0.0:50051"
    id: str = "coordinator"
    max_message_mb: int = Field(default=64, ge=1, le=1024)


class TlsSection(_Section):
    ca: str
    cert: str
    key: str


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
