"""Site agent configuration: the provisioned `site.toml` plus CONCORDIA_<SECTION>_<FIELD> overrides.

Layout: `[site] id, state_dir`, `[coordinator] address`, `[tls] ca, cert, key`, `[data]` (with an
optional `[data.columns]` table) and `[policy]`. Relative paths resolve against the folder of the
config file (also when they come from the environment), so a startup kit can be moved as a whole.
Every problem becomes one `ConfigError` line naming the field, never a traceback: a hospital
operator must be able to fix the file from the message alone. docs/site-config.md is the reference.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from federation.configfile import (
    ENV_PREFIX,
    ConfigError,
    apply_env_overrides,
    check_known_keys,
    env_name,
    read_toml,
    resolve_paths,
    validation_message,
)
from federation.plan import DEFAULT_PURPOSE, PURPOSE_PATTERN, SITE_ID_PATTERN
from site_agent.data_config import DataConfig

__all__ = [
    "ENV_PREFIX",
    "MODEL_KINDS",
    "SALT_FILE",
    "ConfigError",
    "DataConfig",
    "SiteConfig",
    "SitePolicy",
    "TlsPaths",
    "env_name",
    "load_site_config",
]
SALT_FILE = "split_salt"
"""Where a derived split salt lives (in state_dir) when the config does not set one."""

ModelKind = Literal["linear", "mlp"]
MODEL_KINDS: tuple[ModelKind, ...] = ("linear", "mlp")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SitePolicy(_Section):
    """What this hospital agrees to: a plan outside it is refused with a reason."""

    allowed_features: list[str] | None = None
    """None: any feature of the consortium schema."""
    max_epsilon_per_run: float = Field(default=3.0, gt=0.0)
    lifetime_epsilon: float = Field(
        default=10.0,
        gt=0.0,
        validation_alias=AliasChoices("lifetime_epsilon", "lifetime_epsilon_budget"),
    )
    max_delta: float = Field(default=1e-5, gt=0.0, lt=1e-2)
    min_cohort_size: int = Field(default=100, ge=1)
    allowed_model_kinds: list[ModelKind] = Field(default_factory=lambda: list(MODEL_KINDS))
    min_session_sites: int = Field(default=3, ge=2, le=1000)
    """The fewest sites in any secure-aggregation session this site joins. With 2, each of the
    two learns the other's release from the published aggregate (sum minus its own)."""
    approval: Literal["auto", "manual"] = "auto"
    """manual: a plan that passes every check still waits until a person approves it
    (`python -m site_agent approve`); the site joins no session of it before."""
    small_cell_threshold: int = Field(default=5, ge=1, le=1000)
    """Counts below this are shown as "<k" in data-quality reports, and a local value seen fewer
    times is never named (a rare value can identify a patient)."""
    max_colluding_sites: int = Field(default=0, ge=0, le=1000)
    """Sites this hospital assumes may collude with the coordinator: every session's threshold
    must exceed (n + this)/2, and a plan assuming fewer is refused."""
    trusted_noise_sites: int = Field(default=1, ge=1, le=64)
    """Distributed mode (docs/model.md): the participants of a session this site assumes are
    honest, itself included. It sizes its noise share so that the sum carries the full noise if
    that many are honest, and joins no session and answers no Unmask with fewer. 1: the site
    trusts only its own noise and adds all of it."""
    budget_epsilon: Literal["assumed", "worst_case"] = "assumed"
    """Which of the two ε the ledger keeps for a distributed release is charged to the budget:
    the one under `trusted_noise_sites` (assumed) or the one from this site's own noise alone
    (worst_case, which also makes the site add the full noise itself)."""
    allowed_purposes: list[str] = Field(default_factory=lambda: [DEFAULT_PURPOSE], min_length=1)
    """Processing purposes this site takes part in (a plan's `purpose` outside it is refused)."""
    lawful_basis: dict[str, str] = Field(
        default_factory=lambda: {DEFAULT_PURPOSE: "GDPR Art. 6(1)(e), 9(2)(j)"}
    )
    """Per allowed purpose, the lawful basis the site records for it (records of processing)."""
    retention_days: int = Field(default=365, ge=1, le=36500)
    """Run state (release vectors, session states, saved plans) idle longer than this is purged;
    the records of processing and the audit log are kept (docs/gdpr.md)."""
    publish_own_metrics: bool = False
    """true: at a run's final evaluation this site also publishes its own figures (C windowed,
    IBS, noised patient and event counts of its held-out rows) in plaintext to the coordinator,
    where the model card and report show them per site. It is a separate release with its own
    Gaussian noise, charged to the held-out partition of the ledger before it leaves, its σ
    calibrated here to the room the consortium evaluations leave within the run's ε (by default
    1 - privacy.metrics_epsilon_share of it): it costs held-out budget, never training budget
    (site_agent/published_metrics.py). false (the default): nothing but the secure sum leaves;
    the site still keeps its own figures in its audit log (`own_metrics`)."""

    @field_validator("allowed_purposes")
    @classmethod
    def _purpose_names(cls, purposes: list[str]) -> list[str]:
        for purpose in purposes:
            if not re.fullmatch(PURPOSE_PATTERN, purpose):
                raise ValueError(f"{purpose!r} is not a purpose name (like {DEFAULT_PURPOSE!r})")
        return purposes

    @model_validator(mode="after")
    def _every_purpose_has_a_basis(self) -> SitePolicy:
        missing = [p for p in self.allowed_purposes if not self.lawful_basis.get(p, "").strip()]
        if missing:
            raise ValueError(
                f"lawful_basis names no basis for allowed purpose(s) {missing}: add e.g."
                f' lawful_basis = {{"{missing[0]}" = "GDPR Art. 6(1)(e), 9(2)(j)"}}'
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _one_name_for_lifetime(cls, data: Any) -> Any:
        if isinstance(data, dict) and {"lifetime_epsilon", "lifetime_epsilon_budget"} <= set(data):
            raise ValueError("set lifetime_epsilon or lifetime_epsilon_budget, not both")
        return data

    @model_validator(mode="after")
    def _floor_leaves_two_honest_sites(self) -> SitePolicy:
        if self.min_session_sites < self.max_colluding_sites + 2:
            raise ValueError(
                f"min_session_sites ({self.min_session_sites}) must be >= max_colluding_sites + 2"
                f" ({self.max_colluding_sites + 2}): a sum over fewer honest sites is one release"
            )
        return self

    @model_validator(mode="after")
    def _lifetime_covers_a_run(self) -> SitePolicy:
        if self.lifetime_epsilon < self.max_epsilon_per_run:
            raise ValueError(
                f"lifetime_epsilon ({self.lifetime_epsilon:g}) must be >= max_epsilon_per_run"
                f" ({self.max_epsilon_per_run:g})"
            )
        return self


class TlsPaths(_Section):
    """The kit's files; `TlsKit.from_files(ca, cert, key)` loads them."""

    ca: Path
    cert: Path
    key: Path


class SiteConfig(_Section):
    """A validated site configuration with absolute paths."""

    site_id: str = Field(pattern=SITE_ID_PATTERN)
    state_dir: Path
    coordinator_address: str = Field(min_length=1)
    tls: TlsPaths
    data: DataConfig
    policy: SitePolicy = Field(default_factory=SitePolicy)

    @field_validator("coordinator_address")
    @classmethod
    def _address(cls, address: str) -> str:
        if re.search(r"\s", address):
            raise ValueError("must not contain whitespace")
        return address


# Known keys per TOML section, and how an environment string becomes a value for each.
_LIST_FIELDS = {
    ("policy", "allowed_features"),
    ("policy", "allowed_model_kinds"),
    ("data", "na_values"),
    ("data", "event_values"),
    ("data", "censored_values"),
    ("data", "consent_values"),
    ("policy", "allowed_purposes"),
}
_OPTIONAL_FIELDS = {
    ("data", "id_column"),
    ("data", "patient_id_column"),
    ("data", "delimiter"),
    ("data", "consent_column"),
    ("data", "consent_registry"),
}
_PATH_FIELDS = {
    ("site", "state_dir"),
    ("tls", "ca"),
    ("tls", "cert"),
    ("tls", "key"),
    ("data", "csv"),
    ("data", "consent_registry"),
}
_SECTIONS: dict[str, tuple[str, ...]] = {
    "site": ("id", "state_dir"),
    "coordinator": ("address",),
    "tls": ("ca", "cert", "key"),
    "data": (*DataConfig.model_fields, "patient_id_column"),
    "policy": (*SitePolicy.model_fields, "lifetime_epsilon_budget"),
}
# Where each TOML location lands in the SiteConfig model (for error messages, the other way).
_TOML_TO_MODEL = {("site", "id"): "site_id", ("coordinator", "address"): "coordinator_address"}
_MODEL_TO_TOML = {v: ".".join(k) for k, v in _TOML_TO_MODEL.items()}


def _env_value(section: str, field: str, text: str) -> object:
    """How an environment string becomes the value of `[section] field`."""
    if (section, field) in _LIST_FIELDS:
        return [item.strip() for item in text.split(",") if item.strip()]
    if (section, field) == ("data", "delimiter"):
        return text or None  # a tab is a valid delimiter: only "" means unset
    if (section, field) in _OPTIONAL_FIELDS and not text.strip():
        return None
    if (section, field) == ("policy", "lawful_basis"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"policy.lawful_basis (from {env_name(section, field)}): expected JSON such as"
                f' {{"{DEFAULT_PURPOSE}": "GDPR Art. 6(1)(e), 9(2)(j)"}}: {exc.msg}'
            ) from None
    if (section, field) == ("data", "values"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"data.values (from {env_name(section, field)}): expected JSON such as"
                f' {{"sex": {{"F": ["f", "2"]}}}}: {exc.msg}'
            ) from None
    if (section, field) == ("data", "columns"):
        mapping: dict[str, str] = {}
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            name, sep, local = item.partition("=")
            if not sep:
                raise ConfigError(
                    f"data.columns (from {env_name(section, field)}): expected"
                    f" name=column pairs separated by commas, got {item!r}"
                )
            mapping[name.strip()] = local.strip()
        return mapping
    return text


def _to_model_input(data: dict[str, Any], base: Path, source: str) -> dict[str, Any]:
    check_known_keys(data, _SECTIONS, source)
    resolve_paths(data, _PATH_FIELDS, base)
    site = data.get("site", {})
    out: dict[str, Any] = {
        "site_id": site.get("id"),
        "state_dir": site.get("state_dir", base / "state"),
        "coordinator_address": data.get("coordinator", {}).get("address"),
        "tls": data.get("tls"),
        "data": data.get("data"),
        "policy": data.get("policy", {}),
    }
    return {k: v for k, v in out.items() if v is not None}


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _MODEL_TO_TOML:
        return ".".join([_MODEL_TO_TOML[parts[0]], *parts[1:]])
    return ".".join(parts) or "config"


def _derived_salt(state_dir: Path) -> str:
    """A random per-site salt kept in state_dir, created once with mode 0600."""
    path = state_dir / SALT_FILE
    try:
        if not path.exists():
            state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        return path.read_text(encoding="ascii").strip()
    except FileExistsError:  # another process created it first
        return path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(
            f"data.split_salt: not set, and {path} cannot be created or read: {exc.strerror}"
        ) from None


def _check_files(config: SiteConfig, source: str) -> None:
    files: list[tuple[str, Path]] = [
        ("tls.ca", config.tls.ca),
        ("tls.cert", config.tls.cert),
        ("tls.key", config.tls.key),
        ("data.csv", config.data.csv),
    ]
    if config.data.consent_registry is not None:
        files.append(("data.consent_registry", config.data.consent_registry))
    for where, path in files:
        if not path.is_file():
            raise ConfigError(f"{source}: {where}: no such file {path}")
    if config.state_dir.exists() and not config.state_dir.is_dir():
        raise ConfigError(f"{source}: site.state_dir: {config.state_dir} is not a folder")


def load_site_config(path: Path, env: Mapping[str, str] | None = None) -> SiteConfig:
    """Read, override from the environment, validate; raises ConfigError with one line."""
    env = os.environ if env is None else env
    path = Path(path)
    source = str(path)
    data = read_toml(path)
    base = path.resolve().parent
    from_env = apply_env_overrides(data, _SECTIONS, env, source=source, convert=_env_value)
    model_input = _to_model_input(data, base, source)
    data_table = model_input.get("data")
    derive_salt = isinstance(data_table, dict) and "split_salt" not in data_table
    if derive_salt:
        # Validate everything else first: a broken config must not create state on disk.
        data_table["split_salt"] = "0" * 64  # type: ignore[index]
    try:
        config = SiteConfig.model_validate(model_input)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, source, from_env, _where)) from None
    _check_files(config, source)
    if derive_salt:
        salt = _derived_salt(config.state_dir)
        config = config.model_copy(
            update={"data": config.data.model_copy(update={"split_salt": salt})}
        )
        if len(salt) < 16:
            raise ConfigError(f"data.split_salt: {config.state_dir / SALT_FILE} is too short")
    return config
