"""One benchmark configuration in a fresh process: `python -m benchmarks.isolated fit '{json}'`.

Prints one JSON line: seconds per iteration (all measured iterations) and peak memory
over them. Run by `common.run_isolated`, so that every configuration's memory high-water
mark is its own and an out-of-memory kill loses one row, not the run.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from . import models
from .common import PeakMemory, resolve_device, sync


def fit(cfg: dict) -> dict:
    from engine.fit import Fitter
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(cfg.get("device", "cpu"))
    model = getattr(models, cfg["model"])(**cfg.get("model_kwargs", {}))
    f = Fitter(model, cfg.get("method", "qem"), K=int(cfg["K"]), seed=int(cfg.get("seed", 0)), device=device,
               memory_budget=cfg.get("memory_budget"))
    for _ in range(int(cfg.get("warmup", 2))):
        f.step()
    mem = PeakMemory(device)
    mem.start()
    times, cpu = [], []
    for _ in range(int(cfg.get("repeats", 5))):
        sync(device)
        c, t = time.process_time(), time.perf_counter()
        f.step()
        sync(device)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    out = {"times": times, "cpu_times": cpu, "elbo": f.history["elbo"][-1], **mem.stop()}
    split = getattr(f.program, "split", None)
    out["estimate_bytes"] = f.program.memory_estimate(dict([split]) if split else None)   # as run
    out["split"] = getattr(f.program, "split", None)   # (plate, chunk) when the engine chunked a plate to fit memory
    out["largest_factor_elements"] = max(
        int(torch.Size([f.program.sizes[d] for d in dims]).numel()) for dims in f.program.factor_dims.values())
    return out


def estimate(cfg: dict) -> dict:
    """QEM until converged (at most `iters`), then the pooled final estimate: its seconds,
    the number of samples pooled, and the median seconds of the run's iterations."""
    from engine.fit import Fitter
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = resolve_device(cfg.get("device", "cpu"))
    model = getattr(models, cfg["model"])(**cfg.get("model_kwargs", {}))
    f = Fitter(model, "qem", K=cfg.get("K", "auto"), seed=int(cfg.get("seed", 0)), device=device)
    for _ in f.run(int(cfg.get("iters", 1000)), until_converged=True):
        pass
    sync(device)
    t = time.perf_counter()
    r = f.result()
    sync(device)
    seconds = time.perf_counter() - t
    it = sorted(f.history["seconds"][2:] or f.history["seconds"])
    return {"K": f.K, "iterations": f.t, "iteration_s": it[len(it) // 2], "estimate_s": seconds,
            "n_samples": r.n_samples, "worst_mcse_ratio": r.worst_mcse_ratio()}


KINDS = {"fit": fit, "estimate": estimate}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    kind, cfg = argv[0], json.loads(argv[1])
    from engine.alloc import tune_allocator
    tune_allocator()   # as the kn command does: keep freed pages for the next iteration
    print(json.dumps(KINDS[kind](cfg)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
