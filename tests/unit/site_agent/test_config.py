"""site.toml loading: the provisioned starter, env overrides, relative paths, one-line errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from federation.provisioning import site_config_text
from site_agent.config import SALT_FILE, ConfigError, load_site_config

pytestmark = pytest.mark.unit

SALT = "s" * 32


def kit(tmp_path: Path, data: str, policy: str = "") -> Path:
    """A kit folder with dummy TLS files, a CSV and the provisioned site.toml's [site],
    [coordinator] and [tls], with these [data] and [policy] sections instead of the starter's."""
    for name in ("ca.pem", "client.pem", "client.key", "cohort.csv"):
        (tmp_path / name).write_text("x")
    text = site_config_text("test", "hosp-a", "coord.example:7443")
    path = tmp_path / "site.toml"
    path.write_text(text[: text.index("\n[data]\n")] + "\n" + data + "\n" + policy)
    return path


MINIMAL = f'[data]\ncsv = "cohort.csv"\nsplit_salt = "{SALT}"\n'


def test_provisioned_starter_with_its_commented_examples_filled_in(tmp_path: Path) -> None:
    """Uncommenting the starter's [data]/[policy] examples gives a valid config
    (tests/unit/site_agent/test_starter_kit.py checks the starter as written, too)."""
    starter = site_config_text("test", "hosp-a", "coord.example:7443")
    lines = []
    for line in starter.splitlines():
        if line.startswith("# [") or (line.startswith("# ") and " = " in line):
            line = line[2:]
        lines.append(line)
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    csv = tmp_path / "data" / "cohort.csv"
    csv.parent.mkdir()
    csv.write_text("x")
    path = tmp_path / "site.toml"
    path.write_text("\n".join(lines))

    config = load_site_config(path, env={})

    assert config.site_id == "hosp-a"
    assert config.coordinator_address == "coord.example:7443"
    assert config.tls.cert == tmp_path / "client.pem"
    assert config.state_dir == tmp_path / "state"
    assert config.data.csv == csv  # the starter's data/cohort.csv, relative to the kit
    assert config.data.time_column == "time"
    assert config.data.event_column == "event"
    assert config.data.columns == {"age": "age_years", "sex": "gender"}
    assert config.data.local_column("age") == "age_years"
    assert config.data.local_column("kappa") == "kappa"
    assert config.policy.lifetime_epsilon == 10.0
    assert config.policy.min_cohort_size == 100
    assert config.policy.allowed_features == ["age", "sex"]
    assert config.policy.allowed_model_kinds == ["linear", "mlp"]


def test_time_and_event_may_still_be_mapped_in_data_columns(tmp_path: Path) -> None:
    """Kits written before the starter named time_column/event_column mapped them in
    [data.columns]; that spelling still loads."""
    data = MINIMAL + '[data.columns]\ntime = "followup_days"\nevent = "died"\nage = "age_years"\n'
    config = load_site_config(kit(tmp_path, data), env={})
    assert config.data.time_column == "followup_days"
    assert config.data.event_column == "died"
    assert config.data.columns == {"age": "age_years"}


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_site_config(kit(tmp_path, MINIMAL), env={})
    assert config.data.csv == tmp_path / "cohort.csv"
    assert config.tls.ca == tmp_path / "ca.pem"
    assert config.data.split_salt == SALT
    assert config.data.holdout_fraction == 0.2
    assert config.data.id_column is None
    assert config.policy.allowed_features is None
    assert config.policy.allowed_model_kinds == ["linear", "mlp"]
    assert config.policy.max_epsilon_per_run == 3.0
    assert SALT not in repr(config), "the split salt is a secret and must not show in logs"


def test_every_kind_of_env_override(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere.csv"
    other.write_text("x")
    env = {
        "CONCORDIA_COORDINATOR_ADDRESS": "10.0.0.1:443",
        "CONCORDIA_DATA_CSV": "elsewhere.csv",
        "CONCORDIA_DATA_COLUMNS": "age=age_years, sex=gender",
        "CONCORDIA_DATA_ID_COLUMN": "mrn",
        "CONCORDIA_DATA_HOLDOUT_FRACTION": "0.3",
        "CONCORDIA_POLICY_MAX_EPSILON_PER_RUN": "2.5",
        "CONCORDIA_POLICY_MIN_COHORT_SIZE": "50",
        "CONCORDIA_POLICY_ALLOWED_FEATURES": "age, sex",
        "CONCORDIA_POLICY_ALLOWED_MODEL_KINDS": "linear",
        "CONCORDIA_SITE_STATE_DIR": "/var/lib/concordia",
    }
    config = load_site_config(kit(tmp_path, MINIMAL), env=env)
    assert config.coordinator_address == "10.0.0.1:443"
    assert config.data.csv == other  # relative env paths resolve against the config folder too
    assert config.data.columns == {"age": "age_years", "sex": "gender"}
    assert config.data.id_column == "mrn"
    assert config.data.holdout_fraction == 0.3
    assert config.policy.max_epsilon_per_run == 2.5
    assert config.policy.min_cohort_size == 50
    assert config.policy.allowed_features == ["age", "sex"]
    assert config.policy.allowed_model_kinds == ["linear"]
    assert config.state_dir == Path("/var/lib/concordia")


def test_empty_env_value_unsets_an_optional_field(tmp_path: Path) -> None:
    path = kit(tmp_path, MINIMAL + 'id_column = "mrn"\n')
    assert load_site_config(path, env={}).data.id_column == "mrn"
    assert load_site_config(path, env={"CONCORDIA_DATA_ID_COLUMN": ""}).data.id_column is None


def test_missing_salt_is_derived_once_and_kept_secret_in_state_dir(tmp_path: Path) -> None:
    path = kit(tmp_path, '[data]\ncsv = "cohort.csv"\n')
    first = load_site_config(path, env={})
    second = load_site_config(path, env={})
    salt_file = first.state_dir / SALT_FILE
    assert len(first.data.split_salt) == 64
    assert second.data.split_salt == first.data.split_salt
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    other = tmp_path / "other"
    other.mkdir()
    assert load_site_config(kit(other, '[data]\ncsv = "cohort.csv"\n'), env={}).data.split_salt != (
        first.data.split_salt
    )


def test_a_broken_config_creates_no_state(tmp_path: Path) -> None:
    path = kit(tmp_path, '[data]\ncsv = "cohort.csv"\n', "[policy]\nmax_delta = 0.5\n")
    with pytest.raises(ConfigError):
        load_site_config(path, env={})
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    ("data", "policy", "env", "expected"),
    [
        (
            MINIMAL,
            "[policy]\nmax_epsilon_per_run = 0\n",
            {},
            "policy.max_epsilon_per_run: must be > 0",
        ),
        (MINIMAL, "[policy]\nmax_delta = 0.05\n", {}, "policy.max_delta: must be < 0.01"),
        (MINIMAL, "[policy]\nmin_cohort_size = 0\n", {}, "policy.min_cohort_size: must be >= 1"),
        (
            MINIMAL,
            "[policy]\nmax_epsilon_per_run = 5\nlifetime_epsilon = 4\n",
            {},
            "lifetime_epsilon (4) must be >= max_epsilon_per_run (5)",
        ),
        (
            MINIMAL,
            '[policy]\nallowed_model_kinds = ["logistic_hazard"]\n',
            {},
            "policy.allowed_model_kinds.0: must be one of 'linear' or 'mlp'",
        ),
        (MINIMAL, "[policy]\nmax_epsilon = 3\n", {}, "policy.max_epsilon: unknown key"),
        (MINIMAL, "[extras]\nx = 1\n", {}, "[extras]: unknown section"),
        (
            MINIMAL,
            "",
            {"CONCORDIA_POLICY_MIN_COHORT_SIZE": "many"},
            "policy.min_cohort_size (from CONCORDIA_POLICY_MIN_COHORT_SIZE): must be an integer",
        ),
        (
            MINIMAL,
            "",
            {"CONCORDIA_SITE_ID": "Hosp A"},
            "site.id (from CONCORDIA_SITE_ID): must match",
        ),
        ('[data]\ncsv = "cohort.csv"\nsplit_salt = "short"\n', "", {}, "data.split_salt: must"),
        ('[data]\nsplit_salt = "' + SALT + '"\n', "", {}, "data.csv: is required"),
        (MINIMAL.replace("cohort.csv", "nope.csv"), "", {}, "data.csv: no such file"),
        (
            MINIMAL + "time_column = 't'\n[data.columns]\ntime = 'days'\n",
            "",
            {},
            "columns.time ('days') contradicts time_column ('t')",
        ),
        (MINIMAL, "", {"CONCORDIA_DATA_COLUMNS": "age"}, "expected name=column pairs"),
        (MINIMAL, "", {}, None),
    ],
)
def test_bad_values_give_one_line_naming_the_field(
    tmp_path: Path, data: str, policy: str, env: dict[str, str], expected: str | None
) -> None:
    path = kit(tmp_path, data, policy)
    if expected is None:
        load_site_config(path, env=env)  # the control case: the same kit without the fault
        return
    with pytest.raises(ConfigError) as info:
        load_site_config(path, env=env)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message
    assert str(path) in message


def test_missing_tls_file_is_named(tmp_path: Path) -> None:
    path = kit(tmp_path, MINIMAL)
    (tmp_path / "client.key").unlink()
    with pytest.raises(ConfigError, match=r"tls\.key: no such file"):
        load_site_config(path, env={})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_site_config(tmp_path / "absent.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[site\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site_config(bad, env={})


def test_the_salt_value_is_never_echoed_in_errors(tmp_path: Path) -> None:
    secret = "topsecret-but-short"[:12]
    path = kit(tmp_path, f'[data]\ncsv = "cohort.csv"\nsplit_salt = "{secret}"\n')
    with pytest.raises(ConfigError) as info:
        load_site_config(path, env={})
    assert secret not in str(info.value)
