"""The `kn` command: info, fit, predict and sweep here; other packages add subcommands (the
workbench's `serve`) through the `kn.commands` entry point group: each entry is a function
taking the subparsers object. Heavy modules (torch, the workbench's Panel) are imported
only when a command runs, so that `kn --help` is quick."""
from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

import numpy as np

from .alloc import tune_allocator
from .errors import ModelError
from .safeio import DATA_LIMIT, MODEL_LIMIT, load_npz, read_bounded

COMMANDS = "kn.commands"


def info(args) -> int:
    from .model import Model
    from .program import human_bytes
    from .program import Program
    from .fit import choose_K
    m = Model.load(args.model)
    K = choose_K(m, device=args.device, dtype=args.dtype) if args.K == "auto" else args.K
    prog = Program(m, K, device=args.device, dtype=args.dtype, optimize=args.optimize,
                   memory_budget=args.memory_budget)
    out = print
    out(f"model {m.name!r}: {len(m.latents)} latents, {len(m.observed)} observed")
    out("plates:")
    for p in m.plates.values():
        out(f"  {'/'.join(m.chain(p.name))}  size {p.size}")
    out("nodes:")
    q = prog.initial_proposal(K=64).describe()
    for n in m.nodes:
        where = "/".join(m.chain(n.plate)) or "(global)"
        args_s = ", ".join(f"{a}={v!r}" if not isinstance(v, str) else f"{a}={v}" for a, v in n.args.items())
        extra = f"  Q: {q[n.name]}" if n.kind == "latent" else ""
        out(f"  {n.kind:8s} {n.name} ~ {n.dist}({args_s})  in {where}{extra}")
    out(f"einsum plan at K={K} ({args.optimize}):")
    for comp in prog.plan.describe():
        out(f"  [{comp['plate']}] factors {', '.join(comp['factors'])}; sums out {', '.join(comp['sums_out']) or '-'}")
        out(f"      {comp['equation']}   FLOPs naive {comp['naive_flops']:.3g}, optimised {comp['optimized_flops']:.3g}, "
            f"largest intermediate {comp['largest_intermediate']:.3g} elements")
        for i, st in enumerate(comp["steps"]):
            out(f"      step {i + 1}: {st['equation']}  sums out {', '.join(st['sums_out']) or '-'} -> "
                f"{st['output_elements']:.3g} elements" +
                (f", summed over {st['summed_over']!r} as it goes" if st["summed_over"] else ""))
        if "chain" in comp:
            c = comp["chain"]
            out(f"      then the {c['description']} ({c['depth']} sequential steps)")
    out(f"estimated peak memory at K={K} ({str(prog.dtype).replace('torch.', '')}, with gradients): "
        f"{human_bytes(prog.memory_estimate())}; budget {human_bytes(prog.memory_budget)}")
    if prog.split is not None:
        plate, chunk = prog.split
        out(f"  over budget: plate {plate!r} runs in chunks of {chunk} elements, peak about "
            f"{human_bytes(prog.memory_estimate({plate: chunk}))}")
    for group in prog.suggest_groups():
        out(f"  suggestion: {', '.join(group)} are all parents of one factor; giving them one K-dim "
            f"(\"group\": \"NAME\" on each) shrinks it from K^{len(group)} to K per plate element")
    return 0


def fit(args) -> int:
    from .fit import DEFAULTS, Fitter
    from .model import Model
    if args.out:
        check_out(args.out, args.model)
    m = Model.load(args.model)
    test = None
    if args.test_data:
        test = _load_data(args.test_data)
    iters = args.iters if args.iters is not None else (0 if args.method == "is" else DEFAULTS["max_iters"])
    qem = {k: v for k, v in (("power", args.qem_power), ("offset", args.qem_offset)) if v is not None}
    f = Fitter(m, args.method, K=args.K, seed=args.seed, lr=args.lr, device=args.device, dtype=args.dtype,
               qem=qem, memory_budget=args.memory_budget)
    bar = _Progress(iters, enabled=not args.quiet and sys.stderr.isatty())
    step = None
    for step in f.run(iters, until_converged=True):
        bar.update(step)
    bar.close()
    r = f.result(test_data=test, mcse_target=args.mcse_target, max_samples=args.max_samples)
    if args.out:
        r.save(args.out)
    fitted = f"{f.t} iterations ({'converged' if step is not None and step.converged else 'not converged'}), " \
        if args.method != "is" else ""
    print(f"{args.method} K={r.K}: {fitted}{r.n_samples} pooled samples; log P(data) {r.log_marginal:.4f} "
          f"(MCSE {r.log_marginal_mcse:.3f})"
          + (f", predictive log-likelihood {r.predictive_log_likelihood:.4f} (MCSE "
             f"{r.prediction.log_likelihood_mcse:.3f})" if test else "")
          + (f" -> {args.out}" if args.out else ""))
    for line in summary_lines(r):
        print(line)
    for w in r.warnings + (r.prediction.warnings if test else []):
        print(f"warning ({w['kind']}): {w['message']}")
    return 0


def predict(args) -> int:
    from .model import Model
    from .result import Result
    if args.out:
        check_out(args.out, args.model)
    m = Model.load(args.model)
    r = Result.load(m, args.result, device=args.device, memory_budget=args.memory_budget)
    data = _load_data(args.data, "--data") if args.data else None
    p = r.predict(data, draws=args.draws, seed=args.seed, particles=args.particles, memory_budget=args.memory_budget)
    if args.out:
        r.save(args.out)
    grew = "; new elements: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in p.new.items()) if p.new else ""
    print(f"predictive log-likelihood {p.log_likelihood:.4f} (MCSE {p.log_likelihood_mcse:.3f}) of "
          f"{p.n_observed} observed values{'' if args.data else ' (the training data)'}; {p.draws} posterior draws "
          f"x {p.particles} particles{grew}" + (f" -> {args.out}" if args.out else ""))
    for line in prediction_lines(p):
        print(line)
    for w in r.warnings + p.warnings:
        print(f"warning ({w['kind']}): {w['message']}")
    return 0


def prediction_lines(p, rows_per_node: int = 12) -> list[str]:
    """The posterior predictive mean and sd of each observed node's entries, and whether observed."""
    out = [f"{'':14s} {'mean':>10s} {'sd':>10s} {'observed':>10s}"]
    for y, x in p.posterior_predictive.items():
        x = x.astype(np.float64)
        mean, sd, obs = x.mean(0), x.std(0), np.asarray(p.observed[y], dtype=np.float64)
        idx = list(np.ndindex(*mean.shape)) if mean.shape else [()]
        for i in idx[:rows_per_node]:
            label = y + (f"[{','.join(map(str, i))}]" if i else "")
            seen = "-" if np.isnan(obs[i]) else f"{obs[i]:.4g}"
            out.append(f"{label:14s} {mean[i]:10.4g} {sd[i]:10.4g} {seen:>10s}")
        if len(idx) > rows_per_node:
            out.append(f"{'':14s} ... {len(idx) - rows_per_node} more entries of {y} (all in --out)")
    return out


def summary_lines(r, rows_per_latent: int = 12) -> list[str]:
    """The estimates as a table like az.summary's: mean, sd, their Monte Carlo standard
    errors, the pooled ESS and a sample's ESS per particle (ESS/K)."""
    import numpy as np
    head = f"{'':14s} {'mean':>10s} {'sd':>10s} {'mcse_mean':>10s} {'mcse_sd':>9s} {'ess':>8s} {'ess/K':>6s}"
    out = [head]
    for name, d in r.latents.items():
        shape = d["mean"].shape
        n_plates = d["ess"].ndim
        idx = list(np.ndindex(*shape)) if shape else [()]
        for i in idx[:rows_per_latent]:
            label = name + (f"[{','.join(map(str, i))}]" if i else "")
            out.append(f"{label:14s} {d['mean'][i]:10.4g} {d['sd'][i]:10.4g} {d['mcse_mean'][i]:10.2g} "
                       f"{d['mcse_sd'][i]:9.2g} {d['ess'][i[:n_plates]]:8.1f} "
                       f"{d['ess_per_sample'][i[:n_plates]] / r.K:6.2f}")
        if len(idx) > rows_per_latent:
            out.append(f"{'':14s} ... {len(idx) - rows_per_latent} more elements of {name} (all in --out)")
    return out


def _plugins(sub) -> None:
    """Subcommands other packages register (entry point group `kn.commands`)."""
    from importlib.metadata import entry_points
    for ep in sorted(entry_points(group=COMMANDS), key=lambda e: e.name):
        try:
            ep.load()(sub)
        except Exception as e:  # a broken plugin must not take `kn info`/`kn fit` with it
            p = sub.add_parser(ep.name, help=f"(unavailable: {type(e).__name__}: {e})")
            p.set_defaults(func=lambda args, e=e: _unavailable(ep.name, e))


def _unavailable(name, e) -> int:
    print(f"kn: error: the {name!r} command could not be loaded ({type(e).__name__}: {e})", file=sys.stderr)
    return 2


def _K(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"K must be a positive integer or auto, got {text!r}") from None


# ---- argument checks (the workbench's serve uses check_port and check_address too) --------------
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_port(value) -> int:
    """A TCP port number, 0 (any free port) to 65535."""
    try:
        port = int(str(value), 10)
    except ValueError:
        port = None
    if port is None or not 0 <= port <= 65535:
        raise ModelError(f"--port must be a whole number from 0 to 65535, got {str(value)[:40]!r}")
    return port


def check_address(value) -> str:
    """An IP address or a host name to listen on (not looked up here)."""
    text = str(value)
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if len(text) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels) or labels[-1].isdigit():
        raise ModelError(f"--address must be an IP address or a host name, like 127.0.0.1 or localhost; "
                         f"got {text[:60]!r}")
    return text


def check_out(out: str, model: str | None = None) -> None:
    """Before any work: --out names a file that can be written in a folder that exists,
    and not the model file itself."""
    p = Path(out)
    if p.exists() or p.is_symlink():
        st = p.stat() if p.exists() else None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise ModelError(f"--out: {out!r} is a folder; name a file in it")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise ModelError(f"--out: {out!r} is not a regular file")
        if model is not None and Path(model).exists() and st is not None and os.path.samefile(p, model):
            raise ModelError(f"--out: {out!r} is the model file; the result would overwrite the model")
    folder = p.parent
    if not folder.is_dir():
        raise ModelError(f"--out: the folder {str(folder)!r} does not exist")
    try:   # os.access says yes to root on a read-only file system: try it
        fd, tmp = tempfile.mkstemp(prefix=".kn-check.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ModelError(f"--out: cannot write in {str(folder)!r} ({e.strerror})") from None


def _memory_budget(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v >= 1):
        raise argparse.ArgumentTypeError(f"must be a positive number of bytes, got {text[:40]!r}")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text[:40]!r}")
    return v


def _load_data(path: str, flag: str = "--test-data") -> dict:
    from .model import _data_array
    if path.endswith(".npz"):
        arrays = load_npz(path, DATA_LIMIT, flag)
    else:
        try:
            doc = json.loads(read_bounded(path, MODEL_LIMIT, flag).decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise ModelError(f"{flag}: {path!r} is not a JSON document ({str(e)[:100]})") from None
        arrays = doc.get("data", doc) if isinstance(doc, dict) else None
        if not isinstance(arrays, dict):
            raise ModelError(f"{flag}: {path!r} must hold an object of arrays by name (or a model's 'data')")
    out = {}
    for k, v in arrays.items():
        arr = _data_array(v, f"{flag} {k!r}")
        out[k] = arr.astype(float) if arr.dtype.kind == "b" else arr
    return out


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled

    def update(self, step) -> None:
        if not self.enabled:
            return
        done = int(30 * step.iteration / max(self.total, 1))
        sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] {step.iteration}/{self.total}  "
                         f"elbo {step.elbo:.3f}  {step.seconds * 1000:.1f} ms/it")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="kn", description="Massively parallel importance weighting workbench")
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("model", help="a kn-model/1 JSON file")
        p.add_argument("--K", type=_K, default="auto",
                       help="particles per latent (default auto: 30, or 10 or 3 where a K=30 iteration would "
                            "need over 1 GB)")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
        p.add_argument("--dtype", default=None, choices=["float32", "float64"],
                       help="default: the model file's \"dtype\", else float32")
        p.add_argument("--memory-budget", type=_memory_budget, default=None,
                       help="bytes a run may use (default: half the free device memory); above it a plate "
                            "is split into chunks")

    p = sub.add_parser("info", help="plates, latents, the einsum plan and peak memory")
    common(p)
    p.add_argument("--optimize", default="greedy", help="opt_einsum path search: greedy, random-greedy, auto-hq")
    p.set_defaults(func=info)
    p = sub.add_parser("fit", help="run IS, QEM, RWS, VI or global RWS and write a kn-result/1 document")
    common(p)
    p.add_argument("--method", default="qem", choices=["is", "qem", "rws", "vi", "global"])
    p.add_argument("--iters", type=int, default=None,
                   help="at most this many iterations; fitting stops earlier once the ELBO has converged "
                        "(default 1000; 0 for is)")
    p.add_argument("--mcse-target", type=float, default=0.1,
                   help="pool final samples until every mean's Monte Carlo error is below this many posterior sds")
    p.add_argument("--max-samples", type=int, default=64, help="... or this many samples are pooled")
    p.add_argument("--qem-power", type=float, default=None, help="QEM's EMA weight is (t + offset)^-power (0.6)")
    p.add_argument("--qem-offset", type=float, default=None, help="(2)")
    p.add_argument("--lr", type=float, default=0.03, help="Adam learning rate for rws, vi, global")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result document here")
    p.add_argument("--test-data", help="held-out observations (.npz or JSON) for predictive log-likelihood")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=fit)
    p = sub.add_parser("predict", help="posterior predictive draws and the predictive log-likelihood of new data "
                                       "(plates may be larger than in training) from a kn-result/1 file")
    p.add_argument("model", help="the kn-model/1 JSON file the result was fitted to")
    p.add_argument("result", help="its kn-result/1 file (kn fit --out): Q and parameters are read, not refitted")
    p.add_argument("--data", help="new observations and covariates (.npz or JSON); default: the training data")
    p.add_argument("--draws", type=_positive, default=1000, help="pooled posterior draws (default 1000)")
    p.add_argument("--particles", type=_positive, default=100,
                   help="prior particles per new latent and posterior draw (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default: the result's, where available)")
    p.add_argument("--memory-budget", type=_memory_budget, default=None, help="bytes a run may use")
    p.add_argument("--out", help="write the result document with the prediction added here")
    p.set_defaults(func=predict)
    from .sweep import add_subcommand as add_sweep
    add_sweep(sub)
    _plugins(sub)
    args = ap.parse_args(argv)
    tune_allocator()   # before anything is allocated (the library also does it on first use): engine/alloc.py
    try:
        return args.func(args)
    except ModelError as e:
        print(f"kn: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as e:   # a file or a socket the checks above could not foresee
        print(f"kn: error: {_one_line(e.strerror or e)}" + (f": {e.filename}" if e.filename else ""),
              file=sys.stderr)
        return 1
    except Exception as e:   # a bug: one line for the user, the traceback on request
        if os.environ.get("KN_DEBUG"):
            raise
        print(f"kn: internal error: {type(e).__name__}: {_one_line(e)[:300]} (KN_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 1


def _one_line(e) -> str:
    return " ".join(str(e).split())


if __name__ == "__main__":
    sys.exit(main())
