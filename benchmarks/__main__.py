"""`python -m benchmarks [--quick] [--device cpu|cuda|auto] [--only NAME,...]`: run the
benchmarks and write benchmarks/results/latest.json and latest.md."""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import torch

from .common import RESULTS, machine, resolve_device, write_results
from .suite import BENCHMARKS, Config


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a few minutes)")
    ap.add_argument("--toy", action="store_true", help=argparse.SUPPRESS)   # tiny sizes, for the smoke test
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    ap.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: per-core figures that a busy machine disturbs least; "
                         "0 = torch's default)")
    ap.add_argument("--out", default=str(RESULTS), help="directory for latest.json and latest.md")
    ap.add_argument("--stem", default="latest", help="file name stem of the results (default: latest)")
    args = ap.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    from engine.alloc import tune_allocator
    tune_allocator()   # as the kn command does
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or None
    device = resolve_device(args.device)
    command = "python -m benchmarks " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    doc = {"command": command.strip(), "machine": machine(device), "sections": []}
    if device is None:
        reason = f"device {args.device!r} is not available on this machine (torch.cuda.is_available() is False)"
        print(f"skipping every benchmark: {reason}", file=sys.stderr)
        doc["sections"] = [{"name": n, "title": n, "skipped": reason, "rows": []} for n in names]
    else:
        cfg = Config.make(device, quick=args.quick, toy=args.toy, threads=threads)
        for n in names:
            t = time.perf_counter()
            print(f"[{n}] running ...", file=sys.stderr, flush=True)
            try:
                sec = BENCHMARKS[n](cfg)
            except Exception as e:   # one broken benchmark must not lose the others
                traceback.print_exc()
                sec = {"name": n, "title": n, "skipped": f"failed: {type(e).__name__}: {e}", "rows": []}
            sec["seconds"] = round(time.perf_counter() - t, 1)
            doc["sections"].append(sec)
            print(f"[{n}] {sec.get('verdict') or sec.get('skipped') or 'done'} ({sec['seconds']} s)",
                  file=sys.stderr, flush=True)
    js, md = write_results(doc, Path(args.out), args.stem)
    print(md.read_text())
    print(f"wrote {js} and {md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
