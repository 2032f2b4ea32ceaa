"""Runs and loads off the event loop (workbench.runs, no Panel): a run streams its steps
and knows its model; a server's bound on concurrent runs and its time limit hold; a load
in a served session returns at once and delivers its model later, so that it blocks no
one; a load over its time limit is given up."""
from __future__ import annotations

import threading
import time

from engine import ModelError
from workbench.runs import Jobs, RunController, default_settings

from test_workbench_views import conjugate_model

SETTINGS = {**default_settings(), "method": "QEM", "K": 4, "iters": 3}


def test_a_run_streams_and_belongs_to_its_model():
    rc = RunController()
    run = rc.start(conjugate_model(), SETTINGS, key=7, version=2, name="hg")
    assert rc.wait(120)
    assert (run.model_key, run.version, run.model_name) == (7, 2, "hg")
    assert run.iteration == [1, 2, 3] and len(run.elbo) == 3 and run.state == "done"
    assert run.result is not None and run.table is not None and set(run.last_ess) == {"mu", "z"}
    second = rc.start(conjugate_model(), SETTINGS, key=8, version=0, name="other")
    assert second.label == "QEM K=4 #1"           # numbered per model
    assert rc.wait(120)


def test_one_run_at_a_time_and_refusals_say_why():
    rc = RunController()
    rc.start(conjugate_model(), {**SETTINGS, "iters": 100000}, 1, 0, "hg")
    try:
        try:
            rc.start(conjugate_model(), SETTINGS, 1, 0, "hg")
        except ModelError as e:
            assert "already going" in str(e)
        else:
            raise AssertionError("a second run started")
    finally:
        rc.stop("stopped by the test")
        assert rc.wait(120)
    assert rc.runs[-1].state == "stopped" and rc.runs[-1].message == "stopped by the test"


def test_the_servers_run_slots_and_time_limit():
    slots = threading.BoundedSemaphore(1)
    assert slots.acquire()                       # another session holds the only slot
    rc = RunController(slots=slots)
    run = rc.start(conjugate_model(), SETTINGS, 1, 0, "hg")
    deadline = time.time() + 30
    waiting = False
    while time.time() < deadline and not waiting:
        waiting = any(ev[0] == "status" and "free run slot" in ev[2] for ev in rc.drain())
        time.sleep(0.1)
    assert waiting and run.iteration == []
    slots.release()
    assert rc.wait(120) and run.iteration == [1, 2, 3]
    assert slots.acquire(blocking=False)         # the run gave its slot back
    slots.release()
    timed = RunController(time_limit=0.0)
    run = timed.start(conjugate_model(), {**SETTINGS, "iters": 100000}, 1, 0, "hg")
    assert timed.wait(120) and run.iteration == [1] and "limit" in run.message and run.state == "stopped"


def test_a_load_in_a_served_session_does_not_block_and_is_bounded():
    gate = threading.Event()
    got = []
    jobs = Jobs(background=True)
    jobs.submit(lambda: gate.wait(30) and "the model", lambda r, e: got.append((r, e)), "opening a slow file")
    assert jobs.pending and got == []                      # returned at once: the loop is free
    second = []
    jobs.submit(lambda: "other", lambda r, e: second.append(e), "opening another")
    assert "Still busy with opening a slow file" in str(second[0])
    gate.set()
    deadline = time.time() + 30
    while jobs.pending and time.time() < deadline:
        jobs.drain()
        time.sleep(0.02)
    assert got == [("the model", None)]
    slow = Jobs(background=True, timeout=0.2)
    stuck = threading.Event()
    late = []
    slow.submit(lambda: stuck.wait(30), lambda r, e: late.append(e), "opening a stuck file")
    time.sleep(0.4)
    slow.drain()
    stuck.set()
    assert "took longer than 0.2 s" in str(late[0]) and not slow.pending


def test_outside_a_server_a_load_runs_at_once():
    got = []
    Jobs(background=False).submit(lambda: 1 / 0, lambda r, e: got.append(type(e)), "dividing")
    assert got == [ZeroDivisionError]
