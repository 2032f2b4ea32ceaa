"""Timing, memory and reporting helpers shared by the benchmarks.

Timing: every contender is warmed up, then the contenders are run round-robin (one call
each per round, the order rotated every round) so that a noisy neighbour slows them all
alike, and each reports the median over rounds. A ratio is the ratio of two medians from
the same run, on the same machine.

Memory: peak resident memory of one configuration, measured in a fresh subprocess (CPU
allocations are invisible to tracemalloc): after setup and warm-up the process releases
free heap (malloc_trim), resets its RSS high-water mark (/proc/self/clear_refs, falling
back to ru_maxrss), runs the measured iterations and reports VmHWM. On CUDA it is
torch.cuda.max_memory_allocated over the measured iterations.
"""
from __future__ import annotations

import ctypes
import datetime as _dt
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


# ---- devices and the machine ---------------------------------------------------------------
def resolve_device(name: str) -> torch.device | None:
    """The torch device for `name` (cpu, cuda, auto), or None if it is not available here."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None
    return dev


def sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | None) -> dict:
    try:
        import psutil
        physical = psutil.cpu_count(logical=False)
        mem = psutil.virtual_memory().total
    except ImportError:   # pragma: no cover - psutil comes with the workbench's dependencies
        physical, mem = None, None
    info = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "memory_gib": round(mem / 2 ** 30, 1) if mem else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "device": str(device) if device is not None else "unavailable",
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    import engine
    info["engine"] = str(Path(engine.__file__).resolve().parent)
    info["thp_mem_alloc"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "(unset)")
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


# ---- timing -------------------------------------------------------------------------------
def time_interleaved(contenders: dict, warmup: int, repeats: int, device=None, calls: int = 5) -> dict[str, dict]:
    """Seconds per call of each contender (a zero-argument callable) over `repeats` rounds:
    {name: {"wall": [...], "cpu": [...]}}; cpu is this process's CPU time (all threads),
    which a busy neighbour disturbs less than the wall clock. Each round times `calls`
    consecutive calls of each contender, as a fitting loop makes them (one call squeezed
    between two of a contender that churns through memory measures cold caches: the
    engine's VI step took 2.6 ms so against Pyro's, 1.4 ms in a loop of its own); the
    contenders' order rotates from round to round."""
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    sync(device)
    out = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            sync(device)
            c, t = time.process_time(), time.perf_counter()
            for _ in range(calls):
                contenders[n]()
            sync(device)
            out[n]["wall"].append((time.perf_counter() - t) / calls)
            out[n]["cpu"].append((time.process_time() - c) / calls)
    return out


def median_ms(ts: list[float]) -> float:
    return 1e3 * statistics.median(ts)


def spread_ms(ts: list[float]) -> float | None:
    """Half the interquartile range, in ms (None, shown as "-", for fewer than 4 samples:
    too few to say, where 0 would claim an exact figure)."""
    if len(ts) < 4:
        return None
    q = statistics.quantiles(ts, n=4)
    return 1e3 * (q[2] - q[0]) / 2


def loglog_slope(xs, ys) -> float:
    """Least-squares slope of log y against log x."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    sxx = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sxx if sxx else float("nan")


# ---- memory -------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory (bytes) of the code run between start() and stop(), in this process."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.method = None

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.base = (_status_kib("VmRSS") or 0) * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM after clear_refs (RSS high-water)"
        except OSError:
            self.method = "ru_maxrss (RSS high-water since process start)"

    def stop(self) -> dict:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method.startswith("VmHWM"):
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"peak_bytes": peak, "baseline_bytes": self.base, "iteration_bytes": max(0, peak - self.base),
                "memory_method": self.method}


def run_isolated(kind: str, config: dict, timeout: float = 900) -> dict:
    """Run benchmarks.isolated's `kind` with `config` in a fresh Python process."""
    cmd = [sys.executable, "-m", "benchmarks.isolated", kind, json.dumps(config)]
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    # after any PYTHONPATH given, so that PYTHONPATH=/other/checkout benchmarks that engine
    env["PYTHONPATH"] = (env["PYTHONPATH"] + os.pathsep if env.get("PYTHONPATH") else "") + root
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit status {p.returncode}"]
        if p.returncode in (-9, 137):
            tail = ["killed (out of memory?)"]
        return {"error": tail[0][:300]}
    return json.loads(lines[-1])


def mib(n: float | None) -> float | None:
    return None if n is None else round(n / 2 ** 20, 1)


# ---- reporting ----------------------------------------------------------------------------
def write_results(doc: dict, out_dir: Path = RESULTS, stem: str = "latest") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{stem}.json"
    md = out_dir / f"{stem}.md"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
    tmp.replace(js)
    md.write_text(to_markdown(doc))
    return js, md


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        a = abs(v)
        if a == 0:
            return "0"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01:
            return f"{v:.2f}"
        return f"{v:.2e}"
    return str(v).replace("|", "\\|")


def to_markdown(doc: dict) -> str:
    m = doc["machine"]
    lines = ["# kn-workbench benchmarks", ""]
    lines.append(f"Run {m['date']} with `{doc['command']}`.")
    lines.append("")
    lines.append("| machine | |")
    lines.append("|---|---|")
    for k in ("cpu", "logical_cores", "physical_cores", "memory_gib", "gpu", "device", "torch", "torch_threads",
              "omp_wait_policy", "engine",
              "python", "os", "load_average_1min"):
        if k in m:
            lines.append(f"| {k.replace('_', ' ')} | {_fmt(m[k])} |")
    lines.append("")
    lines.append("Times are medians over repeated runs after warm-up, in milliseconds per iteration; "
                 "contenders in one table ran in one process, in alternating blocks of 5 consecutive "
                 "iterations each. Ratios are of medians.")
    for sec in doc["sections"]:
        lines += ["", f"## {sec['title']}", ""]
        if sec.get("description"):
            lines += [sec["description"], ""]
        if sec.get("skipped"):
            lines += [f"**Skipped:** {sec['skipped']}", ""]
            continue
        cols = sec["columns"]
        lines.append("| " + " | ".join(c[1] for c in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for row in sec["rows"]:
            lines.append("| " + " | ".join(_fmt(row.get(c[0])) for c in cols) + " |")
        for note in sec.get("notes", []):
            lines += ["", note]
        if sec.get("target"):
            lines += ["", f"Target: {sec['target']}. **{sec.get('verdict', '')}**"]
    lines.append("")
    return "\n".join(lines)
