"""Sweeps: a grid of (model, method, K, seed) cells, each cell a task on dask.distributed.

    doc = run_sweep({"hg": model}, methods=("qem", "is"), Ks=(3, 10), seeds=(0, 1), iters=50,
                    out="sweep.json")

The cluster is an embedded `LocalCluster` sized to the machine (one single-threaded
worker per core, torch set to one thread in each task: Dask workers and torch threads
must not oversubscribe the cores), or an existing scheduler at an address. A cell is a
fresh `Fitter` run, then `Fitter.result()`; its row is `Result.to_dict()` (the estimates,
their Monte Carlo errors, warnings, history) with the cell's identity and a few summaries.
A cell is a pure function of the model document, method, K, seed and settings, so it gives
the same row on any worker (timing fields aside: `TIMING`).

The `kn-sweep/1` file is rewritten as cells finish (at most once a second, so that short
cells do not wait on the disk) and when the sweep ends, is stopped or interrupted, always
atomically (a temporary file, then os.replace): a kill leaves the previous version whole,
and loses at most the last second's cells. A sweep resumes from its file: the
cells with a row there are skipped; failed cells are run again. The file's settings (iters,
lr, device, dtype) and each model's digest must match the new request.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import threading
import time
from pathlib import Path

import numpy as np

from .errors import ModelError

FORMAT = "kn-sweep/1"
SETTINGS = ("iters", "lr", "device", "dtype")
WRITE_EVERY = 1.0   # seconds: the file is rewritten at most this often while cells finish, and at the end
TIMING = ("seconds", "seconds_per_iter", "worker")   # fields that differ between runs of one cell; plus history.seconds


# ---- one cell ------------------------------------------------------------------------------
def run_cell(model_doc: dict, method: str, K: int, seed: int, iters: int, lr: float = 0.03,
             device: str = "auto", dtype: str | None = None, label: str | None = None) -> dict:
    """Fit one cell in this process and return its row (raises ModelError on a bad cell)."""
    from .fit import Fitter
    from .model import Model
    start = time.perf_counter()
    model = Model.from_dict(model_doc)
    f = Fitter(model, method, K=K, seed=seed, lr=lr, device=device, dtype=dtype)
    for _ in f.run(iters):
        pass
    doc = f.result().to_dict()
    for k in ("format", "model", "method", "K", "seed", "proposal"):   # the row says the first five; Q's
        del doc[k]                                                     # parameters are a checkpoint's business
    elbo = doc["history"]["elbo"]
    ess = {}
    for name, d in doc["latents"].items():
        e = np.asarray(d["ess"], dtype=float)
        ess[name] = {"min": float(e.min()), "mean": float(e.mean())}
    return {"model": label or model.name, "method": method, "K": int(K), "seed": int(seed), "status": "ok",
            "iterations": len(elbo), "final_elbo": elbo[-1] if elbo else None, "ess": ess, **doc,
            "seconds": time.perf_counter() - start}


def _task(model_doc, method, K, seed, settings, label) -> dict:
    """run_cell on a Dask worker: one torch thread per task (the worker runs one task per
    core). A cell's own error comes back as its row (not as a failed task, which Dask logs
    with a traceback); a worker's death still fails the task."""
    import torch
    torch.set_num_threads(1)
    try:
        row = run_cell(model_doc, method, K, seed, label=label, **settings)
    except Exception as e:
        row = error_row(label, method, K, seed, e)
    try:
        from distributed import get_worker
        row["worker"] = get_worker().address
    except (ImportError, ValueError):
        pass
    return row


def error_row(label: str, method: str, K: int, seed: int, exc: BaseException) -> dict:
    msg = str(exc) if isinstance(exc, ModelError) else f"{type(exc).__name__}: {exc}"
    return {"model": label, "method": method, "K": int(K), "seed": int(seed), "status": "error",
            "error": msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__,
            "error_type": type(exc).__name__}


def cell_key(row: dict) -> tuple:
    return (row["model"], row["method"], int(row["K"]), int(row["seed"]))


def without_timing(row: dict) -> dict:
    """A row less the fields that depend on the machine's speed and the worker that ran it."""
    out = {k: v for k, v in row.items() if k not in TIMING}
    if "history" in out:
        out["history"] = {k: v for k, v in out["history"].items() if k != "seconds"}
    return out


# ---- the grid --------------------------------------------------------------------------------
def _ints(values, what: str, low: int) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ModelError(f"{what} must be integers >= {low}, got {v!r}")
        out.append(int(v))
    if not out:
        raise ModelError(f"{what}: give at least one value")
    return list(dict.fromkeys(out))


def parse_list(text: str, what: str, cast=int) -> list:
    """'3,10,30' -> [3, 10, 30]; a clear error naming the option otherwise."""
    try:
        return [cast(x.strip()) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ModelError(f"{what}: expected a comma-separated list, got {text!r}") from None


def grid(labels, methods, Ks, seeds) -> list[tuple]:
    """The cells (label, method, K, seed), in a stable order."""
    from .fit import METHODS   # (here, not at the top: `kn --help` must not wait for torch)
    methods = list(dict.fromkeys(methods))
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ModelError(f"methods must be among {', '.join(METHODS)}, got {', '.join(map(repr, bad)) or 'none'}")
    Ks, seeds = _ints(Ks, "K", 1), _ints(seeds, "seeds", 0)
    return [(lab, m, K, s) for lab in labels for m in methods for K in Ks for s in seeds]


def model_digest(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _documents(models) -> dict[str, dict]:
    """{label: Model | kn-model/1 dict | path} -> {label: kn-model/1 dict (data inline)}."""
    from .model import Model
    docs = {}
    for label, m in models.items():
        if not isinstance(label, str) or not label:
            raise ModelError(f"a model's label must be a non-empty string, got {label!r}")
        if isinstance(m, (str, Path)):
            m = Model.load(m)
        elif isinstance(m, dict):
            m = Model.from_dict(m)
        m.validate()
        docs[label] = m.to_dict()
    return docs


def labels_for(paths) -> dict[str, str]:
    """Model files -> {label: path}, the label being the file's stem (which must be unique)."""
    out = {}
    for p in paths:
        stem = Path(p).stem
        if stem in out:
            raise ModelError(f"two models are called {stem!r} ({out[stem]} and {p}): rename one")
        out[stem] = str(p)
    return out


# ---- the file --------------------------------------------------------------------------------
def write_atomic(path, doc: dict) -> None:
    """Write `doc` as JSON so that a kill at any moment leaves either the old file or the new."""
    path = Path(path)
    text = json.dumps(doc, indent=1)       # fails before the file is touched
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load(path) -> dict:
    """A kn-sweep/1 document from a file."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot read the sweep file {str(path)!r} ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("rows"), list):
        raise ModelError(f"{str(path)!r} is not a {FORMAT} file (field 'format' must be {FORMAT!r})")
    return doc


def _resume(out, settings: dict, docs: dict) -> dict:
    """The document to extend: the file at `out` (checked against this request) or a new one."""
    doc = {"format": FORMAT, "settings": dict(settings), "models": {}, "rows": []}
    if out is not None and Path(out).exists():
        doc = load(out)
        old = doc.setdefault("settings", {})
        for k in SETTINGS:
            if old.get(k) != settings[k]:
                raise ModelError(f"{out}: its rows were run with {k} = {old.get(k)!r}, this sweep asks "
                                 f"for {settings[k]!r}: use the same setting to resume, or another output file")
        doc.setdefault("models", {})
    for label, d in docs.items():
        digest = model_digest(d)
        old = doc["models"].get(label)
        if old is not None and old["digest"] != digest:
            raise ModelError(f"{out}: model {label!r} is not the one its rows were computed with (digest "
                             f"{old['digest']} there, {digest} now): use another output file")
        doc["models"][label] = {"name": d.get("name"), "digest": digest}
    return doc


def _sort(doc: dict) -> None:
    from .fit import METHODS
    order = {m: i for i, m in enumerate(METHODS)}
    doc["rows"].sort(key=lambda r: (r["model"], order.get(r["method"], 99), r["K"], r["seed"]))


# ---- the cluster ------------------------------------------------------------------------------
def machine_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def local_cluster(n_workers: int | None = None):
    """An embedded LocalCluster: n_workers processes (default: one per core) of one thread
    each, on 127.0.0.1, without a dashboard (nothing listens beyond this machine)."""
    from distributed import LocalCluster
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
        raise ModelError(f"workers must be a positive integer, got {n_workers!r}")
    # the scheduler's HTTP routes (health, metrics) on a free port, not 8787: no dashboard to take it
    return LocalCluster(n_workers=n_workers or machine_workers(), threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
                        silence_logs=logging.ERROR)


@contextlib.contextmanager
def connect(scheduler=None, n_workers: int | None = None):
    """A dask Client: `scheduler` may be a Client (used as is), an address, or None for an
    embedded LocalCluster (closed on exit)."""
    from distributed import Client
    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler
        return
    cluster = None
    try:
        if scheduler is None:
            cluster = local_cluster(n_workers)
            client = Client(cluster)
            client.wait_for_workers(len(cluster.workers))
        else:
            try:
                client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError, ValueError) as e:
                raise ModelError(f"--scheduler: cannot reach a Dask scheduler at {scheduler!r} ({e})") from None
        try:
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


def describe(client) -> str:
    info = client.scheduler_info(n_workers=-1)
    workers = info.get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"{len(workers)} workers, {threads} threads at {info.get('address', '?')}"


# ---- the sweep ----------------------------------------------------------------------------------
def run_sweep(models, methods=("qem", "rws", "is"), Ks=(3, 10, 30, 100), seeds=(0, 1, 2), iters: int = 100,
              out=None, *, lr: float = 0.03, device: str = "auto", dtype: str | None = None, scheduler=None,
              n_workers: int | None = None, progress=None, stop: threading.Event | None = None) -> dict:
    """Run every cell of the grid not already in `out` and return the kn-sweep/1 document.

    models: {label: Model | kn-model/1 dict | path}. scheduler: None (an embedded
    LocalCluster of n_workers), a scheduler address, or a dask Client. progress(event, info)
    is called with ("start", {"total", "skipped", "cluster"}) and then ("row", {"row", "done",
    "total", "elapsed", "eta"}) as each cell finishes (seconds; the ETA from the mean so far).
    stop: set it to cancel the cells not yet finished (they are left out of the document).
    The file at `out`, if given, is rewritten atomically as cells finish (see WRITE_EVERY)."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ModelError(f"iters must be a positive integer, got {iters!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ModelError(f"lr must be a positive number, got {lr!r}")
    settings = {"iters": iters, "lr": float(lr), "device": device, "dtype": dtype}
    docs = _documents(models)
    cells = grid(list(docs), methods, Ks, seeds)
    doc = _resume(out, settings, docs)
    have = {cell_key(r) for r in doc["rows"] if r.get("status") == "ok"}   # failed cells run again
    todo = [c for c in cells if c not in have]
    report = progress or (lambda event, info: None)
    task_settings = {k: settings[k] for k in SETTINGS}
    if out is not None:   # a file that cannot be written says so now, not after the first cell
        try:
            write_atomic(out, doc)
        except OSError as e:
            raise ModelError(f"cannot write the sweep file {str(out)!r} ({e})") from None
    with connect(scheduler, n_workers) as client:
        report("start", {"total": len(todo), "skipped": len(cells) - len(todo), "cluster": describe(client)})
        if not todo:
            return doc
        from distributed import as_completed
        # each model document goes to the cluster once (a dict given to scatter alone is scattered key by key)
        shared = {lab: client.scatter([d], hash=False)[0] for lab, d in docs.items() if any(c[0] == lab for c in todo)}
        futures = {client.submit(_task, shared[lab], m, K, s, task_settings, lab, pure=False,
                                 key=f"kn-cell-{lab}-{m}-K{K}-seed{s}-{os.urandom(4).hex()}"): (lab, m, K, s)
                   for lab, m, K, s in todo}
        ended = threading.Event()

        def cancel_unfinished():
            client.cancel([f for f in futures if not f.done()])

        def watch():   # a stop cancels what is left; as_completed then yields it at once, cancelled
            while not ended.wait(0.2):
                if stop.is_set():
                    cancel_unfinished()
                    return
        if stop is not None:
            threading.Thread(target=watch, daemon=True, name="kn-sweep-stop").start()
        done, start, written = 0, time.perf_counter(), -math.inf
        try:
            for fut in as_completed(futures):
                if stop is not None and stop.is_set():
                    break
                cell = futures[fut]
                try:
                    row = fut.result()
                except Exception as e:   # the worker died (a cell's own error is its row): reported, the grid goes on
                    row = error_row(*cell, e)
                doc["rows"] = [r for r in doc["rows"] if cell_key(r) != cell] + [row]   # replaces a failed row
                done += 1
                _sort(doc)
                if out is not None and time.perf_counter() - written >= WRITE_EVERY:
                    write_atomic(out, doc)
                    written = time.perf_counter()
                elapsed = time.perf_counter() - start
                report("row", {"row": row, "done": done, "total": len(todo), "elapsed": elapsed,
                               "eta": elapsed / done * (len(todo) - done)})
        finally:
            ended.set()
            cancel_unfinished()   # after a stop, an interrupt or an error here: nothing is left running
            if out is not None:
                write_atomic(out, doc)
    return doc


def failed(doc: dict) -> list[dict]:
    return [r for r in doc["rows"] if r.get("status") != "ok"]


def format_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def progress_line(info: dict) -> str:
    """'[ 3/24] hg qem K=10 seed=1: ELBO -12.3, log P -12.1 ± 0.03, 4.1 ms/it (0:05 elapsed, ETA 0:35)'
    (ELBO: the last iteration's; log P: the pooled estimate with its MCSE)."""
    r, width = info["row"], len(str(info["total"]))
    head = f"[{info['done']:>{width}}/{info['total']}] {r['model']} {r['method']} K={r['K']} seed={r['seed']}: "
    if r.get("status") == "ok":
        spi = r.get("seconds_per_iter")
        body = f"ELBO {r['final_elbo']:.4g}" + (f", log P {r['log_marginal']:.4g} ± {r['log_marginal_mcse']:.2g}"
                                                if r.get("log_marginal") is not None else "") \
            + (f", {1e3 * spi:.3g} ms/it" if spi else "")
    else:
        body = f"FAILED: {r.get('error')}"
    return head + body + f" ({format_seconds(info['elapsed'])} elapsed, ETA {format_seconds(info['eta'])})"


# ---- `kn sweep` -------------------------------------------------------------------------------------
def add_subcommand(sub) -> None:
    """Register `kn sweep` on the kn command's subparsers."""
    p = sub.add_parser("sweep", help="a method x K x seed grid over models, each cell a task on Dask")
    p.add_argument("models", nargs="+", metavar="MODEL", help="kn-model/1 JSON files (rows name them by file stem)")
    p.add_argument("--methods", default="qem,rws,is", help="comma-separated: is, qem, rws, vi, global")
    p.add_argument("--K", default="3,10,30,100", help="comma-separated particle counts")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--iters", type=int, default=100, help="iterations per cell")
    p.add_argument("--lr", type=float, default=0.03, help="Adam learning rate for rws, vi, global")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (as each worker sees it)")
    p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                   help="default: each model file's dtype, else float32")
    p.add_argument("--out", required=True, help="the kn-sweep/1 file, rewritten as cells finish; an existing one "
                                                "is resumed (its cells are skipped)")
    p.add_argument("--scheduler", help="a Dask scheduler address (tcp://HOST:8786); default: an embedded "
                                       "LocalCluster, one single-threaded worker per core")
    p.add_argument("--workers", type=int, default=None, help="workers of the embedded cluster (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no line per finished cell")
    p.set_defaults(func=command)


def command(args) -> int:
    """`kn sweep`: progress on stderr, a summary on stdout; exit status 1 if a cell failed."""
    import sys
    models = labels_for(args.models)
    methods = parse_list(args.methods, "--methods", str)
    Ks, seeds = parse_list(args.K, "--K"), parse_list(args.seeds, "--seeds")

    def progress(event, info):
        if event == "start":
            print(f"sweep: {info['total']} cells to run, {info['skipped']} already in {args.out}; "
                  f"{info['cluster']}", file=sys.stderr, flush=True)
        elif not args.quiet:
            print(progress_line(info), file=sys.stderr, flush=True)

    doc = run_sweep(models, methods, Ks, seeds, iters=args.iters, out=args.out, lr=args.lr, device=args.device,
                    dtype=args.dtype, scheduler=args.scheduler, n_workers=args.workers, progress=progress)
    bad = failed(doc)
    print(f"{len(doc['rows'])} rows -> {args.out}" + (f"; failed cells: {len(bad)}" if bad else ""))
    for r in bad:
        print(f"  {r['model']} {r['method']} K={r['K']} seed={r['seed']}: {r['error']}")
    return 1 if bad else 0


__all__ = ["run_sweep", "run_cell", "grid", "load", "write_atomic", "local_cluster", "connect", "failed",
           "without_timing", "FORMAT", "TIMING"]
