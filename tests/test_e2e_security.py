"""Hostile input against a served app (`kn serve --workspace DIR`, Playwright in Debian's
chromium): a model whose name, description or distribution is a script runs nothing and
shows as text; Save takes plain file names only, writes only into the workspace, asks
before replacing, never touches the gallery; links, FIFOs and devices in the workspace are
not offered, an oversized file is refused, an upload naming a data_file is refused; one
session's slow work leaves another session working."""
from __future__ import annotations

import json
import os
import time

import pytest

from engine import datasets

from test_e2e_workbench import _fill, _wait_text, launch, open_page, start_server, stop_server
from test_workbench_views import nested_model

pytestmark = pytest.mark.e2e
PAYLOAD = '<img src=x onerror="window.__pwned=(window.__pwned||0)+1">'


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    ws = tmp_path_factory.mktemp("hostile-ws")
    doc = nested_model().to_dict()
    (ws / "named.json").write_text(json.dumps({**doc, "name": PAYLOAD, "description": PAYLOAD}))
    (ws / "baddist.json").write_text(json.dumps({**doc, "nodes": [{**doc["nodes"][0], "dist": PAYLOAD}]}))
    (ws / "big.json").write_bytes(b" " * (8 << 20) + b"{}")
    os.symlink("/dev/zero", ws / "zero.json")
    os.symlink("/etc/passwd", ws / "passwd.json")
    os.mkfifo(ws / "fifo.json")
    return ws


@pytest.fixture(scope="module")
def served(workspace):
    proc, url, log = start_server(workspace, "/tmp/wb_e2e_security_server.log")
    yield url
    stop_server(proc, log)


@pytest.fixture(scope="module")
def browser(served):
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def _page(browser, url):
    errors: list = []
    pg = open_page(browser, url, errors)
    pg.locator(".react-flow__node-latent").first.wait_for()
    return pg


def _pwned(pg) -> int:
    return pg.evaluate("() => window.__pwned || 0")


def _open(pg, name):
    pg.locator(".wb-files select").first.select_option(name)
    pg.get_by_role("button", name="Open", exact=True).click()


def test_scripts_in_a_model_run_nothing(browser, served):
    pg = _page(browser, served)
    _open(pg, "named.json")
    _wait_text(pg, ".wb-alert-success", "Opened named.json")
    assert pg.locator(".wb-model-name input").first.input_value() == PAYLOAD    # shown as text
    _open(pg, "baddist.json")
    alert = _wait_text(pg, ".wb-alert-danger", "Could not open baddist.json")
    assert "<img src=x" in alert                                              # the payload, as text
    pg.locator(".wb-upload input[type=file]").first.set_input_files(files=[{
        "name": PAYLOAD + ".json", "mimeType": "application/json",
        "buffer": json.dumps({**nested_model().to_dict(), "name": PAYLOAD, "data_file": "/etc/x.npz"}).encode()}])
    alert = _wait_text(pg, ".wb-alert-danger", "data_file")                  # and an upload's data_file refused
    assert "<img src=x" in alert
    time.sleep(1)
    pg.screenshot(path="/tmp/wb_e2e_security_script.png", full_page=True)
    assert _pwned(pg) == 0 and pg.locator("img[src=x]").count() == 0


def test_save_writes_only_plain_names_into_the_workspace(browser, served, workspace):
    gallery = {p: p.read_bytes() for p in datasets.gallery().values()}
    pg = _page(browser, served)
    for bad in ("../../escaped", "/tmp/kn_e2e_escaped", "sub/dir"):
        _fill(pg, ".wb-save-name", bad)
        pg.get_by_role("button", name="Save", exact=True).click()
        _wait_text(pg, ".wb-alert-danger", "not a plain file name")
    assert not (workspace.parent.parent / "escaped.json").exists() and not os.path.exists("/tmp/kn_e2e_escaped.json")
    _fill(pg, ".wb-save-name", "radon")                                       # the example's name: a copy here
    pg.get_by_role("button", name="Save", exact=True).click()
    _wait_text(pg, ".wb-alert-success", "Saved")
    pg.get_by_role("button", name="New model").click()
    _wait_text(pg, ".wb-title", "0 latent")
    _fill(pg, ".wb-save-name", "radon")
    pg.get_by_role("button", name="Save", exact=True).click()
    _wait_text(pg, ".wb-confirm-text", "exists in the workspace")              # asks before replacing
    assert json.loads((workspace / "radon.json").read_text())["name"] == "radon"
    pg.get_by_role("button", name="Cancel").click()
    assert json.loads((workspace / "radon.json").read_text())["name"] == "radon"
    assert {p: p.read_bytes() for p in datasets.gallery().values()} == gallery


def test_links_fifos_and_big_files_do_not_stop_the_server(browser, served):
    pg = _page(browser, served)
    offered = pg.locator(".wb-files select option").all_inner_texts()
    assert "big.json" in offered and not {"zero.json", "passwd.json", "fifo.json"} & set(offered)
    _open(pg, "big.json")
    _wait_text(pg, ".wb-alert-danger", "limit")
    other = _page(browser, served)                                            # the server still serves
    other.locator(".wb-example select").first.select_option("seeds")
    other.get_by_role("button", name="Load example").click()
    _wait_text(other, ".wb-alert-success", "seeds")


def test_a_long_run_in_one_session_leaves_another_working(browser, served):
    a = _page(browser, served)
    _fill(a, ".wb-K", 3)
    _fill(a, ".wb-iters", 100000)
    a.get_by_role("button", name="▶ Run").click()
    _wait_text(a, ".run-status", "iteration")
    b = _page(browser, served)
    b.get_by_role("button", name="+ Latent").click()
    b.get_by_role("button", name="Apply").click()
    b.locator('.react-flow__node[data-id="z1"]').wait_for()
    _wait_text(a, ".run-status", "iteration")
    a.get_by_role("button", name="■ Stop").click()
    _wait_text(a, ".run-status", "Done", timeout=120)
