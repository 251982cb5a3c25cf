"""The one configuration loader: TOML file, CONCORDIA_<SECTION>_<KEY> overrides, paths, errors.

Every component is configured the same way, so an operator learns it once: a TOML file from the
startup kit (`site.toml`, `coordinator.toml`, `fedctl.toml`), any key of which an environment
variable `CONCORDIA_<SECTION>_<KEY>` overrides (how containers configure them), relative paths
taken from the folder of the file (so a kit can be moved as a whole), and every problem reported
as one `ConfigError` line that names the file and the field. A hospital operator must be able to
fix the file from the message alone, and the message never repeats a value: some of them are
secrets (the site's split salt).

The components keep their own pydantic models (`site_agent/config.py`,
`coordinator/config.py`) and their own key lists; this module holds the steps they share:
`read_toml` → `apply_env_overrides` → `check_known_keys` / `resolve_paths` → the model's
validation → `validation_message`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

ENV_PREFIX = "CONCORDIA_"

EnvConverter = Callable[[str, str, str], object]
"""(section, key, text) → the value the model gets for an environment string."""


class ConfigError(ValueError):
    """A configuration that cannot be used, in one line naming the file and the field.

    The one error type for every component's configuration, so that every entry point (the
    site agent, the coordinator, fedctl) reports it the same way: one line, no traceback.
    """


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides `[section] key` (`CONCORDIA_SECTION_KEY`)."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def read_toml(path: Path, *, missing: str = "no such configuration file") -> dict[str, Any]:
    """The parsed TOML file at `path`; any reason it cannot be read is one ConfigError line.

    `missing` is what to say when the file does not exist (fedctl adds its `--config` hint).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None


def apply_env_overrides(
    data: dict[str, Any],
    keys: Mapping[str, Iterable[str]],
    env: Mapping[str, str],
    *,
    source: str,
    convert: EnvConverter | None = None,
    skip_empty: bool = False,
) -> dict[str, str]:
    """Overlay `CONCORDIA_<SECTION>_<KEY>` onto `data[section][key]` for every known key.

    Only the keys listed in `keys` (section → keys) are looked up, so an unrelated variable
    never changes a configuration. `convert` turns the environment string into the value the
    model expects (a list, a mapping, None); without it the string is passed on and pydantic
    coerces it. With `skip_empty`, a variable set to "" counts as unset. Returns
    {"section.key": variable} for every override used, so that `validation_message` can say
    where a bad value came from.
    """
    used: dict[str, str] = {}
    for section, section_keys in keys.items():
        for key in section_keys:
            name = env_name(section, key)
            if name not in env or (skip_empty and not env[name]):
                continue
            table = data.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{source}: {section}: must be a table")
            try:
                table[key] = env[name] if convert is None else convert(section, key, env[name])
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            used[f"{section}.{key}"] = name
    return used


def check_known_keys(
    data: Mapping[str, Any], keys: Mapping[str, Iterable[str]], source: str
) -> None:
    """Refuse a section or key the component does not know, naming it (a typo must not be
    silently ignored: `max_epsilon = 3` instead of `max_epsilon_per_run` would leave the
    default in force)."""
    for section, table in data.items():
        if section not in keys:
            raise ConfigError(f"{source}: [{section}]: unknown section")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {section}: must be a table")
        known = set(keys[section])
        for key in table:
            if key not in known:
                raise ConfigError(f"{source}: {section}.{key}: unknown key")


def resolve_path(value: str | Path, base: Path) -> Path:
    """`value` with `~` expanded and, if still relative, taken from `base` (the file's folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def resolve_paths(data: dict[str, Any], fields: Iterable[tuple[str, str]], base: Path) -> None:
    """Resolve every (section, key) path in `data` against `base`, in place.

    Applied after the environment overrides, so a relative path from the environment means the
    same as in the file. Only non-empty strings are paths; anything else is left for the
    model's validation to name.
    """
    for section, key in fields:
        table = data.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), str) and table[key]:
            table[key] = resolve_path(table[key], base)


_PHRASES: dict[str, str] = {
    "missing": "is required",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a table",
    "model_type": "must be a table",
    "extra_forbidden": "unknown key",
    "string_too_short": "must have at least {min_length} characters",
    "string_pattern_mismatch": "must match {pattern}",
    "literal_error": "must be one of {expected}",
    "path_type": "must be a path string",
}


class _Context(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "None"


def describe_error(item: Mapping[str, Any]) -> str:
    """A short phrase for one pydantic error that never echoes the offending value."""
    kind = item["type"]
    if kind in _PHRASES:
        return _PHRASES[kind].format_map(_Context(item.get("ctx") or {}))
    return str(item["msg"]).removeprefix("Value error, ")


def validation_message(
    error: ValidationError,
    source: str,
    from_env: Mapping[str, str] | None = None,
    where: Callable[[tuple[Any, ...]], str] | None = None,
) -> str:
    """Every problem of `error` in one line: `source: field (from VARIABLE): phrase; …`.

    `where` maps a pydantic location to the field's name in the file (default: the location
    joined with dots); `from_env` is what `apply_env_overrides` returned.
    """
    messages = []
    for item in error.errors():
        loc = tuple(item["loc"])
        field = where(loc) if where is not None else ".".join(str(p) for p in loc) or "config"
        variable = next((v for k, v in (from_env or {}).items() if field.startswith(k)), None)
        label = f"{field} (from {variable})" if variable else field
        messages.append(f"{label}: {describe_error(item)}")
    return f"{source}: " + "; ".join(messages)
