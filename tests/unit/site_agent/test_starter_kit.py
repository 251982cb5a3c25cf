"""The kit's starter site.toml: valid as written once the export is in place, valid with every
commented example uncommented, and its [policy] is exactly `SitePolicy`'s defaults."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federation.consortium import parse_consortium
from federation.provisioning import STARTER_CSV, provision
from site_agent.config import ConfigError, DataConfig, SitePolicy, load_site_config
from site_agent.mapping import DEFAULT_NA_VALUES

pytestmark = pytest.mark.unit

EXPORT = "time,event,age,sex\n120,1,64,F\n300,0,71,M\n"
MAPPING_KEYS = {"delimiter", "na_values", "time_unit", "event_values", "censored_values"}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned consortium; the first site's kit folder."""
    consortium = parse_consortium(
        {
            "consortium": {"name": "starter-test"},
            "coordinator": {"hosts": ["coord.example.org"], "port": 7443},
            "sites": ["hospital-a", "hospital-b"],
            "operators": [{"name": "alice", "role": "admin"}],
        }
    )
    result = provision(consortium, tmp_path_factory.mktemp("starter") / "kits")
    return result.site_dirs["hospital-a"]


def _copy_kit(kit: Path, tmp_path: Path, site_toml: str) -> Path:
    """The kit's files in a fresh folder (own state_dir), with `site_toml` and the export."""
    folder = tmp_path / "kit"
    folder.mkdir()
    for name in ("ca.pem", "client.pem", "client.key"):
        (folder / name).write_bytes((kit / name).read_bytes())
    (folder / STARTER_CSV).parent.mkdir(parents=True)
    (folder / STARTER_CSV).write_text(EXPORT)
    (folder / "site.toml").write_text(site_toml)
    return folder / "site.toml"


def _is_example(line: str) -> bool:
    """A commented line that is TOML on its own (`# key = value`, `# [table]`): an example.
    Prose comments never parse, so the rule needs no list of the examples."""
    if not line.startswith("# "):
        return False
    try:
        return bool(tomllib.loads(line[2:]))
    except tomllib.TOMLDecodeError:
        return False


def _uncommented(text: str) -> str:
    return "\n".join(line[2:] if _is_example(line) else line for line in text.splitlines())


def test_the_starter_loads_exactly_as_written_once_the_export_is_in_place(
    kit: Path, tmp_path: Path
) -> None:
    path = _copy_kit(kit, tmp_path, (kit / "site.toml").read_text())
    csv = path.parent / STARTER_CSV
    csv.unlink()
    with pytest.raises(ConfigError, match=r"data\.csv: no such file") as info:
        load_site_config(path, env={})  # before the export is there: one line naming the key
    assert "\n" not in str(info.value)
    csv.write_text(EXPORT)

    config = load_site_config(path, env={})

    assert config.site_id == "hospital-a"
    assert config.coordinator_address == "coord.example.org:7443"
    assert config.state_dir == path.parent / "state"
    assert (config.tls.ca, config.tls.cert, config.tls.key) == (
        path.parent / "ca.pem",
        path.parent / "client.pem",
        path.parent / "client.key",
    )
    assert config.data.csv == csv
    assert len(config.data.split_salt) == 64  # derived once into state/split_salt
    data = config.data
    defaults = DataConfig(csv=csv, split_salt="x" * 16)
    for key in ("time_column", "event_column", "holdout_fraction", "delimiter", "encoding"):
        assert getattr(data, key) == getattr(defaults, key), key
    assert data.na_values == list(DEFAULT_NA_VALUES)
    assert (data.time_unit, data.event_values, data.censored_values) == ("days", ["1"], ["0"])
    assert data.columns == {} and data.values == {} and data.id_column is None
    assert config.policy == SitePolicy()


def test_the_starter_with_every_commented_example_uncommented_loads(
    kit: Path, tmp_path: Path
) -> None:
    text = (kit / "site.toml").read_text()
    examples = [line[2:] for line in text.splitlines() if _is_example(line)]
    shown = {next(iter(tomllib.loads(line))) for line in examples if not line.startswith("[")}
    assert shown >= MAPPING_KEYS | {"id_column", "encoding", "allowed_features"}
    assert "[data.columns]" in " ".join(examples)
    assert any(line.startswith("[data.values.") for line in examples)

    config = load_site_config(_copy_kit(kit, tmp_path, _uncommented(text)), env={})

    data = config.data
    assert data.delimiter == ";" and data.encoding == "latin-1" and data.id_column == "patient_id"
    assert data.na_values == ["NA", "."]
    assert data.time_unit == "months"
    assert (data.event_values, data.censored_values) == (["2"], ["1"])
    assert data.event_coding.decode("2") == 1 and data.event_coding.decode("1") == 0
    assert data.columns == {"age": "age_years", "sex": "gender"}
    sex = data.value_map("sex")
    assert sex is not None and [sex.apply(v) for v in ("f", "2", "M", "1.0")] == [
        "F",
        "F",
        "M",
        "M",
    ]
    assert config.policy.allowed_features == ["age", "sex"]
    # only the allowed_features example differs from the defaults
    assert config.policy.model_copy(update={"allowed_features": None}) == SitePolicy()


def test_the_starter_policy_is_exactly_the_defaults(kit: Path) -> None:
    table = tomllib.loads((kit / "site.toml").read_text())["policy"]
    defaults = SitePolicy()
    expected = {name for name in SitePolicy.model_fields if getattr(defaults, name) is not None}
    assert set(table) == expected  # every setting with a default is shown, under its own name
    for key, value in table.items():
        assert value == getattr(defaults, key), key
    assert type(table["min_cohort_size"]) is int and type(table["max_delta"]) is float


def test_every_site_kit_gets_its_own_starter(kit: Path) -> None:
    other = tomllib.loads((kit.parent / "hospital-b" / "site.toml").read_text())
    assert other["site"]["id"] == "hospital-b"
    assert other["data"]["csv"] == STARTER_CSV
