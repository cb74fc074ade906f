"""The MLflow UI opens on the work: `mlflow ui` on loopback over a store with steps, three registered
checkpoints and three sweeps of 216 fits, pages rendered in headless Chromium (DOM text).

Needs Debian's `chromium` (`make chromium`); skipped with that reason when absent.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clipprobe.tracking import fits, registry, runs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (make chromium)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(tracking_store, tmp_path):
    from ui_store import build_store

    store = build_store(tmp_path)
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen([str(mlflow_bin), "ui", "--backend-store-uri", tracking_store, "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):  # the server is up when /health answers (not a timing assertion)
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow ui did not answer on {base}/health")
        yield base, store, tmp_path
    finally:
        server.terminate()
        server.wait(timeout=30)


def page_text(tmp_path, url: str) -> str:
    """The rendered page's visible text (scripts and styles dropped), whitespace collapsed."""
    profile = tmp_path / f"chromium-{abs(hash(url))}"
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", "--window-size=1600,2000", "--virtual-time-budget=15000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=180, check=True)
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", done.stdout, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def test_ui_shows_steps_sweeps_fits_and_registry_links(ui):
    base, store, tmp_path = ui
    sweeps = store["sweeps"]
    client = MlflowClient()
    # every step and sweep of the experiment on one page, no "Load more" (the fits would need 7 pages)
    landing = page_text(tmp_path, base + "/" + runs.runs_table_url("0", runs.STEPS_AND_SWEEPS_FILTER))
    assert "Runs" in landing and "Model training" in landing
    for _, name in sweeps:
        assert name in landing
    for step in ("world", "concepts", "checkpoints mobilenet_v2", "compare"):
        assert f" {step} " in landing
    assert "7 matching runs" in landing and "Load more" not in landing
    # the experiment's description names the filters (shown above the table)
    assert "Steps and sweeps only" in landing and "tags.clipprobe.sweep_run_id" in landing
    # without the filter the latest sweep's fits fill the page: the reason for the filter
    plain = page_text(tmp_path, base + "/" + runs.runs_table_url("0"))
    assert "Load more" in plain and sweeps[0][1] not in plain

    # one click from a sweep's description to its fits
    sweep_id, sweep_name = sweeps[0]
    note = client.get_run(sweep_id).data.tags["mlflow.note.content"]
    link = re.search(r"\[open this sweep's checkpoint and fit runs\]\((#/[^)]+)\)", note).group(1)
    assert link == runs.runs_table_url("0", fits.fits_filter(sweep_id))
    fits_page = page_text(tmp_path, f"{base}/{link}")
    # only this sweep's runs: they fold under the sweep (MLflow fetches the parents of loaded children)
    assert sweep_name in fits_page and "matching runs" in fits_page
    for _, other in sweeps[1:]:
        assert other not in fits_page
    assert "checkpoints mobilenet_v2" not in fits_page  # no step run
    # the sweep's own page: description with findings and links
    run_page = page_text(tmp_path, f"{base}/#/experiments/0/runs/{sweep_id}?workflowType=machine_learning")
    assert sweep_name in run_page and "Findings" in run_page and "mobilenet_v2 v1" in run_page

    # the registry: the version lists the sweeps that probed it; its logged model counts as registered
    version_page = page_text(tmp_path, f"{base}/#/models/mobilenet_v2/versions/1")
    assert "Probed by" in version_page
    for _, name in sweeps:
        assert name in version_page
    mv = client.get_model_version("mobilenet_v2", "1")
    assert mv.tags[registry.PROBED_BY_TAG] == ",".join(s for s, _ in sweeps)
    model_id = mv.source.removeprefix("models:/")
    model_page = page_text(tmp_path, f"{base}/#/experiments/0/models/{model_id}?workflowType=machine_learning")
    assert "Model versions mobilenet_v2 v1" in model_page and "Not registered" not in model_page
