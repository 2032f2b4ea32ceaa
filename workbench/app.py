"""The workbench app: arranges the canvas, the forms, the run controls and the views.

The engine Model is the single source of truth. Every edit is tried on a copy and
validated; an edit that fails is refused with the engine's message and the model stays
as it was. Undo/redo keep kn-model/1 documents. Fitting runs in a worker thread that
only puts results in a queue; a periodic callback on the session's own event loop
drains it and updates the views, so the UI stays responsive.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import queue
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource

from engine import DISTRIBUTIONS, Model, ModelError, datasets
from engine.cli import EXAMPLE

from . import canvas as C
from . import exact as E
from . import data as D
from . import degeneracy as DG
from . import views as V
from .compat import W
from .forms import NodeForm, DataForm, PlateForm

METHOD_LABELS = {"IS": "is", "QEM": "qem", "RWS": "rws", "VI": "vi", "global": "global"}
TABS = ("Plate diagram", "Einsum path", "ESS", "ELBO", "Posterior", "Degeneracy")


def _suggest(model, stem: str) -> str:
    i = 1
    while f"{stem}{i}" in model.graph or f"{stem}{i}" in model.plates or f"{stem}{i}" in model.data:
        i += 1
    return f"{stem}{i}"


NEUTRAL = {"scale": 1.0, "rate": 1.0, "concentration": 1.0, "concentration1": 1.0, "concentration0": 1.0,
           "df": 3.0, "probs": 0.5, "total_count": 1, "high": 1.0}


def _positive(dist: str) -> bool:
    from torch.distributions import constraints
    try:
        sup = DISTRIBUTIONS[dist].cls.support
        return isinstance(sup, (constraints.greater_than, constraints.greater_than_eq)) and sup.lower_bound >= 0
    except (KeyError, NotImplementedError, AttributeError, TypeError):
        return False


def insert_parent(node, spec, parent: str, parent_dist: str | None = None) -> tuple[str, object]:
    """The argument an edge parent -> node fills, and its new value: the first argument
    holding a plain number becomes `parent` (a positive-only argument such as a scale only
    for a positive parent); else `parent` is added to the first argument with an expression."""
    pos = parent_dist is not None and _positive(parent_dist)
    for a in spec.args:
        v = node.args.get(a)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (a not in NEUTRAL or pos):
            return a, parent
    for a in spec.args:
        v = node.args.get(a)
        if isinstance(v, str) and (a not in NEUTRAL or pos):
            return a, f"{v} + {parent}"
    for a in spec.args:
        if isinstance(node.args.get(a), str):
            return a, f"{node.args[a]} + {parent}"
    a = spec.required()[0] if spec.required() else spec.args[0]
    return a, parent


def remove_parent(node, parent: str) -> dict | None:
    """node.args without `parent`: an argument that is just the parent goes back to a
    neutral number; `+ parent` terms are dropped. None if it is used otherwise."""
    import re
    args = dict(node.args)
    for a, v in node.args.items():
        if not isinstance(v, str) or parent not in v:
            continue
        if v.strip() == parent:
            args[a] = NEUTRAL.get(a, 0.0)
            continue
        w = re.sub(rf"\s*\+\s*{parent}\b(?!\s*[\*/@\[(])", "", v)
        w = re.sub(rf"^\s*{parent}\s*\+\s*", "", w)
        if re.search(rf"\b{parent}\b", w):
            return None
        args[a] = w
    return args


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class Workbench:
    """The workbench for one model: `Workbench("assets/models/radon.json")` in a notebook
    shows it; `.panel()` is the Panel layout; `serve()` runs it in a browser tab.

    exact: the exact posterior of latents, for models with a closed form: a dict
    {name or name[i]: spec} or a callable(model) -> such a dict, where a spec is
    {"dist": "Normal", "args": {...}}, {"x": [...], "pdf": [...]} or a callable x -> pdf;
    an entry "@log_evidence": float draws the exact log P(data) on the ELBO view.
    A model file may carry the same dict in a top-level "exact" field. By default
    workbench.exact.gaussian_hierarchy recognises the conjugate Gaussian hierarchy."""

    def __init__(self, model=None, exact=None, K: int = 10, iters: int = 50, method: str = "QEM"):
        pn.extension(notifications=False)
        self.path: Path | None = None
        if model is None:
            model = EXAMPLE
        if isinstance(model, (str, Path)):
            self.path = Path(model)
            try:
                model = Model.load(model)
            except ModelError as e:
                self._startup_error = f"Could not open {model}: {e}"
                model = Model("untitled")
            else:
                self._startup_error = None
        else:
            self._startup_error = None
        self.model: Model = model if model is not None else Model("untitled")
        self.exact_arg = E.gaussian_hierarchy if exact is None else exact
        self._held = False   # see _views_held
        self.undo_stack: list[dict] = []
        self.redo_stack: list[dict] = []
        self.pos = C.auto_layout(self.model)
        self.runs: list[dict] = []
        self.result = None
        self.samples = None
        self.fitter = None
        self.worker = None
        self.q: queue.Queue = queue.Queue()
        self.callback = None
        self.last_ess = None
        self.run_K = None
        self._stop_requested = False
        self._build(K, iters, method)
        self.refresh()
        if self._startup_error:
            self.alert(self._startup_error)

    # ---- layout ------------------------------------------------------------------------
    def _build(self, K, iters, method):
        self.alerts = pn.Column(sizing_mode="stretch_width", margin=0)
        self.title = pn.pane.Markdown("", margin=(0, 10), css_classes=["wb-title"])
        btn = dict(width=95, margin=(4, 3))
        self.undo_btn = W(pn.widgets.Button, label="↶ Undo", **btn)
        self.redo_btn = W(pn.widgets.Button, label="↷ Redo", **btn)
        accent = dict(button_type="primary", button_style="outline", **btn)
        self.add_latent_btn = W(pn.widgets.Button, label="+ Latent", **accent)
        self.add_obs_btn = W(pn.widgets.Button, label="+ Observed", **accent)
        self.new_btn = W(pn.widgets.Button, label="New model", **btn)
        self.undo_btn.on_click(self._guard(lambda e: self.undo()))
        self.redo_btn.on_click(self._guard(lambda e: self.redo()))
        self.add_latent_btn.on_click(self._guard(lambda e: self.new_node("latent")))
        self.add_obs_btn.on_click(self._guard(lambda e: self.new_node("observed")))
        self.new_btn.on_click(self._guard(lambda e: self.new_model()))
        ex = datasets.gallery()
        here = self.path.stem if self.path is not None and self.path.stem in ex else next(iter(ex), None)
        self.example = W(pn.widgets.Select, options=list(ex), value=here, width=170, margin=(4, 3),
                                         css_classes=["wb-example"])
        self.load_example_btn = W(pn.widgets.Button, label="Load example", **btn)
        self.load_example_btn.on_click(self._guard(lambda e: self.load_example()))
        self.path_input = W(pn.widgets.TextInput, value=str(self.path or "model.json"), width=260, margin=(4, 3),
                                               css_classes=["wb-path"],
                                               placeholder="path/to/model.json")
        self.open_btn = W(pn.widgets.Button, label="Open", width=70, margin=(4, 3))
        self.save_btn = W(pn.widgets.Button, label="Save", button_type="success", width=70, margin=(4, 3))
        self.open_btn.on_click(self._guard(lambda e: self.open(self.path_input.value)))
        self.save_btn.on_click(self._guard(lambda e: self.save(self.path_input.value)))
        self.download = W(pn.widgets.FileDownload, callback=self._download, filename="model.json", label="Download",
                                                button_type="light", width=100, margin=(4, 3))
        self.upload = W(pn.widgets.FileInput, accept=".json", width=200, margin=(4, 3))
        self.upload.param.watch(self._guard(self._uploaded), "value")
        toolbar = pn.Row(self.undo_btn, self.redo_btn, self.add_latent_btn, self.add_obs_btn, self.new_btn,
                         pn.Spacer(width=10), self.example, self.load_example_btn, pn.Spacer(width=10),
                         self.path_input, self.open_btn, self.save_btn, self.download,
                         pn.Row(pn.pane.Markdown("Upload .json:", margin=(10, 3, 0, 10)), self.upload),
                         sizing_mode="stretch_width", styles={"flex-wrap": "wrap"})

        self.flow = C.make_flow(self.model, self.pos)
        self.flow.on("edge_added", self._guard(self._on_edge_added))
        self.flow.on("edge_deleted", self._guard(self._on_edge_deleted))
        self.flow.on("node_deleted", self._guard(self._on_node_deleted))
        self.flow.on("node_moved", self._guard(self._on_node_moved))
        self.flow.on("selection_changed", self._guard(self._on_selection))
        hint = pn.pane.Markdown(
            "Drag from a node's right handle to another node's left handle to make it a parent: the "
            "parent's name goes into the child's arguments (the child's form opens). Drag a node into a "
            "plate's box to put it "
            "in that plate. Select and press Delete to remove.",
            styles={"color": "#555", "font-size": "0.85em"}, margin=(0, 10))

        g = self._guard
        self.node_form = NodeForm(g(self._apply_node), g(self.delete_node))
        self.plate_form = PlateForm(g(self.add_plate), g(self.resize_plate), g(self.remove_plate))
        self.data_form = DataForm(D.bundled(), D.read_upload, g(self.attach_data), D.group_pad, D.describe)
        self.editor_tabs = pn.Tabs(("Node", self.node_form.view), ("Plates", self.plate_form.view),
                                   ("Data", self.data_form.view), dynamic=False, width=400,
                                   styles={"border-left": "1px solid #ddd"})

        self.method = W(pn.widgets.Select, label="Method", options=list(METHOD_LABELS), value=method, width=90,
                                        css_classes=["wb-method"])
        self.K = W(pn.widgets.IntInput, label="K", value=K, start=1, end=100000, width=80, css_classes=["wb-K"])
        self.iters = W(pn.widgets.IntInput, label="Iterations", value=iters, start=1, end=100000, width=90,
                                         css_classes=["wb-iters"])
        self.lr = W(pn.widgets.FloatInput, label="Learning rate", value=0.03, start=1e-6, step=0.01, width=100)
        self.seed = W(pn.widgets.IntInput, label="Seed", value=0, start=0, width=70)
        self.device = W(pn.widgets.Select, label="Device", options=["auto", "cpu", "cuda"], value="auto", width=80)
        self.run_btn = W(pn.widgets.Button, label="▶ Run", button_type="primary", width=90, margin=(22, 5, 5, 5))
        self.stop_btn = W(pn.widgets.Button, label="■ Stop", button_type="danger", width=80, margin=(22, 5, 5, 5),
                                          disabled=True)
        self.clear_btn = W(pn.widgets.Button, label="Clear runs", width=90, margin=(22, 5, 5, 5))
        self.run_btn.on_click(self._guard(lambda e: self.run()))
        self.stop_btn.on_click(self._guard(lambda e: self.stop()))
        self.clear_btn.on_click(self._guard(lambda e: self.clear_runs()))
        self.progress = pn.indicators.Progress(value=0, max=iters, bar_color="primary", width=360,
                                               margin=(14, 10, 2, 10))
        self.status = pn.pane.Markdown("Ready.", margin=(0, 10), css_classes=["run-status"])
        self.K.param.watch(lambda e: self.update_einsum(), "value")
        self.method.param.watch(lambda e: self.update_einsum(), "value")
        controls = pn.Row(self.method, self.K, self.iters, self.lr, self.seed, self.device, self.run_btn,
                          self.stop_btn, self.clear_btn, pn.Column(self.progress, self.status, width=380, margin=0),
                          sizing_mode="stretch_width", styles={"flex-wrap": "wrap", "background": "#f6f8fa",
                                                               "border-radius": "6px"})

        self.diagram = pn.pane.HTML("", sizing_mode="stretch_width", min_height=200,
                                    styles={"overflow": "auto"})
        self.einsum_head = pn.pane.Markdown("")
        self.einsum_summary = pn.pane.DataFrame(None, sizing_mode="stretch_width", index=False)
        self.einsum_steps = pn.pane.DataFrame(None, sizing_mode="stretch_width", index=False)
        self.ess_pane = pn.pane.Bokeh(None, sizing_mode="stretch_width")
        self.ess_note = pn.pane.Markdown("Run a method to see the ESS of every latent, updated each iteration.")
        self.ess_table = pn.pane.Markdown("", css_classes=["ess-table"])
        self.elbo_pane = pn.pane.Bokeh(V.elbo_figure([]), sizing_mode="stretch_width")
        self.elbo_note = pn.pane.Markdown("No runs yet: each run's ELBO streams here, runs overlaid for "
                                          "comparison (click a legend entry to hide a run).",
                                          css_classes=["elbo-note"])
        self.post_note = pn.pane.Markdown("Run a method to see posterior summaries.")
        self.post_table = pn.pane.DataFrame(None, sizing_mode="stretch_width", max_height=360,
                                            styles={"overflow": "auto"})
        self.post_names = W(pn.widgets.MultiChoice, label="Latents to plot", options=[], width=500)
        self.post_names.param.watch(lambda e: self._held or self.update_posterior_plots(), "value")
        self.post_plots = pn.pane.Bokeh(None, sizing_mode="stretch_width")
        self.deg_note = pn.pane.Markdown("Run a method to see how the particles' weight is spread.")
        self.deg_latent = W(pn.widgets.Select, label="Latent", options=[], width=220)
        self.deg_parent = W(pn.widgets.Select, label="Parent (coupling view)", options=[], width=220)
        self.deg_latent.param.watch(lambda e: self._held or self.update_degeneracy(), "value")
        self.deg_parent.param.watch(lambda e: self._held or self.update_degeneracy(), "value")
        self.deg_heat, self.deg_particles, self.deg_coupling = (pn.pane.Bokeh(None) for _ in range(3))
        self.views = pn.Tabs(
            (TABS[0], self.diagram),
            (TABS[1], pn.Column(self.einsum_head, self.einsum_summary, pn.pane.Markdown("**Contraction steps, "
                                "in order** (plate levels innermost first)"), self.einsum_steps,
                                sizing_mode="stretch_width")),
            (TABS[2], pn.Column(self.ess_note, self.ess_pane, self.ess_table, sizing_mode="stretch_width")),
            (TABS[3], pn.Column(self.elbo_note, self.elbo_pane, sizing_mode="stretch_width")),
            (TABS[4], pn.Column(self.post_note, self.post_table, self.post_names, self.post_plots,
                                sizing_mode="stretch_width")),
            (TABS[5], pn.Column(pn.Row(self.deg_latent, self.deg_parent), self.deg_note,
                                pn.Row(self.deg_heat, self.deg_particles), self.deg_coupling,
                                sizing_mode="stretch_width")),
            dynamic=False, sizing_mode="stretch_width", min_height=420)

        header = pn.Row(pn.pane.Markdown("## kn-workbench", margin=(0, 10)), self.title,
                        sizing_mode="stretch_width", styles={"border-bottom": "2px solid #4a6fa5"})
        self.layout = pn.Column(header, toolbar, self.alerts,
                                pn.Row(pn.Column(self.flow, hint, sizing_mode="stretch_width"), self.editor_tabs,
                                       sizing_mode="stretch_width"),
                                controls, self.views, sizing_mode="stretch_width")

    def panel(self):
        return self.layout

    def __panel__(self):
        return self.layout

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.layout._repr_mimebundle_(include, exclude)

    def servable(self, title: str = "kn-workbench"):
        return self.layout.servable(title=title)

    # ---- messages ----------------------------------------------------------------------
    def _guard(self, fn):
        """fn, but an unexpected exception becomes a message in the app (and a traceback in
        the log) instead of a silent failure; the model is left as it was."""
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # the UI must survive any bug
                traceback.print_exc()
                self.alert(f"Something went wrong: {type(e).__name__}: {e}. The model is unchanged.")
                try:
                    self.refresh_canvas()
                except Exception:
                    pass
        return run

    def alert(self, message: str, kind: str = "danger"):
        """Show one message above the canvas (the newest replaces older ones of the same kind)."""
        pane = pn.pane.Alert(message, alert_type=kind, sizing_mode="stretch_width", margin=(2, 10),
                             css_classes=[f"wb-alert-{kind}"])
        close = W(pn.widgets.Button, label="✕", width=30, margin=(8, 4), button_type="light")
        row = pn.Row(pane, close, sizing_mode="stretch_width")
        close.on_click(self._guard(lambda e: self.alerts.remove(row) if row in self.alerts else None))
        keep = [r for r in self.alerts if getattr(r, "_wb_kind", None) != kind][-2:]
        row._wb_kind = kind
        self.alerts.objects = keep + [row]

    # ---- editing -----------------------------------------------------------------------
    def edit(self, fn, what: str) -> bool:
        """Apply fn to a copy of the model; keep it only if it validates."""
        try:
            new = self.model.copy()
            out = fn(new)
            new = out if isinstance(out, Model) else new
            if new.graph:   # a model with no nodes yet is fine to edit (plates, data)
                new.validate()
        except (ModelError, ValueError, KeyError, TypeError) as e:
            self.alert(f"{what} refused: {e}. The model is unchanged.")
            self.refresh_canvas()
            return False
        self.undo_stack.append(self.model.to_dict())
        del self.undo_stack[:-100]
        self.redo_stack.clear()
        self.model = new
        self.refresh()
        return True

    def _restore(self, doc):
        self.model = Model.from_dict(doc)
        self.refresh()

    def undo(self):
        self._travel(self.undo_stack, self.redo_stack, "undo")

    def redo(self):
        self._travel(self.redo_stack, self.undo_stack, "redo")

    def _travel(self, back: list, forth: list, what: str):
        """Restore the model from the top of `back`, keeping the current one on `forth`."""
        if not back:
            self.alert(f"Nothing to {what}.", "info")
            return
        forth.append(self.model.to_dict())
        self._restore(back.pop())

    def _apply_node(self, original, fields, error):
        if error:
            self.alert(f"Node not changed: {error}")
            return
        name = fields["name"]

        def fn(m):
            if fields["kind"] == "observed":
                src = fields.get("data")
                if name not in m.data:
                    if not src:
                        raise ModelError(f"observed node {name!r} needs data: attach some in the Data tab and "
                                         f"pick it in the node form")
                    m.set_data(name, m.data[src])
                elif src and src != name:
                    m.set_data(name, m.data[src])
            if original is None:
                m.add_node(name, fields["kind"], fields["dist"], fields["args"], fields["plate"], fields["shape"])
            else:
                m.update_node(name, kind=fields["kind"], dist=fields["dist"], args=fields["args"],
                              plate=fields["plate"], shape=fields["shape"])
        what = f"Adding node {name!r}" if original is None else f"Changing node {name!r}"
        if self.edit(fn, what):
            if original is None and name not in self.pos:
                self.pos[name] = C.free_spot({k: v for k, v in self.pos.items() if k in self.model.graph},
                                             C.plate_boxes(self.model, self.pos))
                self.refresh_canvas()
            self.node_form.show(self.model, name)
            self.alert(f"{what}: done.", "success")

    def new_node(self, kind: str):
        """Open the node form for a new latent or observed node."""
        self.node_form.new(self.model, kind, _suggest(self.model, "z" if kind == "latent" else "x"))
        self.editor_tabs.active = 0

    def load_example(self):
        if self.example.value:
            self.open(datasets.gallery()[self.example.value])

    def delete_node(self, name):
        if self.edit(lambda m: m.remove_node(name), f"Deleting node {name!r}"):
            self.pos.pop(name, None)
            self.node_form.clear()
            self.alert(f"Deleted node {name!r}.", "success")

    def connect(self, parent: str, child: str) -> bool:
        """An edge parent -> child: put `parent` into one of child's arguments."""
        if parent not in self.model.graph or child not in self.model.graph:
            self.alert("Edges join two variables (plates are not variables).")
            self.refresh_canvas()
            return False
        if self.model.graph.has_edge(parent, child):
            self.refresh_canvas()
            return False
        node = self.model.node(child)
        arg, value = insert_parent(node, DISTRIBUTIONS[node.dist], parent, self.model.node(parent).dist)
        args = {**node.args, arg: value}
        ok = self.edit(lambda m: m.update_node(child, args=args), f"Edge {parent} → {child}")
        if ok:
            note = (f"Edge {parent} → {child}: `{parent}` was put into {child}'s argument **{arg}**, now "
                    f"`{value}`. Edges come from arguments: edit the expression below to use {parent} "
                    f"differently.")
            self.node_form.show(self.model, child, note=note, highlight=arg)
            self.editor_tabs.active = 0
            self.alert(note, "info")
        return ok

    def disconnect(self, parent: str, child: str) -> bool:
        if not self.model.graph.has_edge(parent, child):
            return False
        node = self.model.node(child)
        args = remove_parent(node, parent)
        if args is None:
            self.alert(f"Edge {parent} → {child} stays: {child}'s arguments use {parent} in a way that cannot be "
                       f"removed automatically; edit them in {child}'s form.")
            self.node_form.show(self.model, child)
            self.refresh_canvas()
            return False
        return self.edit(lambda m: m.update_node(child, args=args), f"Removing edge {parent} → {child}")

    def add_plate(self, name, size, parent):
        if self.edit(lambda m: m.add_plate(name, size, parent), f"Adding plate {name!r}"):
            self.alert(f"Added plate {name!r} of size {size}. Drag nodes into its box, or pick it in a node's "
                       f"form.", "success")

    def resize_plate(self, name, size):
        self.edit(lambda m: m.resize_plate(name, size), f"Resizing plate {name!r}")

    def remove_plate(self, name):
        if self.edit(lambda m: m.remove_plate(name), f"Removing plate {name!r}"):
            self.pos.pop(f"plate:{name}", None)
            self.refresh_canvas()

    def attach_data(self, name, arr):
        self.edit(lambda m: m.set_data(name, arr), f"Attaching data {name!r}") and \
            self.alert(f"Attached data {name!r} ({D.describe(arr)}).", "success")

    def new_model(self):
        self._set_model(Model("untitled"))

    # ---- canvas events -------------------------------------------------------------------
    def _on_edge_added(self, payload, *_):
        e = payload.get("edge") or {}
        self.connect(e.get("source"), e.get("target"))

    def _on_edge_deleted(self, payload, *_):
        ids = payload.get("edge_ids") or [payload.get("edge_id")]
        changed = False
        for eid in ids:
            if eid and "->" in eid:
                a, b = eid.split("->", 1)
                changed |= self.disconnect(a, b.split(":")[0])
        if not changed:
            self.refresh_canvas()

    def _on_node_deleted(self, payload, *_):
        ids = payload.get("node_ids") or [payload.get("node_id")]
        for nid in ids:
            if nid in self.model.graph:
                self.delete_node(nid)
        self.refresh_canvas()

    def _on_node_moved(self, payload, *_):
        name, p = payload.get("node_id"), payload.get("position") or {}
        if name not in self.model.graph or "x" not in p:
            return
        self.pos[name] = (float(p["x"]), float(p["y"]))
        cx, cy = p["x"] + C.NODE_W / 2, p["y"] + C.NODE_H / 2
        target = C.plate_at(self.model, self.pos, name, cx, cy)
        node = self.model.node(name)
        if target != node.plate:
            where = f"plate {target!r}" if target else "no plate"
            self.edit(lambda m: m.update_node(name, plate=target), f"Moving {name!r} into {where}") and \
                self.alert(f"{name!r} is now in {where}.", "success")
        self.refresh_canvas()

    def _on_selection(self, payload, *_):
        nodes = [n for n in (payload.get("nodes") or []) if n in self.model.graph]
        if len(nodes) == 1:
            self.node_form.show(self.model, nodes[0])
            self.editor_tabs.active = 0

    # ---- files ------------------------------------------------------------------------------
    def open(self, path):
        try:
            model = Model.load(path)
        except ModelError as e:
            self.alert(f"Could not open {path}: {e}")
            return False
        self._set_model(model, Path(path))
        self.alert(f"Opened {path}.", "success")
        return True

    def _set_model(self, model, path=None):
        self.undo_stack.append(self.model.to_dict())
        self.redo_stack.clear()
        self.model = model
        self.path = path
        if path is not None:
            self.path_input.value = str(path)
        self.pos = C.auto_layout(model)
        self.node_form.clear()
        self.result, self.samples, self.last_ess = None, None, None
        self.refresh()
        self.flow.viewport = C.fit_viewport(self.model, self.pos)

    def save(self, path):
        try:
            Path(path).write_text(json.dumps(self.model.to_dict(), indent=1))
        except OSError as e:
            self.alert(f"Could not save to {path}: {e}")
            return False
        self.path = Path(path)
        self.alert(f"Saved {self.model.name!r} to {path}.", "success")
        return True

    def _download(self):
        self.download.filename = f"{self.model.name or 'model'}.json"
        return io.StringIO(json.dumps(self.model.to_dict(), indent=1))

    def _uploaded(self, e):
        if not self.upload.value:
            return
        try:
            model = Model.from_dict(json.loads(self.upload.value.decode("utf-8")))
        except (ModelError, ValueError, UnicodeDecodeError) as err:
            self.alert(f"Could not load {self.upload.filename}: {err}")
            return
        self._set_model(model)
        self.alert(f"Loaded {self.upload.filename}.", "success")

    # ---- views ------------------------------------------------------------------------------
    def exact(self) -> dict:
        out = dict(self.model.extras.get("exact") or {})
        if callable(self.exact_arg):
            out.update(self.exact_arg(self.model) or {})
        elif self.exact_arg:
            out.update(self.exact_arg)
        return out

    def reference(self) -> float | None:
        """The exact log evidence, if the model has a closed form (an "@log_evidence" entry
        of the exact dict, else workbench.exact.log_evidence)."""
        ex = self.exact()
        if "@log_evidence" in ex:
            return float(ex["@log_evidence"])
        return E.log_evidence(self.model)

    def refresh(self):
        m = self.model
        self.title.object = f"**{m.name}** — {len(m.latents)} latent, {len(m.observed)} observed, " \
                            f"{len(m.plates)} plates" + (f" · `{self.path}`" if self.path else "")
        self.undo_btn.disabled = not self.undo_stack
        self.redo_btn.disabled = not self.redo_stack
        self.refresh_canvas()
        self.update_diagram()
        self.update_einsum()
        self.plate_form.update(m)
        self.data_form.update(m)
        self.node_form.set_choices(m)
        if self.node_form.original and self.node_form.original in m.graph:
            self.node_form.show(m, self.node_form.original)
        elif self.node_form.original:
            self.node_form.clear()

    def _ess_for_model(self):
        if self.last_ess is None:
            return None, None
        ess = {k: v for k, v in self.last_ess.items() if k in self.model.graph}
        return ess, self.run_K

    def refresh_canvas(self):
        ess, K = self._ess_for_model()
        self.flow.nodes = C.canvas_nodes(self.model, self.pos, ess, K)
        self.flow.edges = C.canvas_edges(self.model)

    def update_diagram(self):
        ess, K = self._ess_for_model()
        if not len(self.model.graph):
            self.diagram.object = "<p>The model is empty: add a latent node (+ Latent).</p>"
            return
        self.diagram.object = V.render_svg(V.plate_diagram_dot(self.model, ess, K))

    def update_einsum(self):
        if not len(self.model.graph):
            self.einsum_head.object = "The model is empty."
            self.einsum_summary.object = self.einsum_steps.object = None
            return
        K = int(self.K.value)
        mode = "global" if self.method.value == "global" else "mp"
        try:
            prog = self.model.compile(K, mode=mode, device="cpu")
        except ModelError as e:
            self.einsum_head.object = f"Cannot plan the contraction: {e}"
            self.einsum_summary.object = self.einsum_steps.object = None
            return
        summ = V.einsum_summary(prog)
        mem = prog.memory_estimate()
        largest = int(summ["largest intermediate bytes"].max()) if len(summ) else 0
        self.einsum_head.object = (
            f"**{'Global' if mode == 'global' else 'Massively parallel'} contraction at K = {K}** · naive "
            f"{int(summ['naive flops'].sum()):,} FLOPs vs optimised {int(summ['optimized flops'].sum()):,} · "
            f"largest intermediate {V.human_bytes(largest)} · memory for one sample and its backward pass "
            f"about {V.human_bytes(mem)} (budget {V.human_bytes(prog.memory_budget)}"
            + (f"; runs plate {prog.split[0]} in chunks of {prog.split[1]})" if prog.split else ")"))
        self.einsum_summary.object = summ
        self.einsum_steps.object = V.einsum_table(prog)

    # ---- running -------------------------------------------------------------------------------
    def run(self):
        if self.worker is not None and self.worker.is_alive():
            self.alert("A run is already going; stop it first.", "warning")
            return False
        try:
            self.model.validate()
        except ModelError as e:
            self.alert(f"Cannot run: {e}")
            return False
        method, K, iters = METHOD_LABELS[self.method.value], int(self.K.value), int(self.iters.value)
        lr, seed, device = float(self.lr.value), int(self.seed.value), self.device.value
        try:   # the engine's memory planner: chunks a plate to fit, or says what to change
            self.model.compile(K, mode="global" if method == "global" else "mp", device=device)
        except ModelError as e:
            self.alert(f"Cannot run: {e}")
            return False
        label = f"{self.method.value} K={K} #{len(self.runs) + 1}"
        self.runs.append({"label": label, "elbo": [], "iteration": []})
        self.elbo_pane.object = V.elbo_figure(self.runs, self.reference())
        self.progress.max, self.progress.value = iters, 0
        self.status.object = f"Starting {label}…"
        self.run_btn.disabled, self.stop_btn.disabled = True, False
        self.run_K = K
        self._stop_requested = False
        model = self.model.copy()
        self.q = queue.Queue()
        self.worker = threading.Thread(target=self._work, args=(model, method, K, iters, lr, seed, device, self.q),
                                       daemon=True, name="kn-fit")
        self.worker.start()
        if pn.state.curdoc is not None:          # a server session, or a notebook comm event
            self.callback = pn.state.add_periodic_callback(self.poll, period=200, start=True)
        elif _in_ipython():                        # run() called from a notebook cell
            self.callback = None
            threading.Thread(target=self._poll_loop, daemon=True, name="kn-poll").start()
        else:
            self.callback = None     # no event loop (a script or a test): call wait() or poll() yourself
        return True

    def _work(self, model, method, K, iters, lr, seed, device, q):
        try:
            from engine.fit import Fitter
            f = Fitter(model, method=method, K=K, seed=seed, lr=lr, device=device)
            self.fitter = f
            for step in f.run(iters):
                if not math.isfinite(step.elbo):
                    q.put(("error", f"iteration {step.iteration}: the ELBO is {step.elbo} (NaN)"))
                    break
                q.put(("step", step))
                if self._stop_requested:       # also covers a Stop pressed before the loop began
                    break
            r = f.result()
            q.put(("status", "Computing the posterior summary…"))
            samples = V.posterior_draws(r, 1000)
            try:
                table = V.summary_table(samples)
            except Exception as e:  # arviz failing must not lose the run
                table = None
                q.put(("warn", f"ArviZ summary failed: {e}"))
            q.put(("done", (r, samples, table, f.history)))
        except ModelError as e:
            q.put(("error", str(e)))
        except MemoryError:
            q.put(("error", f"Out of memory at K = {K}: lower K."))
        except RuntimeError as e:
            msg = str(e).splitlines()[0]
            if "out of memory" in msg.lower() or "can't allocate" in msg.lower() or "not enough memory" in msg.lower():
                q.put(("error", f"Out of memory at K = {K}: lower K ({msg})"))
            else:
                q.put(("error", f"The run failed: {msg}"))
        except Exception as e:  # anything else: readable, never a dead UI
            traceback.print_exc()
            q.put(("error", f"The run failed: {type(e).__name__}: {e}"))
        finally:
            q.put(("end", None))

    def _poll_loop(self):
        while not self.poll():
            time.sleep(0.25)

    def stop(self):
        self._stop_requested = True
        if self.fitter is not None:
            self.fitter.stop()
        self.status.object = "Stopping after this iteration…"

    def clear_runs(self):
        self.runs = [r for r in self.runs[-1:] if self.worker is not None and self.worker.is_alive()]
        self.elbo_pane.object = V.elbo_figure(self.runs, self.reference())
        self.elbo_note.object = "Runs cleared."

    def poll(self):
        """Drain the worker's queue into the views (runs on the UI's event loop)."""
        steps, ended = [], False
        while True:
            try:
                kind, item = self.q.get_nowait()
            except queue.Empty:
                break
            if kind == "step":
                steps.append(item)
                continue
            if steps:                  # show the iterations before what came after them
                self._show_steps(steps)
                steps = []
            if kind == "status":
                self.status.object = item
            elif kind == "warn":
                self.alert(item, "warning")
            elif kind == "error":
                self.alert(f"Run stopped: {item}")
                self.status.object = f"Stopped: {item}"
            elif kind == "done":
                self._finish(*item)
            elif kind == "end":
                ended = True
        if steps:
            self._show_steps(steps)
        if ended:
            self.run_btn.disabled, self.stop_btn.disabled = False, True
            self.fitter = None
            if self.callback is not None:
                self.callback.stop()
                self.callback = None
        return ended

    def _show_steps(self, steps):
        run = self.runs[-1]
        fig = self.elbo_pane.object
        src = fig.select_one({"name": run["label"], "type": ColumnDataSource}) if fig is not None else None
        its = [s.iteration for s in steps]
        ys = [s.elbo for s in steps]
        run["iteration"] += its
        run["elbo"] += ys
        if src is not None:
            src.stream({"iteration": its, "elbo": ys})
            self._push(self.elbo_pane)
        else:
            self.elbo_pane.object = V.elbo_figure(self.runs, self.reference())
        last = steps[-1]
        self.elbo_note.object = " · ".join(
            f"**{r['label']}**: {len(r['elbo'])} points" + (f", last ELBO {r['elbo'][-1]:.4g}" if r["elbo"] else "")
            for r in self.runs[-4:])
        self.last_ess = last.ess
        self.progress.value = min(last.iteration, self.progress.max)
        self.status.object = (f"iteration {last.iteration}/{self.progress.max} · ELBO {last.elbo:.4g} · "
                              f"{last.seconds * 1000:.0f} ms/it")
        self._update_ess(last.ess, self.run_K)

    def _update_ess(self, ess, K):
        run = self.runs[-1] if self.runs else {"label": "", "iteration": []}
        it = run["iteration"][-1] if run["iteration"] else "-"
        self.ess_note.object = (f"ESS after iteration {it} of {run['label']}: bars are the median over plate "
                                f"elements, dots the minimum; red latents are degenerate (min ESS below the "
                                f"dashed threshold).")
        d = V.ess_data(ess, K)
        self.ess_table.object = "| latent | min ESS | median ESS | |\n|---|---|---|---|\n" + "\n".join(
            f"| {n} | {a:.3g} | {b:.3g} | {'**degenerate**' if g else 'ok'} |"
            for n, a, b, g in zip(d["latent"], d["min"], d["median"], d["degenerate"]))
        fig = self.ess_pane.object
        src = fig.select_one({"name": "ess", "type": ColumnDataSource}) if fig is not None else None
        if src is not None and list(src.data["latent"]) == list(ess) and getattr(fig, "_wb_K", None) == K:
            src.data = d
            self._push(self.ess_pane)
        else:
            fig = V.ess_figure(ess, K)
            fig._wb_K = K
            self.ess_pane.object = fig

    def _push(self, pane):
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            try:
                pn.io.push_notebook(pane)
            except Exception:
                pass

    def _finish(self, r, samples, table, history):
        self.result, self.samples = r, samples
        self.status.object = (f"Done: {self.runs[-1]['label']} · log P_MP {r.log_marginal:.4g} · "
                              f"{len(history['elbo'])} iterations")
        self.post_note.object = (f"**{self.runs[-1]['label']}** · log marginal likelihood estimate "
                                 f"{r.log_marginal:.4g} · posterior draws resampled from the MP index posterior")
        self.post_table.object = table
        names = V.posterior_names(self.model if set(r.model.latents) == set(self.model.latents) else r.model)
        with self._views_held():   # drawn once, below
            self.post_names.options = names
            keep = [n for n in self.post_names.value if n in names]
            self.post_names.value = keep or names[:min(6, len(names))]
            self.deg_latent.options = list(r.sample.program.latents)
            if self.deg_latent.value not in self.deg_latent.options:
                self.deg_latent.value = self.deg_latent.options[0] if self.deg_latent.options else None
        self.update_posterior_plots()
        self.update_degeneracy()
        self.update_diagram()
        self.refresh_canvas()

    def update_degeneracy(self):
        """The final sample's particle weights: heatmap, particles on the density, coupling."""
        if self.result is None or not self.deg_latent.value:
            return
        s, name = self.result.sample, self.deg_latent.value
        parents = [p for p in s.program.model.parents(name) if p in s.program.kdim]
        if list(self.deg_parent.options) != parents:
            with self._views_held():   # drawn below, once
                self.deg_parent.options = parents
                self.deg_parent.value = parents[0] if parents else None
        try:
            m = DG.weight_matrix(s, name)
            lines = [f"**{name}**: the heaviest of K={m['K']} particles holds {m['mean_top_share']:.0%} of the weight "
                     f"on average over plate elements (1/K = {1 / m['K']:.0%}; 100% is collapse); "
                     f"ESS min {m['ess'].min():.1f}, median {float(np.median(m['ess'])):.1f}."]
            if s.program.mode == "global":
                k = DG.pareto_khat(s)
                lines.append(f"Pareto k-hat of the global weights: {k:.2f} "
                             f"({'unreliable, above 0.7' if k > 0.7 else 'below the 0.7 threshold'}).")
            self.deg_note.object = " ".join(lines)
            self.deg_heat.object = DG.weights_heatmap(s, name)
            scalar = not s.values[name].event_shape and not DISTRIBUTIONS[s.program.model.node(name).dist].discrete
            element = tuple(0 for _ in s.program.chain[name])
            exact = self.exact()
            key = f"{name}[{', '.join(map(str, element))}]" if element else name
            spec = exact.get(key, exact.get(key.replace(", ", ","))) if exact else None
            self.deg_particles.object = DG.particles_figure(s, name, element, exact=spec) if scalar else None
            parent = self.deg_parent.value
            self.deg_coupling.object = DG.coupling_heatmap(s, name, parent) if parent else None
        except (ModelError, ValueError, KeyError, IndexError, RuntimeError) as e:
            self.alert(f"Cannot draw the degeneracy views: {e}", "warning")

    @contextlib.contextmanager
    def _views_held(self):
        """Selector changes inside do not redraw the posterior and degeneracy views (the
        caller draws them once after)."""
        self._held = True
        try:
            yield
        finally:
            self._held = False

    def update_posterior_plots(self):
        if self.result is None or not self.post_names.value:
            self.post_plots.object = None
            return
        try:
            self.post_plots.object = V.posterior_view(self.result, list(self.post_names.value), exact=self.exact(),
                                                      samples=self.samples)
        except (ValueError, KeyError, IndexError) as e:
            self.alert(f"Cannot plot the posterior: {e}", "warning")

    def wait(self, timeout: float = 120.0):
        """Block until the current run ends, draining updates (for scripts and tests)."""
        end = time.time() + timeout
        while time.time() < end:
            if self.poll():
                return True
            time.sleep(0.05)
        return False


def serve(model_path=None, port: int = 5006, address: str = "127.0.0.1", show: bool = False, **kwargs):
    """Serve the workbench at http://ADDRESS:PORT (one Workbench per browser session),
    with `model_path` (a kn-model/1 JSON file) loaded, else the radon example. Blocks."""
    if model_path is not None and not Path(model_path).exists():
        raise ModelError(f"no model file at {str(model_path)!r}")
    hosts = {"localhost", "127.0.0.1", address}
    origins = ["*"] if address in ("0.0.0.0", "::", "") else [f"{h}:{port}" for h in hosts]

    def app():
        return Workbench(model_path).panel()
    return pn.serve({"/": app}, port=port, address=address, show=show, title="kn-workbench",
                    websocket_origin=origins, threaded=False, **kwargs)
