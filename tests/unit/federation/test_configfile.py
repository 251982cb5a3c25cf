"""The shared configuration loader: TOML, CONCORDIA_<SECTION>_<KEY>, paths, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from federation.configfile import (
    ConfigError,
    apply_env_overrides,
    check_known_keys,
    env_name,
    read_toml,
    resolve_path,
    resolve_paths,
    validation_message,
)

pytestmark = pytest.mark.unit


class _Secrets(BaseModel):
    model_config = ConfigDict(extra="forbid")
    salt: str = Field(min_length=16)
    rounds: int = Field(default=1, ge=1)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secrets: _Secrets


def test_env_name_is_prefix_section_key() -> None:
    assert env_name("policy", "max_epsilon_per_run") == "CONCORDIA_POLICY_MAX_EPSILON_PER_RUN"


def test_read_toml_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[server]\nlisten = "a:1"\n')
    assert read_toml(good) == {"server": {"listen": "a:1"}}
    cases = {
        "absent.toml": (None, "absent.toml: no such configuration file"),
        "bad.toml": (b"[server\n", "bad.toml: not valid TOML"),
        "latin1.toml": ('name = "Zürich"\n'.encode("latin-1"), "latin1.toml: not UTF-8 text"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ConfigError, match=expected) as info:
            read_toml(path)
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"absent\.toml: pass --config"):
        read_toml(tmp_path / "absent.toml", missing="pass --config")
    with pytest.raises(ConfigError, match="cannot read"):
        read_toml(tmp_path)  # a folder


def test_env_overrides_only_known_keys_and_report_where_they_came_from() -> None:
    data: dict[str, object] = {"server": {"listen": "a:1"}}
    env = {
        "CONCORDIA_SERVER_LISTEN": "b:2",
        "CONCORDIA_STORE_PATH": "/s.sqlite",
        "CONCORDIA_SERVER_UNKNOWN": "ignored",
        "CONCORDIA_TLS_CA": "",
    }
    keys = {"server": ("listen",), "store": ("path",), "tls": ("ca",)}
    used = apply_env_overrides(data, keys, env, source="c.toml")
    assert data == {"server": {"listen": "b:2"}, "store": {"path": "/s.sqlite"}, "tls": {"ca": ""}}
    assert used == {
        "server.listen": "CONCORDIA_SERVER_LISTEN",
        "store.path": "CONCORDIA_STORE_PATH",
        "tls.ca": "CONCORDIA_TLS_CA",
    }
    skipped: dict[str, object] = {}
    used = apply_env_overrides(skipped, keys, {"CONCORDIA_TLS_CA": ""}, source="c", skip_empty=True)
    assert skipped == {} and used == {}
    converted: dict[str, object] = {}
    apply_env_overrides(
        converted,
        {"policy": ("features",)},
        {"CONCORDIA_POLICY_FEATURES": "a, b"},
        source="s.toml",
        convert=lambda _section, _key, text: [t.strip() for t in text.split(",")],
    )
    assert converted == {"policy": {"features": ["a", "b"]}}


def test_env_override_errors_name_the_file() -> None:
    with pytest.raises(ConfigError, match=r"^c\.toml: server: must be a table$"):
        apply_env_overrides(
            {"server": 3},
            {"server": ("listen",)},
            {"CONCORDIA_SERVER_LISTEN": "x"},
            source="c.toml",
        )

    def refuse(section: str, key: str, text: str) -> object:
        raise ConfigError(f"{section}.{key}: expected pairs")

    with pytest.raises(ConfigError, match=r"^s\.toml: data\.columns: expected pairs$"):
        apply_env_overrides(
            {},
            {"data": ("columns",)},
            {"CONCORDIA_DATA_COLUMNS": "x"},
            source="s.toml",
            convert=refuse,
        )


def test_unknown_sections_and_keys_are_named() -> None:
    keys = {"site": ("id",)}
    check_known_keys({"site": {"id": "a"}}, keys, "s.toml")
    with pytest.raises(ConfigError, match=r"s\.toml: \[extras\]: unknown section"):
        check_known_keys({"extras": {}}, keys, "s.toml")
    with pytest.raises(ConfigError, match=r"s\.toml: site\.name: unknown key"):
        check_known_keys({"site": {"name": "a"}}, keys, "s.toml")
    with pytest.raises(ConfigError, match=r"s\.toml: site: must be a table"):
        check_known_keys({"site": "a"}, keys, "s.toml")


def test_relative_paths_are_taken_from_the_files_folder(tmp_path: Path) -> None:
    assert resolve_path("ca.pem", tmp_path) == tmp_path / "ca.pem"
    assert resolve_path("/etc/ca.pem", tmp_path) == Path("/etc/ca.pem")
    assert resolve_path("~/ca.pem", tmp_path) == Path.home() / "ca.pem"
    data: dict[str, object] = {"tls": {"ca": "ca.pem", "key": "", "cert": 3}, "data": {}}
    resolve_paths(data, [("tls", "ca"), ("tls", "key"), ("tls", "cert"), ("data", "csv")], tmp_path)
    # only non-empty strings are paths; the rest is left for the model to name
    assert data == {"tls": {"ca": tmp_path / "ca.pem", "key": "", "cert": 3}, "data": {}}


def test_validation_message_names_every_field_and_never_the_value() -> None:
    secret = "hunter2-short"
    with pytest.raises(ValidationError) as info:
        _Config.model_validate({"secrets": {"salt": secret, "rounds": "many", "x": 1}})
    message = validation_message(
        info.value, "k.toml", {"secrets.rounds": "CONCORDIA_SECRETS_ROUNDS"}
    )
    assert message == (
        "k.toml: secrets.salt: must have at least 16 characters;"
        " secrets.rounds (from CONCORDIA_SECRETS_ROUNDS): must be an integer;"
        " secrets.x: unknown key"
    )
    assert secret not in message and "many" not in message
    renamed = validation_message(info.value, "k.toml", where=lambda loc: "salt" + str(len(loc)))
    assert renamed.startswith("k.toml: salt2: must have at least 16 characters")


def test_every_component_raises_the_one_config_error() -> None:
    from coordinator import config as coordinator_config
    from site_agent import config as site_config

    assert site_config.ConfigError is ConfigError
    assert coordinator_config.ConfigError is ConfigError
