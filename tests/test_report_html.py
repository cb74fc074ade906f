"""The self-contained HTML report opens in headless Chromium and shows the tables and the plots.

Needs Debian's `chromium` (apt-get install -y chromium); skipped with that reason when absent.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import pytest
from PIL import Image
from report_fakes import synthetic_results

from clipprobe.report.build import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
WINDOW = (1400, 2400)


def _chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report([("abc12345", synthetic_results())], out), out


def test_html_is_self_contained(report):
    rep, out = report
    html = rep.html.read_text()
    assert "src=\"data:image/png;base64," in html
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # no external file or URL
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == 4  # 2 probes x (what-where-when, lines)
    with Image.open(io.BytesIO(base64.b64decode(images[0]))) as img:
        assert img.format == "PNG" and img.size == (1120, 380)


def test_dom_in_chromium_shows_tables_and_plots(report, tmp_path):
    rep, _ = report
    dom = _chromium(tmp_path, "--dump-dom", rep.html.as_uri()).stdout
    assert dom.count("<table data-concept=") == 3
    for concept in ("red", "blue", "striped"):
        assert f'<table data-concept="{concept}">' in dom
    assert dom.count('<img alt="what-where-when') == 2
    assert dom.count('<img alt="accuracy over epochs') == 2
    assert "uniform_high_module" in dom
    assert "test set: 90 images (30 positive)" in dom


def test_screenshot_shows_the_plots(report, tmp_path):
    rep, _ = report
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", rep.html.as_uri())
    with Image.open(shot) as img:
        assert img.size == WINDOW
        hsv = img.convert("HSV")
    # Tables and text are grey on white; only the rendered plots are strongly coloured.
    coloured = sum(1 for h, s, v in hsv.getdata() if s > 100 and v > 80)
    assert coloured > 50_000, coloured
