"""End to end: `kn serve` in a subprocess, driven by Playwright in Debian's chromium.

Load an example, add a node and draw an edge on the canvas, run QEM for a few
iterations (the ELBO gets points, the ESS view changes), save the model into the
workspace and reopen it; a refused edge does not stay drawn; the page logs no errors.
Screenshots go to /tmp/wb_e2e_*.png. The security cases are in test_e2e_security.py.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_cmd(port: int, workspace) -> list[str]:
    """`kn serve` as installed (the workbench registers it), on a port, in a workspace."""
    kn = Path(sys.executable).parent / "kn"
    cmd = [str(kn)] if kn.exists() else [sys.executable, "-m", "engine.cli"]
    return cmd + ["serve", "--port", str(port), "--workspace", str(workspace)]


def start_process(cmd, log_path: str, url: str, ready, what: str, timeout: float = 90, cwd=ROOT, env=None):
    """Start `cmd` with its output in `log_path` and wait until `ready()` stops raising
    OSError: (process, url, log file). Fails the test with the log's tail if it exits."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {Path(log_path).read_text()[-2000:]}")
        try:
            ready()
            return proc, url, log
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail(f"{what} did not start within {timeout:g} s")


def start_server(workspace, log_path: str):
    """A served app on a free port: (process, url, log file)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    port = _free_port()
    return start_process(_server_cmd(port, workspace), log_path, f"http://127.0.0.1:{port}",
                         lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close(), "the server")


def stop_server(proc, log):
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("workspace")


@pytest.fixture(scope="module")
def server(workspace):
    proc, url, log = start_server(workspace, "/tmp/wb_e2e_server.log")
    yield url
    stop_server(proc, log)


def launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                            "--disable-background-networking"])


def open_page(browser, url, errors: list):
    """A page at 1400x900 on the app, its console errors and page errors collected."""
    pg = browser.new_page(viewport={"width": 1400, "height": 900})
    pg.set_default_timeout(60_000)
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    return pg


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright
    errors: list = []
    with sync_playwright() as p:
        browser = launch(p)
        pg = open_page(browser, server, errors)
        pg.wb_errors = errors
        yield pg
        browser.close()


def _text(page, selector):
    return page.locator(f"{selector} div").first.inner_text()


def _wait_text(page, selector, needle, timeout=60):
    end = time.time() + timeout
    last = ""
    while time.time() < end:
        try:
            last = _text(page, selector)
        except Exception:
            last = ""
        if needle in last:
            return last
        time.sleep(0.3)
    page.screenshot(path="/tmp/wb_e2e_fail.png", full_page=True)
    raise AssertionError(f"{selector!r} never showed {needle!r}; last: {last!r}")


def _wait_value(page, selector, needle, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if page.locator(selector).first.input_value() == needle:
            return
        time.sleep(0.3)
    raise AssertionError(f"{selector!r} never held {needle!r}")


def _drag_edge(pg, parent, child):
    """Drag from parent's source handle to child's target handle, once the canvas is still."""
    last = None
    for _ in range(40):
        box = pg.locator(f'.react-flow__node[data-id="{parent}"]').bounding_box()
        if box == last:
            break
        last = box
        time.sleep(0.25)
    src = pg.locator(f'.react-flow__node[data-id="{parent}"] .react-flow__handle.source').bounding_box()
    dst = pg.locator(f'.react-flow__node[data-id="{child}"] .react-flow__handle.target').bounding_box()
    pg.mouse.move(src["x"] + src["width"] / 2, src["y"] + src["height"] / 2)
    pg.mouse.down()
    pg.mouse.move((src["x"] + dst["x"]) / 2, (src["y"] + dst["y"]) / 2, steps=8)
    pg.mouse.move(dst["x"] + dst["width"] / 2, dst["y"] + dst["height"] / 2, steps=8)
    pg.mouse.up()


def _tab(page, title):
    page.locator(".bk-tab", has_text=title).first.click()


def _fill(page, css, value):
    box = page.locator(f"{css} input").first
    box.fill(str(value))
    box.press("Enter")


def test_build_run_save_reload(page, workspace):
    pg = page
    pg.locator(".react-flow__node-latent").first.wait_for()
    pg.screenshot(path="/tmp/wb_e2e_0_start.png", full_page=True)

    # load an example
    example = pg.locator(".wb-example select").first
    example.select_option("hierarchical_gaussian")
    pg.get_by_role("button", name="Load example").click()
    _wait_value(pg, ".wb-model-name input", "hierarchical_gaussian")
    pg.locator('.react-flow__node[data-id="mu"]').wait_for()
    n_latent = len(pg.locator(".react-flow__node-latent").all())

    # add a latent node with the form, then draw an edge z1 -> mu on the canvas
    pg.get_by_role("button", name="+ Latent").click()
    pg.get_by_role("button", name="Apply").click()
    node = pg.locator('.react-flow__node[data-id="z1"]')
    node.wait_for()
    assert len(pg.locator(".react-flow__node-latent").all()) == n_latent + 1
    _drag_edge(pg, "z1", "mu")
    _wait_text(pg, ".wb-alert-info", "Edge z1 → mu")
    pg.locator('.react-flow__edge[data-id="z1->mu"]').wait_for(state="attached")

    # refused gestures leave the canvas as the model is: a cycle, and deleting a used node
    _drag_edge(pg, "z", "mu")
    _wait_text(pg, ".wb-alert-danger", "cycle")
    time.sleep(1)
    assert pg.locator('.react-flow__edge[data-id="z->mu"]').count() == 0
    pg.locator('.react-flow__node[data-id="mu"]').click()
    pg.keyboard.press("Delete")
    _wait_text(pg, ".wb-alert-danger", "used by")
    time.sleep(1)
    pg.locator('.react-flow__node[data-id="mu"]').wait_for()
    pg.locator('.react-flow__edge[data-id="mu->z"]').wait_for(state="attached")
    pg.screenshot(path="/tmp/wb_e2e_1_edge.png", full_page=True)

    # run QEM for a few iterations
    _tab(pg, "ESS")
    ess_before = _text(pg, ".ess-table")
    _fill(pg, ".wb-K", 5)
    _fill(pg, ".wb-iters", 15)
    pg.get_by_role("button", name="▶ Run").click()
    _wait_text(pg, ".run-status", "Done", timeout=120)
    ess_after = _wait_text(pg, ".ess-table", "z1")
    assert ess_after != ess_before and "mu" in ess_after
    pg.screenshot(path="/tmp/wb_e2e_2_ess.png", full_page=True)
    _tab(pg, "ELBO")
    _wait_text(pg, ".elbo-note", "15 points")
    pg.screenshot(path="/tmp/wb_e2e_3_elbo.png", full_page=True)
    _tab(pg, "Posterior")
    pg.screenshot(path="/tmp/wb_e2e_4_posterior.png", full_page=True)

    # save into the workspace, start afresh, reopen from the list
    _fill(pg, ".wb-save-name", "built")
    pg.get_by_role("button", name="Save", exact=True).click()
    _wait_text(pg, ".wb-alert-success", "Saved")
    doc = json.loads((workspace / "built.json").read_text())
    nodes = {n["name"]: n for n in doc["nodes"]}
    assert nodes["z1"]["kind"] == "latent" and "z1" in str(nodes["mu"]["args"])
    pg.get_by_role("button", name="New model").click()
    _wait_text(pg, ".wb-title", "0 latent")
    pg.locator(".wb-files select").first.select_option("built.json")
    pg.get_by_role("button", name="Open", exact=True).click()
    _wait_text(pg, ".wb-alert-success", "Opened")
    time.sleep(3)
    pg.screenshot(path="/tmp/wb_e2e_5_reloaded.png", full_page=True)
    pg.locator('.react-flow__node[data-id="z1"]').wait_for()
    pg.locator('.react-flow__edge[data-id="z1->mu"]').wait_for(state="attached")
    assert not pg.wb_errors, pg.wb_errors[:5]       # no console errors all along (the jsoneditor ones)


def test_a_refresh_offers_the_unsaved_model_back(page):
    pg = page
    pg.get_by_role("button", name="+ Latent").click()
    name = pg.locator(".wb-node-name input").first.input_value()
    pg.get_by_role("button", name="Apply").click()
    pg.locator(f'.react-flow__node[data-id="{name}"]').wait_for()
    time.sleep(1)
    pg.reload()                                                  # the tab is refreshed: a new session
    _wait_text(pg, ".wb-restore-text", "Unsaved work")
    assert pg.locator(f'.react-flow__node[data-id="{name}"]').count() == 0
    pg.get_by_role("button", name="Restore it").click()
    pg.locator(f'.react-flow__node[data-id="{name}"]').wait_for()
    _wait_text(pg, ".wb-alert-success", "Restored")
    assert not pg.wb_errors, pg.wb_errors[:5]
