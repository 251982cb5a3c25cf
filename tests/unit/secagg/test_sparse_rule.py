"""The session rule for sparse masking: k and t_k follow from n, c and the plan, both sides
derive the same config, and a site names the graph fields a coordinator changed."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedctl.demo import plan_text
from federation.plan import RunPlan, parse_plan
from federation.releases import Purpose
from federation.sessions import SessionRuleError, session_config, sparse_parameters
from federation.tasks import SessionKey
from secagg.graph import choose_sparse
from site_agent.config import SitePolicy
from site_agent.sessions import SessionRefused, check_offered, expected_config

pytestmark = pytest.mark.unit


def _plan(secagg: str = "", colluding: int = 0) -> RunPlan:
    text = plan_text(1, local_epochs=1).replace("quorum = 2 ", f"quorum = {colluding + 2} ")
    lines = f"max_colluding_sites = {colluding}\n{secagg}"
    return parse_plan(text.replace("[secagg]\n", f"[secagg]\n{lines}\n"))


def _participants(n: int) -> dict[int, str]:
    return {i: f"hospital-{i}" for i in range(1, n + 1)}


def test_all_pairs_is_the_default_and_keeps_the_old_encoding() -> None:
    config = session_config(_plan(), "run", Purpose.STATS, 0, 0, _participants(30))
    assert not config.sparse and config.to_bytes()[4] == 1


@settings(max_examples=15, deadline=None)
@given(n=st.integers(5, 120), colluding=st.integers(0, 3), attempt=st.integers(0, 2))
def test_sparse_parameters_follow_the_documented_rule(n: int, colluding: int, attempt: int) -> None:
    plan = _plan('masking = "sparse"\ndropout_fraction = 0.05', colluding)
    config = session_config(plan, "run", Purpose.STATS, 0, attempt, _participants(n))
    chosen = choose_sparse(n, colluding, 0.05)
    assert (config.neighbours, config.neighbour_threshold) == (chosen or (0, 0))
    # a coordinator and a site derive it independently: byte-identical
    again = session_config(plan, "run", Purpose.STATS, 0, attempt, _participants(n))
    assert again.to_bytes() == config.to_bytes() and again.graph() == config.graph()


def test_an_explicit_degree_is_kept_or_falls_back_to_all_pairs() -> None:
    plan = _plan('masking = "sparse"\nneighbours = 4')
    assert sparse_parameters(plan, 10) == (4, 4)
    assert sparse_parameters(plan, 5) == (0, 0)  # k ≥ n − 1: all-pairs, never weaker


def test_an_explicit_degree_too_small_for_the_colluders_is_refused() -> None:
    plan = _plan('masking = "sparse"\nneighbours = 4', colluding=20)
    with pytest.raises(SessionRuleError, match=r"secagg\.neighbours"):
        sparse_parameters(plan, 40)


def test_a_site_names_the_graph_fields_the_coordinator_changed() -> None:
    plan = _plan('masking = "sparse"\nneighbours = 4')
    expected = session_config(plan, "run", Purpose.STATS, 0, 0, _participants(12))
    for field, value in (("neighbours", 6), ("neighbour_threshold", 3)):
        with pytest.raises(SessionRefused, match=f"{field} {value} "):
            check_offered(expected, replace(expected, **{field: value}))  # type: ignore[arg-type]


def _step() -> SessionKey:
    return SessionKey("run", Purpose.STATS, 0, 0)


def test_a_site_assuming_more_colluders_refuses_a_degree_too_small_for_them() -> None:
    plan = _plan('masking = "sparse"\nneighbours = 4')
    sites = _participants(40)
    assert expected_config(plan, SitePolicy(), "hospital-1", _step(), sites).neighbours == 4
    with pytest.raises(SessionRefused, match=r"not safe against policy\.max_colluding_sites 12"):
        expected_config(
            plan,
            SitePolicy(max_colluding_sites=12, min_session_sites=14),
            "hospital-1",
            _step(),
            sites,
        )


def test_a_distributed_site_refuses_partial_sums_below_its_trusted_noise_sites() -> None:
    text = plan_text(1, local_epochs=1).replace("quorum = 2 ", "quorum = 3 ")
    text = text.replace("[training]\n", '[training]\nmode = "distributed"\nsample_rate = 0.5\n')
    plan = parse_plan(text.replace("[secagg]\n", '[secagg]\nmasking = "sparse"\nneighbours = 4\n'))
    sites = _participants(12)  # k = 4, t_k = 4: a partial sum of 4 honest sites can be unmasked
    policy = SitePolicy(trusted_noise_sites=4)
    assert expected_config(plan, policy, "hospital-1", _step(), sites).neighbour_threshold == 4
    with pytest.raises(SessionRefused, match="partial sums of 4 honest sites"):
        expected_config(plan, SitePolicy(trusted_noise_sites=5), "hospital-1", _step(), sites)
