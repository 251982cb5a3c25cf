"""Plan validation messages name the key, the feature and the likely fix in plain words."""

from __future__ import annotations

import pytest

from federation.plan import PlanError, parse_plan

pytestmark = pytest.mark.unit

PLAN = """
name = "trial"
quorum = 2
[training]
rounds = 3
[[features]]
kind = "numeric"
name = "age"
min = 40
max = 110
[[features]]
kind = "categorical"
name = "sex"
levels = ["F", "M"]
[[features]]
kind = "numeric"
name = "kappa"
min = 0.01
max = 50
[time_grid]
cuts = [1000.0, 2000.0]
"""


def message(patch: str, replacement: str) -> str:
    assert patch in PLAN
    with pytest.raises(PlanError) as caught:
        parse_plan(PLAN.replace(patch, replacement, 1))
    return str(caught.value)


def test_the_plan_itself_is_valid() -> None:
    assert parse_plan(PLAN).features[2].name == "kappa"


def test_an_unknown_key_names_its_table_and_the_closest_key() -> None:
    text = message("rounds = 3", "rounds = 3\nepochs = 2")
    assert "unknown key 'epochs' in [training] (did you mean 'local_epochs'?)" in text
    assert "Extra inputs" not in text


def test_an_unknown_top_level_key_is_suggested_too() -> None:
    assert "unknown key 'quorom' at the top level (did you mean 'quorum'?)" in message(
        "quorum = 2", "quorum = 2\nquorom = 2"
    )


def test_an_unknown_key_with_nothing_close_gets_no_guess() -> None:
    text = message("rounds = 3", "rounds = 3\nzzz = 1")
    assert "unknown key 'zzz' in [training]" in text
    assert "did you mean" not in text


def test_features_are_named_by_their_name_not_only_their_index() -> None:
    text = message("max = 50", "")
    assert text == "invalid plan: features[2] (kappa).max: missing required key"


def test_an_unknown_feature_key_names_the_feature() -> None:
    text = message("max = 50", "max = 50\nmaxx = 3")
    assert "features[2] (kappa).maxx: unknown key 'maxx' in features[2] (kappa)" in text
    assert "(did you mean 'max'?)" in text


def test_a_misspelt_kind_suggests_the_right_one() -> None:
    text = message('kind = "numeric"\nname = "kappa"', 'kind = "numerc"\nname = "kappa"')
    assert "features[2] (kappa): kind 'numerc' is not one of numeric, categorical" in text
    assert "(did you mean 'numeric'?)" in text
    assert "Input tag" not in text


def test_a_missing_kind_lists_the_kinds() -> None:
    text = message('kind = "numeric"\nname = "kappa"', 'name = "kappa"')
    assert "features[2] (kappa): missing required key 'kind' (one of numeric, categorical)" in text


def test_a_bad_literal_lists_the_choices_and_the_closest() -> None:
    text = message("rounds = 3", 'rounds = 3\nmode = "locl"')
    assert "training.mode: 'locl' is not one of local, distributed (did you mean 'local'?)" in text


def test_a_missing_table_is_called_a_table() -> None:
    text = message("[time_grid]\ncuts = [1000.0, 2000.0]", "")
    assert "time_grid: missing required key (the [time_grid] table)" in text


def test_numbers_out_of_range_keep_pydantic_wording_but_name_the_key() -> None:
    text = message("rounds = 3", "rounds = 0")
    assert "training.rounds: rounds should be greater than or equal to 1, got 0" in text


def test_validator_messages_lose_the_value_error_prefix() -> None:
    text = message('levels = ["F", "M"]', 'levels = ["F"]')
    assert "features[1] (sex).levels: a categorical feature needs at least two levels" in text
    assert "Value error" not in text


def test_every_error_is_reported_at_once() -> None:
    text = message("rounds = 3", "rounds = 0\nepochs = 1")
    assert "training.rounds:" in text and "training.epochs:" in text


def test_errors_split_on_the_separator_each_start_with_their_location() -> None:
    """The admin service turns each "; "-separated error into a FieldError named by its location."""
    text = message("rounds = 3", 'rounds = 0\nepochs = 1\nmode = "locl"')
    parts = text.removeprefix("invalid plan: ").split("; ")
    assert [part.split(":", 1)[0] for part in parts] == [
        "training.mode",
        "training.rounds",
        "training.epochs",
    ]


def test_a_plan_below_its_minimum_workable_epsilon_is_refused_with_the_figures() -> None:
    from federation.gaussian import gaussian_epsilon
    from federation.plan import MIN_TRAINING_HEADROOM

    floor = gaussian_epsilon(3.0, 1e-5) * MIN_TRAINING_HEADROOM
    base = 'name = "p"\n[time_grid]\ncuts = [100.0]\n[[features]]\nkind = "numeric"\n'
    base += 'name = "age"\nmin = 0\nmax = 100\n[privacy]\nstats_noise_multiplier = 3.0\n'
    with pytest.raises(PlanError, match=r"below the minimum workable 1\.4") as refused:
        parse_plan(base + f"epsilon = {floor * 0.99}\n")
    assert "costs ε = 1.27" in str(refused.value)
    assert parse_plan(base + f"epsilon = {floor * 1.01}\n").privacy.epsilon > floor
    # unset, the statistics take a share of ε: any ε is workable
    assert parse_plan(base.replace("stats_noise_multiplier = 3.0\n", "") + "epsilon = 0.5\n")


def test_every_problem_is_listed_once_even_when_its_message_has_a_semicolon() -> None:
    base = 'name = "p"\n[time_grid]\ncuts = [100.0]\n[[features]]\nkind = "numeric"\n'
    base += 'name = "age"\nmin = 0\nmax = 100\n[privacy]\nstats_noise_multiplier = 3.0\n'
    with pytest.raises(PlanError) as one:
        parse_plan(base + "epsilon = 1.0\n")
    assert len(one.value.problems) == 1 and ";" in one.value.problems[0]  # one, whole
    with pytest.raises(PlanError) as two:
        parse_plan(base + "epsilon = -1.0\ndelta = 2.0\n")
    assert [p.split(":", 1)[0] for p in two.value.problems] == ["privacy.epsilon", "privacy.delta"]
    assert str(two.value) == "invalid plan: " + "; ".join(two.value.problems)
