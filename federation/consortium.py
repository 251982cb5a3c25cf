"""The consortium file `fedctl provision` reads: the members and where the coordinator listens.

Example::

    sites = ["hospital-a", "hospital-b"]   # top-level keys come before the tables

    [consortium]
    name = "demo"
    validity_days = 365

    [coordinator]
    hosts = ["coordinator.example.org", "10.0.0.5"]
    port = 50051

    [[operators]]
    name = "alice"
    role = "admin"
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from federation.identity import NAME_PATTERN, OperatorRole

_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")

ParticipantName = Annotated[str, Field(pattern=rf"^{NAME_PATTERN}$")]


class ConsortiumError(ValueError):
    """The consortium file is missing, unreadable or invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConsortiumInfo(_Strict):
    """`[consortium]`: the name every certificate and the roster carry, and how long the
    certificates `fedctl provision` issues stay valid (renewal is `fedctl provision renew`)."""

    name: Annotated[str, Field(min_length=1, max_length=64)]
    validity_days: Annotated[int, Field(ge=1, le=3650)] = 365


class CoordinatorSpec(_Strict):
    """`[coordinator]`: the names and addresses sites dial. They go into the server certificate
    (so TLS checks the name a site dialled) and into the coordinator's starter `listen`."""

    hosts: Annotated[list[str], Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 50051

    @field_validator("hosts")
    @classmethod
    def _valid_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            if not (_is_ip(host) or _is_dns_name(host)):
                raise ValueError(f"{host!r} is neither an IP address nor a DNS host name")
        if len(set(hosts)) != len(hosts):
            raise ValueError("host names must be unique")
        return hosts

    @property
    def dns_names(self) -> list[str]:
        """The hosts that are names: they become DNS subject alternative names."""
        return [h for h in self.hosts if not _is_ip(h)]

    @property
    def ip_addresses(self) -> list[str]:
        """The hosts that are IP literals: they become IP subject alternative names (a name
        check against a literal would fail)."""
        return [h for h in self.hosts if _is_ip(h)]

    @property
    def address(self) -> str:
        """host:port clients dial (the first host; IPv6 literals bracketed)."""
        host = self.hosts[0]
        if _is_ip(host) and ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
        return f"{host}:{self.port}"


class OperatorSpec(_Strict):
    """`[[operators]]`: one operator kit; the role in its certificate is what the coordinator
    authorises by (`admin` may submit and stop runs, `viewer` may only read)."""

    name: ParticipantName
    role: OperatorRole


class ConsortiumConfig(_Strict):
    """The whole consortium file, validated before any key is made, so that a typo never
    leaves half a set of kits behind."""

    consortium: ConsortiumInfo
    coordinator: CoordinatorSpec
    sites: Annotated[list[ParticipantName], Field(min_length=1)]
    operators: list[OperatorSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> ConsortiumConfig:
        if len(set(self.sites)) != len(self.sites):
            raise ValueError("sites: site ids must be unique")
        names = [o.name for o in self.operators]
        if len(set(names)) != len(names):
            raise ValueError("operators: operator names must be unique")
        return self


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_dns_name(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return all(_DNS_LABEL.match(label) for label in labels)


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first offending field, e.g. `sites[1]: String should match …`."""
    first = exc.errors()[0]
    field = _format_loc(first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{field}: {message}{suffix}" if field else f"{message}{suffix}"


def _format_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_consortium(data: dict[str, Any], *, source: str = "consortium") -> ConsortiumConfig:
    """Validate an already-parsed mapping."""
    try:
        return ConsortiumConfig.model_validate(data)
    except ValidationError as exc:
        raise ConsortiumError(f"{source}: {describe_validation_error(exc)}") from exc


def load_consortium(path: Path) -> ConsortiumConfig:
    """Read and validate a consortium TOML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConsortiumError(f"cannot read consortium file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConsortiumError(f"{path}: not valid TOML: {exc}") from exc
    return parse_consortium(data, source=str(path))
