"""Work done off the UI's event loop: fitting runs and loads. Plain Python (no Panel).

A run goes in a worker thread that only puts events in the run's own queue; the app
drains them on its event loop (`RunController.drain`) and draws them. Each Run records
which model it belongs to (the Edited key and version it started from), so that views
show only the runs of the model on screen. A served app shares a bound on concurrent
runs (`slots`) and a time limit per run among its sessions; loads go to a small shared
pool with a time limit (`Jobs`), so that no session's work blocks the others.
"""
from __future__ import annotations

import math
import queue
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from engine import ModelError

METHODS = {"IS": "is", "QEM": "qem", "RWS": "rws", "VI": "vi", "global": "global"}


def wait_until(poll, timeout: float) -> bool:
    """Call `poll` (which drains a component's pending updates and says whether its work
    has ended) every 50 ms until it returns True or `timeout` seconds pass; for scripts
    and tests, where no event loop drains the updates."""
    end = time.time() + timeout
    while time.time() < end:
        if poll():
            return True
        time.sleep(0.05)
    return False


def default_settings(model=None) -> dict:
    """The run settings a session starts with: engine.fit.DEFAULTS, the CLI's (K "auto"
    resolved for `model` by engine.fit.choose_K; 10 without one); a run stops earlier
    once its ELBO has converged."""
    from engine.fit import DEFAULTS, choose_K
    K = DEFAULTS["K"]
    if K == "auto":
        try:
            K = choose_K(model, device="cpu") if model is not None and len(model.graph) else 10
        except ModelError:
            K = 10
    label = {v: k for k, v in METHODS.items()}
    return {"method": label[DEFAULTS["method"]], "K": int(K), "iters": int(DEFAULTS["max_iters"]), "lr": 0.03,
            "seed": 0, "device": "auto"}


@dataclass
class Run:
    """One fitting run and what it produced."""
    label: str
    model_key: int
    model_name: str
    version: int
    settings: dict
    iteration: list = field(default_factory=list)
    elbo: list = field(default_factory=list)
    state: str = "starting"        # running, done, stopped, failed
    message: str = ""              # how it ended, if not simply after its iterations
    stopped: bool = False          # ended by Stop, another model, or the server's time limit
    result: object = None
    samples: dict | None = None
    table: object = None
    last_ess: dict | None = None

    @property
    def K(self) -> int:
        return int(self.settings["K"])


class RunController:
    """At most one run at a time for one session."""

    def __init__(self, slots: threading.Semaphore | None = None, time_limit: float | None = None):
        self.slots, self.time_limit = slots, time_limit
        self.runs: list[Run] = []
        self._live: list[tuple[Run, queue.Queue, threading.Event, list]] = []

    @property
    def running(self) -> bool:
        return any(t.is_alive() for _, _, _, (t, *_) in self._live)

    @property
    def live(self) -> bool:
        """A run is going or has events not drained yet."""
        return bool(self._live)

    @property
    def current(self) -> Run | None:
        return self.runs[-1] if self.runs else None

    def start(self, model, settings: dict, key: int, version: int, name: str) -> Run:
        """Check the model, then fit a copy of it in a worker thread."""
        if self.running:
            raise ModelError("A run is already going; stop it first.")
        method = METHODS[settings["method"]]
        K = int(settings["K"])
        try:
            model.validate()
            # the engine's memory planner: chunks a plate to fit, or says what to change
            model.compile(K, mode="global" if method == "global" else "mp", device=settings["device"])
        except ModelError as e:
            raise ModelError(f"Cannot run: {e}") from None
        n = sum(r.model_key == key for r in self.runs) + 1
        run = Run(f"{settings['method']} K={K} #{n}", key, name, version, dict(settings))
        self.runs.append(run)
        q, stop = queue.Queue(), threading.Event()
        box: list = []
        t = threading.Thread(target=self._work, args=(run, model.copy(), q, stop, box), daemon=True, name="kn-fit")
        self._live.append((run, q, stop, [t, box]))
        t.start()
        return run

    def stop(self, why: str | None = None) -> None:
        """Ask the current run to end after its iteration."""
        for run, _, stop, (_, box) in self._live:
            stop.set()
            run.stopped = True
            if why:
                run.message = why
            for f in box:
                f.stop()

    def clear(self) -> None:
        """Forget finished runs (a going run stays)."""
        live = {id(r) for r, *_ in self._live}
        self.runs = [r for r in self.runs if id(r) in live]

    def drain(self) -> list[tuple]:
        """Events since the last call, in order: ("steps", run, [Step]), ("status", run, text),
        ("warn", run, text), ("error", run, text), ("done", run), ("end", run)."""
        out = []
        for entry in list(self._live):
            run, q, _, (t, _) = entry
            steps = []
            while True:
                try:
                    kind, item = q.get_nowait()
                except queue.Empty:
                    break
                if kind == "step":
                    steps.append(item)
                    continue
                if steps:
                    out.append(("steps", run, steps))
                    steps = []
                out.append((kind, run) if item is None else (kind, run, item))
                if kind == "end":
                    self._live.remove(entry)
            if steps:
                out.append(("steps", run, steps))
        for ev in out:
            self._record(ev)
        return out

    @staticmethod
    def _record(ev) -> None:
        kind, run = ev[0], ev[1]
        if kind == "steps":
            run.iteration += [s.iteration for s in ev[2]]
            run.elbo += [s.elbo for s in ev[2]]
            run.last_ess = ev[2][-1].ess
            run.state = "running"
        elif kind == "error":
            run.state, run.message = "failed", ev[2]
        elif kind == "done":
            run.state = "stopped" if run.stopped else "done"

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until no run is going, draining events (scripts and tests)."""
        end = time.time() + timeout
        while time.time() < end:
            self.drain()
            if not self._live:
                return True
            time.sleep(0.05)
        return False

    # ---- the worker ----------------------------------------------------------------------
    def _work(self, run: Run, model, q, stop: threading.Event, box: list) -> None:
        s = run.settings
        K, iters = int(s["K"]), int(s["iters"])
        slot = False
        try:
            if self.slots is not None:
                while not (slot := self.slots.acquire(timeout=0.5)):
                    q.put(("status", "Waiting for a free run slot on this server…"))
                    if stop.is_set():
                        return
            from engine.fit import Fitter
            f = Fitter(model, method=METHODS[s["method"]], K=K, seed=int(s["seed"]), lr=float(s["lr"]),
                       device=s["device"])
            box.append(f)
            if stop.is_set():
                f.stop()
            t0 = time.monotonic()
            for step in f.run(iters, until_converged=True):
                if not math.isfinite(step.elbo):
                    q.put(("error", f"iteration {step.iteration}: the ELBO is {step.elbo} (NaN)"))
                    return
                q.put(("step", step))
                if step.converged:
                    run.message = f"converged at iteration {step.iteration}"
                if stop.is_set():
                    break
                if self.time_limit is not None and time.monotonic() - t0 > self.time_limit:
                    run.stopped, run.message = True, f"stopped at the server's limit of {self.time_limit:g} s per run"
                    q.put(("warn", f"{run.label}: {run.message}."))
                    break
            q.put(("status", "Computing the posterior summary…"))
            self._summarise(run, f, q)
            q.put(("done", None))
        except ModelError as e:
            q.put(("error", str(e)))
        except MemoryError:
            q.put(("error", f"Out of memory at K = {K}: lower K."))
        except RuntimeError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if any(w in msg.lower() for w in ("out of memory", "can't allocate", "not enough memory")):
                q.put(("error", f"Out of memory at K = {K}: lower K ({msg})"))
            else:
                q.put(("error", f"The run failed: {msg}"))
        except Exception as e:  # anything else: readable, never a dead UI
            traceback.print_exc()
            q.put(("error", f"The run failed: {type(e).__name__}: {e}"))
        finally:
            if slot:
                self.slots.release()
            q.put(("end", None))

    @staticmethod
    def _summarise(run: Run, fitter, q) -> None:
        from . import views as V
        r = fitter.result()
        run.result, run.samples, run.table = r, V.posterior_draws(r), V.summary_table(r)


class Jobs:
    """One session's loads, off the event loop: `submit(fn, done)` runs fn in a pool
    shared by all sessions and, at the next `drain()`, calls done(result, error). With
    background=False (a notebook, a script) fn runs at once. A job over `timeout`
    seconds is given up (done gets a ModelError); a session has one job at a time."""

    POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kn-load")

    def __init__(self, background: bool, timeout: float = 60.0):
        self.background, self.timeout = background, timeout
        self._pending: list = []

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def submit(self, fn, done, what: str) -> None:
        if not self.background:
            try:
                result = fn()
            except Exception as e:  # noqa: BLE001  (done decides what to show)
                done(None, e)
            else:
                done(result, None)
            return
        if self._pending:
            done(None, ModelError(f"Still busy with {self._pending[0][2]}; try again when it is done."))
            return
        self._pending.append((self.POOL.submit(fn), done, what, time.monotonic()))

    def drain(self) -> None:
        for entry in list(self._pending):
            fut, done, what, t0 = entry
            if fut.done():
                self._pending.remove(entry)
                err = fut.exception()
                done(None, err) if err is not None else done(fut.result(), None)
            elif time.monotonic() - t0 > self.timeout:
                self._pending.remove(entry)
                fut.cancel()
                done(None, ModelError(f"{what} took longer than {self.timeout:g} s; gave up."))
