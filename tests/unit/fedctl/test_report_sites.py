"""The card and the report show each site's own published figures with intervals from its own σ,
say "not published (site policy)" for a site that did not publish, and flag a gap between sites
only when both are resolvable and it exceeds 1.96·SE."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedctl.model_card import build_model_card, to_markdown
from fedctl.report import write_report
from federation.releases import MetricsLayout
from federation.site_metrics import NOT_PUBLISHED, REFUSED, REFUSED_KEY, published_from_wire
from federation.site_metrics import record_metrics as site_keys
from federation.wire.v1 import admin_pb2
from tests.unit.fedctl.test_report import CONSORTIUM, SITES, crafted_export, crafted_status

pytestmark = pytest.mark.unit

LAYOUT = MetricsLayout()


def _figures(concordant: float, sigma: float) -> dict[str, float]:
    raw = np.zeros(LAYOUT.length)
    raw[:5] = [1000.0, 300.0, 50.0, concordant, 3000.0]
    return published_from_wire(list(LAYOUT.encode(raw)), sigma).figures()


def sites_export(published: dict[str, dict[str, float]]) -> admin_pb2.ExportRunResponse:
    """The crafted export whose final evaluation also carries these sites' published figures."""
    export = crafted_export()
    card = json.loads(export.model_card_json)
    final = [r for r in card["history"] if r["purpose"] == "metrics"][-1]
    final["metrics"].update(site_keys(published))
    export.model_card_json = json.dumps(card, sort_keys=True)
    return export


def _per_site(export: admin_pb2.ExportRunResponse) -> dict[str, Any]:
    card = build_model_card(json.loads(export.model_card_json), crafted_status(), export.round)
    per_site: dict[str, Any] = card["quantitative_analyses"]["per_site"]
    return per_site


def test_the_card_lists_every_site_and_flags_only_the_real_gap() -> None:
    a, b, c = SITES
    export = sites_export({a: _figures(2400.0, 0.5), b: _figures(1800.0, 0.5)})
    per_site = _per_site(export)
    entries = {e["site"]: e for e in per_site["sites"]}
    assert set(entries) == {a, b, c}
    assert entries[a]["published"] and entries[a]["c_windowed"] == pytest.approx(0.8)
    low, high = entries[a]["c_windowed_interval_95"]
    assert low < 0.8 < high and entries[a]["c_windowed_resolvable"]
    assert entries[a]["noise_multiplier"] == 0.5
    assert entries[c] == {"site": c, "published": False, "note": NOT_PUBLISHED}
    flagged = {g["metric"]: g for g in per_site["gaps"]}
    assert flagged["c_windowed"]["flagged"]  # 0.8 vs 0.6, SE ≈ 0.01
    assert (flagged["c_windowed"]["highest"], flagged["c_windowed"]["lowest"]) == (a, b)
    assert not flagged["ibs"]["flagged"]  # the same IBS
    assert "2 of 3 sites published" in per_site["summary"]
    assert f"c_windowed ({a} vs {b})" in per_site["summary"]
    markdown = to_markdown(
        build_model_card(json.loads(export.model_card_json), crafted_status(), export.round)
    )
    assert "**per_site**" in markdown and NOT_PUBLISHED in markdown


def test_a_noisy_site_is_not_resolvable_and_its_gap_is_not_flagged() -> None:
    a, b, _ = SITES
    per_site = _per_site(sites_export({a: _figures(2400.0, 60.0), b: _figures(1800.0, 0.5)}))
    entries = {e["site"]: e for e in per_site["sites"]}
    assert not entries[a]["c_windowed_resolvable"]  # σ = 60: ± ~1 on C
    gap = next(g for g in per_site["gaps"] if g["metric"] == "c_windowed")
    assert not gap["flagged"] and not gap["levels_resolvable"]


def test_without_published_sites_the_card_says_so_for_each() -> None:
    per_site = _per_site(crafted_export())
    assert [e["note"] for e in per_site["sites"]] == [NOT_PUBLISHED] * 3  # every participant
    assert per_site["gaps"] == []
    assert "no site published its own figures" in per_site["summary"]
    refused = _per_site(sites_export({SITES[0]: {REFUSED_KEY: 1.0}}))
    assert refused["sites"][0] == {"site": SITES[0], "published": False, "note": REFUSED}


def test_the_report_has_the_per_site_table(tmp_path: Path) -> None:
    a, b, _ = SITES
    export = sites_export({a: _figures(2400.0, 0.5), b: _figures(1800.0, 60.0)})
    path = write_report(export, crafted_status(), tmp_path / "report", consortium=CONSORTIUM)
    page = path.read_text()
    section = page[page.index('<section id="per-site">') :]
    section = section[: section.index("</section>")]
    assert "Per-site evaluation" in section
    assert "0.800 (" in section  # a's C with its interval
    assert "not resolvable at this ε" in section  # b's σ = 60
    assert NOT_PUBLISHED in section  # c
    assert "⚠ yes" not in section  # b is not resolvable: no flag
    plain = write_report(crafted_export(), crafted_status(), tmp_path / "plain")
    text = plain.read_text()
    assert 'id="per-site"' in text and "no site published its own figures" in text
