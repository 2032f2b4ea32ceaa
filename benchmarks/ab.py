"""Before/after timing of one fit in two engines, interleaved: `python -m benchmarks.ab`.

    python -m benchmarks.ab --base /path/to/old/checkout --model paper.radon --method qem --K 30

Each contender is a worker process with its own `engine` (`--base` a checkout whose engine
is the "before"; the other this checkout's, or `--other`), holding one `Fitter` after a
warm-up. The parent asks them in turn for `--calls` iterations, the order rotated every
round, so a busy neighbour slows both alike; each reports the median over rounds of its
seconds per iteration (wall and process CPU). Only one worker runs at a time.

`--tune none|kn|library` chooses what a worker does about the allocator before it builds
anything: nothing, engine.alloc.tune_allocator() as `kn` does, or (library) nothing
either, for an engine that applies it itself on first use; give one per contender with
`--tune-base` and `--tune-other`. Models: `paper.NAME` (benchmarks/paper.py),
`models.NAME` (benchmarks/models.py) or `asset.NAME` (assets/models/NAME.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_model(spec: str):
    kind, _, name = spec.partition(".")
    if kind == "paper":
        from . import paper
        return paper.MODELS[name]()
    from . import models
    if kind == "asset":
        return models.asset(name)
    return getattr(models, name)()


def worker() -> None:
    """Read one JSON config line, build and warm up its Fitter, then answer each
    `{"calls": n}` line with the seconds of n iterations."""
    cfg = json.loads(sys.stdin.readline())
    if cfg.get("tune") == "kn":
        from engine.alloc import tune_allocator
        tune_allocator()
    import torch
    torch.set_num_threads(int(cfg.get("threads", 1)))
    import engine
    from engine.fit import Fitter
    f = Fitter(build_model(cfg["model"]), cfg["method"], K=int(cfg["K"]), seed=0, device=cfg.get("device", "cpu"),
               dtype=cfg.get("dtype", "float32"))
    for _ in range(int(cfg.get("warmup", 2))):
        f.step()
    print(json.dumps({"ready": True, "engine": str(Path(engine.__file__).resolve().parent)}), flush=True)
    for line in sys.stdin:
        n = json.loads(line)["calls"]
        wall, cpu = [], []
        for _ in range(n):
            c, t = time.process_time(), time.perf_counter()
            f.step()
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        print(json.dumps({"wall": wall, "cpu": cpu, "elbo": f.history["elbo"][-1]}), flush=True)


class Worker:
    def __init__(self, label: str, checkout: str | None, cfg: dict):
        env = dict(os.environ, OMP_NUM_THREADS=str(cfg.get("threads", 1)))
        env.pop("KN_BENCH_ENGINE", None)
        if checkout:
            env["KN_BENCH_ENGINE"] = str(Path(checkout).resolve())
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        self.label = label
        self.p = subprocess.Popen([sys.executable, "-m", "benchmarks.ab", "--worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, cwd=str(ROOT), env=env)
        self.p.stdin.write(json.dumps(cfg) + "\n")
        self.p.stdin.flush()
        self.engine = self._read()["engine"]
        self.wall, self.cpu, self.elbo = [], [], None

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.label} ended (exit status {self.p.wait()})")
        return json.loads(line)

    def run(self, calls: int) -> None:
        self.p.stdin.write(json.dumps({"calls": calls}) + "\n")
        self.p.stdin.flush()
        r = self._read()
        self.wall.append(statistics.median(r["wall"]))
        self.cpu.append(statistics.median(r["cpu"]))
        self.elbo = r["elbo"]

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait()


def compare(model: str, method: str, K: int, base: str | None, other: str | None = None, rounds: int = 5,
            calls: int = 3, warmup: int = 2, tune=("kn", "kn"), threads: int = 1, dtype: str = "float32") -> dict:
    """Median seconds per iteration of the two engines, measured in alternation."""
    cfg = {"model": model, "method": method, "K": K, "warmup": warmup, "threads": threads, "dtype": dtype}
    load = os.getloadavg()[0]
    ws = [Worker("base", base, {**cfg, "tune": tune[0]}), Worker("other", other, {**cfg, "tune": tune[1]})]
    try:
        for r in range(rounds):
            for w in (ws if r % 2 == 0 else ws[::-1]):
                w.run(calls)
    finally:
        for w in ws:
            w.close()
    out = {"model": model, "method": method, "K": K, "load_before": round(load, 2),
           "load_after": round(os.getloadavg()[0], 2)}
    for w in ws:
        out[w.label] = {"engine": w.engine, "tune": tune[ws.index(w)], "ms": 1e3 * statistics.median(w.wall),
                        "cpu_ms": 1e3 * statistics.median(w.cpu), "rounds_ms": [round(1e3 * x, 2) for x in w.wall],
                        "last_elbo": w.elbo}
    out["speedup"] = out["base"]["ms"] / out["other"]["ms"]
    out["cpu_speedup"] = out["base"]["cpu_ms"] / out["other"]["cpu_ms"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", help="checkout whose engine is the 'before' (default: this one)")
    ap.add_argument("--other", help="checkout whose engine is the 'after' (default: this one)")
    ap.add_argument("--model", default="paper.radon")
    ap.add_argument("--method", default="qem")
    ap.add_argument("--K", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tune-base", default="kn", choices=("none", "kn", "library"))
    ap.add_argument("--tune-other", default="kn", choices=("none", "kn", "library"))
    ap.add_argument("--json", help="append the result as one JSON line to this file")
    args = ap.parse_args(argv)
    if args.worker:
        worker()
        return 0
    r = compare(args.model, args.method, args.K, args.base, args.other, args.rounds, args.calls, args.warmup,
                (args.tune_base, args.tune_other), dtype=args.dtype)
    print(f"{r['model']} {r['method']} K={r['K']} (load {r['load_before']} -> {r['load_after']}): "
          f"base {r['base']['ms']:.1f} ms (cpu {r['base']['cpu_ms']:.1f}), other {r['other']['ms']:.1f} ms "
          f"(cpu {r['other']['cpu_ms']:.1f}): {r['speedup']:.2f}x faster (cpu {r['cpu_speedup']:.2f}x)")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
