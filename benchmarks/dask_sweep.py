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
        for s in seeds:
            sw.run_cell(doc, "qem", cfg.sweep_K, s, label="hg", **settings)

    def on(n, file=False):
        def run():
            with tempfile.TemporaryDirectory() as d:
                out = Path(d) / "sweep.json" if file else None
                got = sw.run_sweep({"hg": doc}, ("qem",), (cfg.sweep_K,), seeds, out=out, scheduler=clients[n][1],
                                   **settings)
                assert not sw.failed(got) and len(got["rows"]) == len(seeds)
                cell_seconds.extend(r["seconds"] for r in got["rows"])
        return run

    cell_seconds: list[float] = []
    contenders = {"loop": loop, "dask1": on(1), "dask1_file": on(1, file=True)}
    if machine > 1:
        contenders[f"dask{machine}"] = on(machine)
    times = {k: [] for k in contenders}
    names = list(contenders)
    try:
        for r in range(cfg.sweep_rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:
                t = time.perf_counter()
                contenders[k]()
                times[k].append((time.perf_counter() - t) / len(seeds))
    finally:
        for cluster, client in clients.values():
            client.close()
            cluster.close()
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    label = {"loop": ("a loop in this process", "-"), "dask1": ("run_sweep, embedded cluster", 1),
             "dask1_file": ("run_sweep, embedded cluster, writing --out after every cell", 1),
             f"dask{machine}": ("run_sweep, embedded cluster (one worker per core)", machine)}
    rows = []
    for k in names:
        how, workers = label[k]
        rows.append({"how": how, "workers": workers, "ms": ms[k], "spread_ms": spread_ms(times[k]),
                     "overhead_ms": ms[k] - ms["loop"] if workers == 1 else None,
                     "speedup": ms["loop"] / ms[k], "startup_s": started.get(workers) if k != "dask1_file" else None})
    over = ms["dask1"] - ms["loop"]
    cell = 1e3 * statistics.median(cell_seconds)
    return {"name": "sweep", "title": "7. Sweeps on Dask: cost per cell against a loop",
            "description": f"{len(seeds)} cells (QEM, hierarchical Gaussian, K={cfg.sweep_K}, {cfg.sweep_iters} "
                           f"iterations, distinct seeds), {cfg.sweep_rounds} rounds, contenders alternating; "
                           f"ms per cell is a round's wall time over the cells (median over rounds). A cell's "
                           f"own fit (Fitter and result, timed on the worker) took {cell:.1f} ms (median).",
            "columns": [("how", "how the cells ran"), ("workers", "workers"), ("ms", "ms per cell"),
                        ("spread_ms", "±"), ("overhead_ms", "overhead per cell, ms"), ("speedup", "loop / this"),
                        ("startup_s", "cluster start, s")],
            "rows": rows,
            "notes": [f"Dask's overhead: {over:.1f} ms per cell ({over / max(cell, 1e-9):.0%} of a cell this short); "
                      f"writing the output file after every cell adds "
                      f"{ms['dask1_file'] - ms['dask1']:.1f} ms more. A cluster starts once per sweep."],
            "verdict": f"{over:.1f} ms of Dask overhead per cell"}


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
