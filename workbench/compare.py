"""Comparing methods over a sweep (engine.sweep): figures from a kn-sweep/1 document, and
the Compare tab, which runs a sweep of the model on screen and fills in as cells finish.

    figures(sweep) -> Bokeh layout     per model: ESS/K and log marginal against K (every
                                       method, MP and global, on one figure; the band is
                                       the range over seeds, the line their mean); ELBO
                                       against iterations and against wall time per method
    CompareTab(get_model_document)     a Panel component: pn.Tabs(..., ("Compare", tab))

This module imports the engine, Panel/Bokeh and two leaf modules of the workbench (compat,
exact), never workbench.app: notebooks use the figures without the app, and the app mounts
the tab wherever it likes.
"""
from __future__ import annotations

import html
import io
import json
import math
import queue
import threading
import traceback
import warnings
from pathlib import Path

import numpy as np

from engine import ModelError
from engine import sweep as SW
from engine.fit import METHODS

COLOURS = {"is": "#1f77b4", "qem": "#d62728", "rws": "#2ca02c", "vi": "#ff7f0e", "global": "#9467bd"}
LABELS = {"is": "MP IS (prior)", "qem": "QEM", "rws": "MP RWS", "vi": "MP VI", "global": "global RWS"}


# ---- the numbers behind the figures -----------------------------------------------------------
def rows_of(sweep) -> list[dict]:
    """The rows of a kn-sweep/1 document, a path to one, or a list of rows."""
    if isinstance(sweep, (str, Path)):
        sweep = SW.load(sweep)
    return list(sweep["rows"] if isinstance(sweep, dict) else sweep)


def ess_ratio(row: dict) -> float:
    """ESS/K of the row's worst latent: the smallest, over latents, of the mean over its
    plate elements of ESS / (particles it was pooled over)."""
    out = math.inf
    for name, e in row["ess"].items():
        n = row["latents"].get(name, {}).get("n_samples", 1)
        out = min(out, e["mean"] / (row["K"] * n))
    return out if math.isfinite(out) else float("nan")


def _band(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if not a.size:
        return (float("nan"),) * 3
    return float(a.mean()), float(a.min()), float(a.max())


def against_K(rows, model: str, quantity) -> dict:
    """{method: {"K", "mean", "lo", "hi", "seeds"}} over the model's finished rows: at each K
    the mean over seeds of quantity(row) and the range (lo, hi) over seeds."""
    out = {}
    for method in METHODS:
        mine = [r for r in rows if r["model"] == model and r["method"] == method and r.get("status") == "ok"]
        Ks = sorted({r["K"] for r in mine})
        if not Ks:
            continue
        cols = {"K": Ks, "mean": [], "lo": [], "hi": [], "seeds": []}
        for K in Ks:
            vals = [quantity(r) for r in mine if r["K"] == K]
            mean, lo, hi = _band(vals)
            cols["mean"].append(mean), cols["lo"].append(lo), cols["hi"].append(hi), cols["seeds"].append(len(vals))
        out[method] = cols
    return out


def curves(rows, model: str, K: int | None = None) -> dict:
    """{method: {"K", "iteration", "time", "mean", "lo", "hi"}}: each method's ELBO per
    iteration at K (default: the largest K it has), mean and range over seeds; `time` is
    the mean over seeds of the cumulative seconds."""
    out = {}
    for method in METHODS:
        mine = [r for r in rows if r["model"] == model and r["method"] == method and r.get("status") == "ok"]
        if not mine:
            continue
        k = K if K is not None else max(r["K"] for r in mine)
        runs = [r["history"] for r in mine if r["K"] == k]
        if not runs:
            continue
        n = max(len(h["elbo"]) for h in runs)
        pad = lambda xs: np.array(list(xs) + [np.nan] * (n - len(xs)), dtype=float)
        elbo = np.vstack([pad(h["elbo"]) for h in runs])
        time = np.vstack([pad(np.cumsum(h["seconds"])) for h in runs])
        with warnings.catch_warnings():   # an iteration no seed reached is all-NaN: NaN is the answer
            warnings.simplefilter("ignore", RuntimeWarning)
            out[method] = {"K": k, "iteration": list(range(1, n + 1)), "time": np.nanmean(time, 0).tolist(),
                           "mean": np.nanmean(elbo, 0).tolist(), "lo": np.nanmin(elbo, 0).tolist(),
                           "hi": np.nanmax(elbo, 0).tolist()}
    return out


# ---- figures ----------------------------------------------------------------------------------
def _figure(title, x_label, y_label, log_x=False):
    from bokeh.plotting import figure
    return figure(height=300, sizing_mode="stretch_width", title=title, x_axis_label=x_label, y_axis_label=y_label,
                  x_axis_type="log" if log_x else "linear", toolbar_location="above",
                  tools="pan,wheel_zoom,box_zoom,reset,save,hover")


def _draw(fig, method: str, x, cols, name: str, markers=True):
    """The mean as a line (global dashed), the range over seeds as a band; the source and
    the line are named name:method (name says the model and the figure)."""
    from bokeh.models import ColumnDataSource
    src = ColumnDataSource({"x": list(x), "mean": cols["mean"], "lo": cols["lo"], "hi": cols["hi"],
                            **({"seeds": cols["seeds"]} if "seeds" in cols else {})}, name=f"{name}:{method}")
    colour, label = COLOURS.get(method, "#555555"), LABELS.get(method, method)
    fig.varea(x="x", y1="lo", y2="hi", source=src, fill_color=colour, fill_alpha=0.18, legend_label=label)
    fig.line(x="x", y="mean", source=src, color=colour, line_width=2, legend_label=label, name=f"{name}:{method}",
             line_dash="dashed" if method == "global" else "solid")
    if markers:
        fig.scatter(x="x", y="mean", source=src, color=colour, size=6, legend_label=label)


def _finish(fig):
    """The legend beside the plot, where it hides no band; a click hides a method."""
    if fig.renderers:
        legend = fig.legend[0]
        legend.click_policy = "hide"
        fig.add_layout(legend, "right")
    return fig


def _clip_low(fig, series: list[list[float]]) -> None:
    """Start the y axis at the 5th percentile: early iterations' ELBO can be far below the rest."""
    vals = np.asarray([v for s in series for v in s], dtype=float)
    vals = vals[np.isfinite(vals)]
    if vals.size:
        lo, hi = np.percentile(vals, 5), vals.max()
        fig.y_range.start = float(lo - 0.05 * (hi - lo))


def model_figures(rows, model: str, K: int | None = None, reference: float | None = None) -> list:
    """The four figures for one model: [ESS/K vs K, log marginal vs K, ELBO vs iteration, ELBO vs time]."""
    from bokeh.models import Span
    ess = _figure(f"{model}: ESS/K of the worst latent against K", "K (particles per latent)",
                  "ESS / K (band: range over seeds)", log_x=True)
    for method, cols in against_K(rows, model, ess_ratio).items():
        _draw(ess, method, cols["K"], cols, f"{model}/ess")
    ess.y_range.start = 0
    lm = _figure(f"{model}: log marginal likelihood estimate against K", "K (particles per latent)",
                 "log P estimate (band: range over seeds)", log_x=True)
    for method, cols in against_K(rows, model, lambda r: r["log_marginal"]).items():
        _draw(lm, method, cols["K"], cols, f"{model}/log_marginal")
    if reference is not None and math.isfinite(reference):
        lm.add_layout(Span(location=float(reference), dimension="width", line_dash="dotted", line_color="black",
                           line_width=1.5, name="reference"))
        lm.title.text += f" (dotted: exact {reference:.4g})"
    cs = curves(rows, model, K)
    ks = sorted({c["K"] for c in cs.values()})
    at = f"K = {ks[0]}" if len(ks) == 1 else "each method's largest K"
    it = _figure(f"{model}: ELBO against iterations ({at})", "iteration", "ELBO (band: range over seeds)")
    wall = _figure(f"{model}: ELBO against wall time ({at})", "seconds (mean over seeds)", "ELBO")
    for method, c in cs.items():
        _draw(it, method, c["iteration"], c, f"{model}/elbo_iteration", markers=False)
        _draw(wall, method, c["time"], c, f"{model}/elbo_time", markers=False)
    for f in (it, wall):
        _clip_low(f, [c["mean"] for c in cs.values()])
    return [_finish(ess), _finish(lm), _finish(it), _finish(wall)]


def figures(sweep, K: int | None = None, reference: dict | None = None):
    """Bokeh layout of every model in the sweep (a kn-sweep/1 document, its path, or rows):
    a note on what is drawn and which cells failed, then per model ESS/K and log marginal
    against K, ELBO against iterations and wall time. reference: {model: exact log P(data)}."""
    from bokeh.layouts import column, gridplot
    from bokeh.models import Div
    rows = rows_of(sweep)
    models = list(dict.fromkeys(r["model"] for r in rows))
    parts = [Div(text=note_html(rows), sizing_mode="stretch_width")]
    for m in models:
        figs = model_figures(rows, m, K, (reference or {}).get(m))
        parts.append(gridplot([figs[:2], figs[2:]], sizing_mode="stretch_width", toolbar_location="right"))
    return column(*parts, sizing_mode="stretch_width")


def note_html(rows) -> str:
    ok = [r for r in rows if r.get("status") == "ok"]
    bad = [r for r in rows if r.get("status") != "ok"]
    warned = sum(1 for r in ok if r.get("warnings"))
    text = (f"{len(ok)} cells finished" + (f", {warned} with warnings" if warned else "")
            + (f", {len(bad)} failed" if bad else "") + ". Lines: mean over seeds; bands: range over seeds.")
    items = "".join("<li>" + html.escape(f"{r['model']} {r['method']} K={r['K']} seed={r['seed']}: {r.get('error')}")
                    + "</li>" for r in bad[:20])
    more = f"<li>… and {len(bad) - 20} more</li>" if len(bad) > 20 else ""
    return f"<p>{html.escape(text)}</p>" + (f"<ul class='sweep-failed'>{items}{more}</ul>" if bad else "")


def _round(x, digits: int):
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def table(rows):
    """One line per cell, for people: the last iteration's ELBO, the pooled log marginal (with
    its Monte Carlo error) and ESS/K to 0.01, times to 0.1 ms
    (how many of those digits mean anything, the spread over seeds in the figures says)."""
    import pandas as pd
    out = []
    for r in rows:
        ok = r.get("status") == "ok"
        spi = r.get("seconds_per_iter") if ok else None
        out.append({"model": r["model"], "method": r["method"], "K": r["K"], "seed": r["seed"],
                    "status": r.get("status"),
                    "final ELBO": _round(r.get("final_elbo"), 2) if ok else None,
                    "log marginal": _round(r.get("log_marginal"), 2) if ok else None,
                    "± MCSE": _round(r.get("log_marginal_mcse"), 3) if ok else None,
                    "ESS/K (worst)": _round(ess_ratio(r), 2) if ok else None,
                    "ms / iteration": _round(1e3 * spi, 1) if spi else None,
                    "warnings": "; ".join(w.get("message", w.get("kind", "")) for w in r.get("warnings") or []),
                    "error": r.get("error", "")})
    return pd.DataFrame(out)


# ---- the shared embedded cluster ----------------------------------------------------------------
_cluster = {"client": None, "cluster": None}
_cluster_lock = threading.Lock()


def shared_client(n_workers: int | None = None):
    """The process's embedded LocalCluster (one single-threaded worker per core), started at
    first use and shared by every session: sweeps from several tabs queue on the same cores."""
    from distributed import Client
    with _cluster_lock:
        if _cluster["client"] is None:
            _cluster["cluster"] = SW.local_cluster(n_workers)
            _cluster["client"] = Client(_cluster["cluster"])
            _cluster["client"].wait_for_workers(len(_cluster["cluster"].workers))
        return _cluster["client"]


def close_shared_cluster() -> None:
    with _cluster_lock:
        if _cluster["client"] is not None:
            _cluster["client"].close()
            _cluster["cluster"].close()
        _cluster["client"] = _cluster["cluster"] = None


# ---- the Compare tab -------------------------------------------------------------------------------
class CompareTab:
    """A sweep of the model on screen: methods, K values, seeds and iterations to choose,
    Run/Stop, progress with ETA, the figures and a table filling in as cells finish, and
    the sweep's kn-sweep/1 document to download.

    get_model_document: a callable returning the current model's kn-model/1 dict (the app's
    `lambda: workbench.model.to_dict()`), read when Run is pressed. scheduler: None for the
    process's shared embedded cluster (n_workers), else a Dask address or Client. device: where
    the cells run, default cpu on the embedded cluster (one worker per core) and auto on a
    scheduler (dask-cuda workers take the GPU).
    Mount it as a Panel object: `tabs.append(("Compare", CompareTab(get_doc)))`."""

    def __init__(self, get_model_document, scheduler=None, n_workers: int | None = None, device: str | None = None,
                 methods=("qem", "rws", "is"), Ks="3,10,30", seeds="0,1,2", iters: int = 100):
        import panel as pn
        from .compat import W
        self.get_model_document, self.scheduler, self.n_workers = get_model_document, scheduler, n_workers
        self.device = device or ("cpu" if scheduler is None else "auto")
        self.rows: list[dict] = []
        self.doc: dict | None = None
        self.reference: float | None = None
        self.label = "model"
        self.q: queue.Queue = queue.Queue()
        self.stop_event = threading.Event()
        self.worker: threading.Thread | None = None
        self.callback = None
        self.methods = W(pn.widgets.MultiChoice, label="Methods", options=list(METHODS), value=list(methods),
                         width=260)
        self.Ks = W(pn.widgets.TextInput, label="K (comma-separated)", value=Ks, width=160)
        self.seeds = W(pn.widgets.TextInput, label="Seeds", value=seeds, width=110)
        self.iters = W(pn.widgets.IntInput, label="Iterations", value=iters, start=1, end=100000, width=100)
        self.lr = W(pn.widgets.FloatInput, label="Learning rate", value=0.03, start=1e-6, step=0.01, width=100)
        self.run_btn = W(pn.widgets.Button, label="▶ Run sweep", button_type="primary", width=120,
                         margin=(22, 5, 5, 5))
        self.stop_btn = W(pn.widgets.Button, label="■ Stop", button_type="danger", width=80, margin=(22, 5, 5, 5),
                          disabled=True)
        self.run_btn.on_click(lambda e: self.start())
        self.stop_btn.on_click(lambda e: self.stop())
        self.progress = pn.indicators.Progress(value=0, max=1, bar_color="primary", width=300, margin=(14, 10, 2, 10))
        self.status = pn.pane.Markdown("Choose methods, K and seeds, then run: every cell is a fit on a worker of "
                                       "an embedded Dask cluster; the figures fill in as cells finish.",
                                       css_classes=["sweep-status"])
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, sizing_mode="stretch_width")
        self.figures = pn.pane.Bokeh(None, sizing_mode="stretch_width")
        self.table = pn.pane.DataFrame(None, index=False, sizing_mode="stretch_width", max_height=320,
                                       styles={"overflow": "auto"})
        self.download = W(pn.widgets.FileDownload, callback=self._download, filename="sweep.json",
                          label="Download sweep.json", button_type="light", width=180, margin=(22, 5, 5, 5))
        from .tabs import wrap   # a row that wraps: the tab fits a notebook's output area
        controls = wrap(self.methods, self.Ks, self.seeds, self.iters, self.lr, self.run_btn, self.stop_btn,
                        self.download, pn.Column(self.progress, self.status, width=420, margin=0),
                        styles={"background": "#f6f8fa", "border-radius": "6px"})
        self.layout = pn.Column(controls, self.message, self.figures, self.table, sizing_mode="stretch_width")

    def __panel__(self):
        return self.layout

    def panel(self):
        return self.layout

    def _say(self, text: str, kind: str = "danger") -> None:
        self.message.object, self.message.alert_type, self.message.visible = html.escape(text), kind, True

    # ---- running ----
    def start(self) -> bool:
        """Start a sweep of the current model (in a worker thread); False, with a message, if it cannot."""
        import panel as pn
        from engine import Model
        from .exact import log_evidence
        if self.worker is not None and self.worker.is_alive():
            self._say("A sweep is already running; stop it first.", "warning")
            return False
        try:
            doc = self.get_model_document()
            model = Model.from_dict(doc)
            model.validate()
            Ks, seeds = SW.parse_list(self.Ks.value, "K"), SW.parse_list(self.seeds.value, "seeds")
            cells = SW.grid([model.name or "model"], list(self.methods.value), Ks, seeds)
        except ModelError as e:
            self._say(f"Cannot run the sweep: {e}")
            return False
        self.message.visible = False
        self.label = model.name or "model"
        self.reference = log_evidence(model)
        self.rows, self.doc = [], None
        self.progress.max, self.progress.value = len(cells), 0
        self.status.object = html.escape(f"Starting {len(cells)} cells…")
        self.run_btn.disabled, self.stop_btn.disabled = True, False
        self.stop_event = threading.Event()
        self.q = queue.Queue()
        args = ({self.label: doc}, list(self.methods.value), Ks, seeds, int(self.iters.value), float(self.lr.value))
        self.worker = threading.Thread(target=self._work, args=(*args, self.q, self.stop_event), daemon=True,
                                       name="kn-sweep")
        self.worker.start()
        if pn.state.curdoc is not None:            # a server session, or a notebook comm event
            self.callback = pn.state.add_periodic_callback(self.poll, period=300, start=True)
        elif _in_ipython():                          # start() called from a notebook cell
            threading.Thread(target=self._poll_loop, daemon=True, name="kn-sweep-poll").start()
        return True                                  # else (a script, a test): call wait() or poll()

    def _work(self, models, methods, Ks, seeds, iters, lr, q, stop):
        try:
            client = self.scheduler if self.scheduler is not None else shared_client(self.n_workers)
            doc = SW.run_sweep(models, methods, Ks, seeds, iters=iters, lr=lr, device=self.device, scheduler=client,
                               progress=lambda event, info: q.put((event, info)), stop=stop)
            q.put(("done", doc))
        except ModelError as e:
            q.put(("error", str(e)))
        except Exception as e:   # anything else: readable, never a dead tab
            traceback.print_exc()
            q.put(("error", f"The sweep failed: {type(e).__name__}: {e}"))
        finally:
            q.put(("end", None))

    def stop(self) -> None:
        self.stop_event.set()
        self.status.object = "Stopping: cells not yet finished are cancelled…"

    def _poll_loop(self):
        import time
        while not self.poll():
            time.sleep(0.3)

    def poll(self) -> bool:
        """Drain the sweep's events into the views (on the UI's event loop); True when it has ended."""
        new, ended, info = False, False, None
        while True:
            try:
                kind, item = self.q.get_nowait()
            except queue.Empty:
                break
            if kind == "start":
                self.status.object = html.escape(f"Running {item['total']} cells on {item['cluster']}…")
            elif kind == "row":
                self.rows.append(item["row"])
                info, new = item, True
            elif kind == "done":
                self.doc = item
                self.rows = list(item["rows"])
                new = True
            elif kind == "error":
                self._say(f"Sweep stopped: {item}")
            elif kind == "end":
                ended = True
        if info is not None:
            self.progress.value = info["done"]
            r = info["row"]
            self.status.object = html.escape(
                f"{info['done']}/{info['total']} cells · last: {r['method']} K={r['K']} seed={r['seed']} "
                f"{'ok' if r.get('status') == 'ok' else 'FAILED'} · {SW.format_seconds(info['elapsed'])} "
                f"elapsed, ETA {SW.format_seconds(info['eta'])}")
        if new:
            self.redraw()
        if ended:
            bad = [r for r in self.rows if r.get("status") != "ok"]
            if self.stop_event.is_set():
                self.status.object = html.escape(f"Stopped: {len(self.rows)} of {self.progress.max} cells finished.")
            elif self.doc is not None:
                self.status.object = html.escape(f"Done: {len(self.rows)} cells" + (f", {len(bad)} failed" if bad else "")
                                                 + ".")
            self.run_btn.disabled, self.stop_btn.disabled = False, True
            if self.callback is not None:
                self.callback.stop()
                self.callback = None
        return ended

    def redraw(self) -> None:
        self.figures.object = figures(self.rows, reference={self.label: self.reference}) if self.rows else None
        self.table.object = table(self.rows) if self.rows else None

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until the sweep ends, draining updates (for scripts and tests)."""
        from .runs import wait_until
        return wait_until(self.poll, timeout)

    def _download(self):
        doc = self.doc or {"format": SW.FORMAT, "settings": {}, "models": {}, "rows": self.rows}
        return io.StringIO(json.dumps(doc, indent=1))


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


__all__ = ["figures", "model_figures", "against_K", "curves", "ess_ratio", "table", "CompareTab", "shared_client",
           "close_shared_cluster"]
