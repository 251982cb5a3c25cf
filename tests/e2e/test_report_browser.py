"""`fedctl report`'s page in a real browser: headless Chromium opens report.html from disk (no
server, no network), every embedded figure must decode and no script or resource error may
occur, and the screenshot must show a rendered page, not a blank one.

Errors are detected by the page's own check script (`fedctl/report.py CHECK_SCRIPT`): on `load`
it sets `<html data-render-check="ok …">` only if every <img> has naturalWidth > 0 and no `error`
event fired; `--dump-dom` prints the DOM after scripts ran, so the attribute is read from it. That
is sturdier than scraping Chromium's log, whose format and verbosity change between versions.

Chromium missing is a failure, not a skip: a skipped browser test passes silently forever.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedctl.report import write_report
from tests.unit.fedctl.test_report import (
    CONSORTIUM,
    crafted_audit,
    crafted_export,
    crafted_status,
)

pytestmark = pytest.mark.e2e

FIGURES = 4  # training curve, ε per site, calibration, hazard-ratio forest plot


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium is needed for this test: install it (apt-get install chromium)")


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    chromium = _chromium()
    base = [
        chromium,
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={home / 'profile'}",
        "--virtual-time-budget=10000",  # let `load` fire and the check script run
    ]
    return subprocess.run(
        base + args,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        check=False,
    )


def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    path = write_report(
        crafted_export(),
        crafted_status(),
        tmp_path / "report",
        audit=crafted_audit(),
        consortium=CONSORTIUM,
    )
    url = path.resolve().as_uri()

    dom = _run(["--dump-dom", url], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    check = re.search(r'data-render-check="([^"]*)"', dom.stdout)
    assert check is not None, "the check script never ran: " + dom.stderr[-2000:]
    assert check.group(1) == f"ok figures={FIGURES} broken=0 errors=0", check.group(1)

    shot = tmp_path / "shot.png"
    result = _run([f"--screenshot={shot}", "--window-size=1200,4000", url], tmp_path)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] >= 3000 and pixels.shape[1] >= 1000, pixels.shape
    rgb = (np.asarray(pixels)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    distinct = np.unique(rgb, axis=0)
    assert len(distinct) > 200, f"a near-blank page: {len(distinct)} distinct colours"
    non_white = np.mean(np.any(rgb < 240, axis=1))
    assert non_white > 0.03, f"only {non_white:.1%} of the page is drawn"


def test_the_report_with_subgroups_and_importance_renders(tmp_path: Path) -> None:
    """The fairness part adds two figures (subgroup intervals, importance bars): both decode."""
    from tests.unit.fedctl.test_report_fairness import fairness_export

    path = write_report(
        fairness_export(),
        crafted_status(),
        tmp_path / "report",
        audit=crafted_audit(),
        consortium=CONSORTIUM,
    )
    dom = _run(["--dump-dom", path.resolve().as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    check = re.search(r'data-render-check="([^"]*)"', dom.stdout)
    assert check is not None, "the check script never ran: " + dom.stderr[-2000:]
    assert check.group(1) == f"ok figures={FIGURES + 2} broken=0 errors=0", check.group(1)
    assert 'id="subgroups"' in dom.stdout and 'id="importance"' in dom.stdout
