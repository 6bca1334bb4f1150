"""Open report.html in a real headless browser: it renders, offline, with its charts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeshift.plan.pipeline import plan_scenario, plan_summary
from edgeshift.plan.report import render_report

EXAMPLE = Path(__file__).parents[2] / "examples" / "factory-hospital.yaml"
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install -y chromium)"),
]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def report_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = plan_scenario(EXAMPLE)
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_report(result, plan_summary(result)))
    return path


def test_dom_has_the_charts_and_tables(report_path: Path, tmp_path: Path) -> None:
    proc = _chromium(tmp_path, "--dump-dom", report_path.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<svg") == 3
    for ident in ("chart-cost", "chart-baselines", "chart-latency", "plan-table", "baselines"):
        assert f'id="{ident}"' in dom
    assert "product-search" in dom and "all on cloud GPU" in dom


def test_screenshot_is_not_blank(report_path: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    shot = tmp_path / "shot.png"
    proc = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report_path.as_uri()
    )
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    pixels = imread(str(shot))[..., :3]
    # A rendered page has text and coloured bars: many distinct colours, not one flat fill.
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 50
    assert pixels.std() > 0.05
