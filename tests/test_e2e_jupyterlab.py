"""The workbench in JupyterLab, offline: JupyterLab from the project's environment in
headless chromium, a notebook cell runs `Workbench(...)`; the canvas and the views render
with no request leaving the machine (Panel's and Bokeh's code inline, no CDN), the app
fits the output area, and a QEM run started from the app streams ELBO points."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from test_e2e_workbench import CHROMIUM, _free_port, _wait_text, launch, start_process, stop_server
from test_workbench_views import conjugate_model

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.exists() or not shutil.which("jupyter-lab", path=str(jupyter.parent)):
        pytest.skip("jupyterlab is not installed (pip install -e '.[test]')")
    here = tmp_path_factory.mktemp("lab")
    conjugate_model().save(here / "hg.json")
    cell = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from workbench import Workbench\n"
            f"Workbench('hg.json', K=4, iters=12, workspace={str(here / 'ws')!r})")
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": cell}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (here / "wb.ipynb").write_text(json.dumps(nb))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"JUPYTER_CONFIG_DIR": str(here / "config"), "JUPYTER_RUNTIME_DIR": str(here / "runtime"),
           "XDG_DATA_HOME": str(here / "data")}
    cmd = [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
           "--IdentityProvider.token=", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
           f"--ServerApp.root_dir={here}", "--LabApp.news_url=", "--LabApp.check_for_updates_class="
           "jupyterlab.NeverCheckForUpdate", *(["--allow-root"] if os.geteuid() == 0 else [])]
    proc, url, log = start_process(cmd, "/tmp/wb_e2e_lab.log", url,
                                   lambda: urllib.request.urlopen(f"{url}/api/status", timeout=2).close(),
                                   "jupyter lab", timeout=120, cwd=here, env=env)
    yield url
    stop_server(proc, log)


def test_workbench_renders_offline_and_streams_a_run(lab):
    from playwright.sync_api import sync_playwright
    outside, errors = [], []
    with sync_playwright() as p:
        browser = launch(p)
        pg = browser.new_page(viewport={"width": 1400, "height": 900})
        pg.set_default_timeout(120_000)
        pg.on("request", lambda r: outside.append(r.url) if urlparse(r.url).hostname not in
              ("127.0.0.1", "localhost", None, "") and not r.url.startswith(("data:", "blob:")) else None)
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.goto(f"{lab}/lab/tree/wb.ipynb")
        pg.locator(".jp-Notebook .jp-Cell .cm-content").first.wait_for()
        deadline = time.time() + 90          # the kernel is idle before the cell runs
        while time.time() < deadline and "Idle" not in pg.locator("#jp-main-statusbar").inner_text():
            time.sleep(0.5)
        pg.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
        pg.keyboard.press("Shift+Enter")
        out = pg.locator(".jp-Notebook .jp-OutputArea").first
        out.locator(".react-flow__node-latent").first.wait_for(timeout=180_000)    # the canvas
        out.locator(".bk-tab", has_text="Plate diagram").first.wait_for()
        out.locator("svg text", has_text="mu").first.wait_for()                   # the plate diagram
        for title in ("Einsum path", "ESS", "ELBO", "Posterior", "Degeneracy"):
            assert out.locator(".bk-tab", has_text=title).count() >= 1
        area = out.locator(".jp-OutputArea-output").first.bounding_box()
        app = out.locator(".bk-panel-models-layout-Column").first.bounding_box()
        assert app["x"] >= area["x"] - 1 and app["x"] + app["width"] <= area["x"] + area["width"] + 1   # fits
        out.locator(".bk-tab", has_text="ELBO").first.click()
        out.get_by_role("button", name="▶ Run").click()
        _wait_text(out, ".elbo-note", "12 points", timeout=180)
        _wait_text(out, ".run-status", "Done", timeout=180)            # the posterior views, drawn
        out.locator(".bk-tab", has_text="Posterior").first.click()
        time.sleep(2)
        pg.screenshot(path="/tmp/wb_e2e_lab.png", full_page=True)
        browser.close()
    assert not outside, outside[:5]                         # offline: nothing fetched from elsewhere
    assert not [e for e in errors if "JSONEditor" in e], errors[:5]
