"""Section 7: what running sweep cells as Dask tasks costs, against running the same cells
in a loop in one process.

    python -m benchmarks --only sweep          # as a section of the report
    python -m benchmarks.dask_sweep [--quick]  # by hand: prints the section's table

The cells are short QEM fits of the hierarchical Gaussian (assets/models), distinct seeds,
so that the fixed cost per cell shows. Every contender runs the very same cells, rounds
alternating: the loop calls engine.sweep.run_cell in this process (one torch thread);
the sweeps call engine.sweep.run_sweep on an embedded LocalCluster of one worker (the
overhead per cell: submission, scheduling, serialisation, the row's trip back), with and
without the output file rewritten after every cell, and of one worker per core (the
speed-up). Clusters are started before the rounds, and every worker runs one cell first.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from .common import spread_ms

ASSET = Path(__file__).resolve().parent.parent / "assets" / "models" / "hierarchical_gaussian.json"


def bench_sweep(cfg) -> dict:
    from distributed import Client
    from engine import Model
    from engine import sweep as sw
    doc = Model.load(ASSET).to_dict()
    seeds = list(range(cfg.sweep_cells))
    device = str(cfg.device)
    settings = dict(iters=cfg.sweep_iters, device=device)
    machine = sw.machine_workers()
    started, clients = {}, {}
    for n in sorted({1, machine}):
        t = time.perf_counter()
        cluster = sw.local_cluster(n)
        client = Client(cluster)
        client.wait_for_workers(n)
        started[n] = time.perf_counter() - t
        clients[n] = (cluster, client)
        sw.run_sweep({"hg": doc}, ("qem",), (cfg.sweep_K,), range(10_000, 10_000 + n), scheduler=client,
                     **settings)   # warm-up: one cell on every worker
    sw.run_cell(doc, "qem", cfg.sweep_K, 9_999, **settings)

    def loop():
        return [sw.run_cell(doc, "qem", cfg.sweep_K, s, label="hg", **settings) for s in seeds]

    def on(n, file=False):
        def run():
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "sweep.json" if file else None
                got = sw.run_sweep({"hg": doc}, ("qem",), (cfg.sweep_K,), seeds, out=out, scheduler=clients[n][1],
                                   **settings)
            assert not sw.failed(got) and len(got["rows"]) == len(seeds)
            return got["rows"]
        return run

    contenders = {"loop": loop, "dask1": on(1), "dask1_file": on(1, file=True)}
    if machine > 1:
        contenders[f"dask{machine}"] = on(machine)
    wall, fit = ({k: [] for k in contenders} for _ in range(2))
    names = list(contenders)
    try:
        for r in range(cfg.sweep_rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                t = time.perf_counter()
                rows = contenders[k]()
                wall[k].append((time.perf_counter() - t) / len(seeds))
                fit[k].append(statistics.fmean(row["seconds"] for row in rows))
    finally:
        for cluster, client in clients.values():
            client.close()
            cluster.close()
    med = lambda xs: 1e3 * statistics.median(xs)
    label = {"loop": ("a loop in this process", "-"), "dask1": ("run_sweep, embedded cluster", 1),
             "dask1_file": ("run_sweep, embedded cluster, with --out", 1),
             f"dask{machine}": ("run_sweep, embedded cluster (one worker per core)", machine)}
    rows = []
    for k in names:
        how, workers = label[k]
        idle = [w - f for w, f in zip(wall[k], fit[k])]
        rows.append({"how": how, "workers": workers, "ms": med(wall[k]), "spread_ms": spread_ms(wall[k]),
                     "fit_ms": med(fit[k]), "idle_ms": med(idle) if workers in ("-", 1) else None,
                     "speedup": med(wall["loop"]) / med(wall[k]),
                     "startup_s": started.get(workers) if k != "dask1_file" else None})
    by = {k: r for k, r in zip(names, rows)}
    own = by["dask1"]["idle_ms"]
    return {"name": "sweep", "title": "7. Sweeps on Dask: cost per cell against a loop",
            "description": f"{len(seeds)} cells (QEM, hierarchical Gaussian, K={cfg.sweep_K}, {cfg.sweep_iters} "
                           f"iterations, distinct seeds), {cfg.sweep_rounds} rounds, contenders alternating. "
                           f"ms per cell: a round's wall time over its cells; fit ms: a cell's own run_cell "
                           f"(model, Fitter, result), timed where it ran; not fitting: the difference, with one "
                           f"worker the time Dask (scheduling, serialisation, the row's trip back, the driver's "
                           f"bookkeeping, and the sweep's few fixed round trips spread over its cells) keeps the "
                           f"worker from fitting. Medians over rounds.",
            "columns": [("how", "how the cells ran"), ("workers", "workers"), ("ms", "ms per cell"),
                        ("spread_ms", "±"), ("fit_ms", "fit ms per cell"), ("idle_ms", "not fitting, ms per cell"),
                        ("speedup", "loop / this"), ("startup_s", "cluster start, s")],
            "rows": rows,
            "notes": [f"Dask's own cost: {own:.1f} ms per cell with one worker (with --out: "
                      f"{by['dask1_file']['idle_ms']:.1f} ms); a cell's fit took {by['dask1']['fit_ms']:.1f} ms on the worker "
                      f"against {by['loop']['fit_ms']:.1f} ms in the loop (the driver, the scheduler and the "
                      f"workers share this machine's cores). A cluster starts once per sweep."],
            "verdict": f"{own:.1f} ms of Dask overhead per cell"}


def main(argv=None) -> int:
    from .common import machine, to_markdown
    from .suite import Config
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dask_sweep", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--toy", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = Config.make(torch.device("cpu"), quick=args.quick, toy=args.toy, threads=1)
    doc = {"command": "python -m benchmarks.dask_sweep", "machine": machine(cfg.device), "sections": [bench_sweep(cfg)]}
    print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
