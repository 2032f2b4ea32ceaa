"""The workbench's layout: composes the canvas, the forms, the run controls and the view
tabs (workbench.tabs), and turns widget events into calls on the edited model
(workbench.editing), the run controller (workbench.runs) and the workspace
(workbench.files). Views are the pure functions of workbench.views and workbench.degeneracy.

Every view and the status line belong to the model on screen: another model stops the
run and clears the views; runs of earlier models stay in the ELBO tab, grouped by model.
Every string from a model or a user reaches the page through views.safe_html.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import threading
import time
import traceback
from pathlib import Path

import panel as pn

from engine import Model, ModelError

from . import canvas as C
from . import data as D
from . import exact as E
from . import files as F
from . import views as V
from .browser import MAX_CHARS, BrowserStore
from .compare import CompareTab
from .compat import W
from .editing import Edited, layout_of, suggest
from .forms import HINT, DataForm, NodeForm, PlateForm, Text
from .runs import METHODS, Jobs, RunController, default_settings, wait_until
from .tabs import ViewTabs, wrap
from .views import safe_html

EXAMPLE = "radon"
CSS = """
.wb-table { border-collapse: collapse; font-size: 0.85em; }
.wb-table th, .wb-table td { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }
.wb-alert { border-radius: 6px; padding: 6px 10px; margin: 2px 0; font-size: 0.9em; }
.wb-alert-danger { background: #fde8e8; border: 1px solid #f5b5b5; color: #7a1010; }
.wb-alert-warning { background: #fff6dd; border: 1px solid #f0d98c; color: #614700; }
.wb-alert-success { background: #e6f6ea; border: 1px solid #a9dbb5; color: #135c26; }
.wb-alert-info { background: #e8f1fd; border: 1px solid #b5cdf5; color: #123f7a; }
"""


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


class Workbench:
    """The workbench for one model: `Workbench("assets/models/radon.json")` in a notebook
    shows it; `.panel()` is the Panel layout; `workbench.serve()` runs it in a browser tab.

    model: a kn-model/1 file (a path the Python caller chose), a Model, or None (the
    radon example). workspace: the folder Save writes to and Open lists (default
    workbench.files.default_root()); the gallery is read-only.
    exact: the exact posterior of latents, for models with a closed form: a dict
    {name or name[i]: spec} or a callable(model) -> such a dict, where a spec is
    {"dist": "Normal", "args": {...}}, {"x": [...], "pdf": [...]} or a callable x -> pdf;
    an entry "@log_evidence": float draws the exact log P(data) on the ELBO view.
    A model file may carry the same dict in a top-level "exact" field. By default
    workbench.exact.gaussian_hierarchy recognises the conjugate Gaussian hierarchy.
    Served sessions pass background=True (loads off the event loop), and share `slots`
    (a bound on concurrent runs) and `time_limit` (seconds per run)."""

    def __init__(self, model=None, exact=None, K: int | None = None, iters: int | None = None,
                 method: str | None = None, workspace=None, background: bool = False,
                 slots: threading.Semaphore | None = None, time_limit: float | None = None):
        pn.extension(notifications=False, inline=_in_ipython(), raw_css=[CSS])
        self.ws = workspace if isinstance(workspace, F.Workspace) else F.Workspace(workspace)
        startup_error, name = None, None
        if model is None:
            model = self.ws.gallery.get(EXAMPLE) or Model("untitled")
        if isinstance(model, (str, Path)):
            path = Path(model)
            try:
                loaded = Model.load(path)
            except ModelError as e:
                startup_error = f"Could not open {path.name}: {e}"
                loaded = Model("untitled")
            name = path.name if path.resolve().parent == self.ws.root.resolve() else None
            model = loaded
        self.ed = Edited(model, name)
        self._layouts = 0
        self.exact_arg = E.gaussian_hierarchy if exact is None else exact
        self._exact_cache = (None, ({}, None))   # see _exact
        self.runs = RunController(slots, time_limit)
        self.jobs = Jobs(background)
        self._callback = None
        self._batching = False       # see _batch
        self._selected: list = []
        self._last_edges: tuple = (set(), 0, 0.0)   # the last edge deletion: edges, undo steps, when
        self._kept_edges: tuple = (set(), 0.0)      # edges of a node whose deletion was refused, when
        self._rev = 0
        s = default_settings(self.ed.model)
        self._auto_K = s["K"]        # K chosen for the model, not by the user: the next model gets its own
        s.update({k: v for k, v in (("K", K), ("iters", iters), ("method", method)) if v is not None})
        self._build(s)
        self.refresh()
        if startup_error:
            self.alert(startup_error)

    # ---- layout ------------------------------------------------------------------------
    def _build(self, s: dict):
        g = self._guard
        btn = dict(width=92, margin=(4, 3))
        self.alerts = pn.Column(sizing_mode="stretch_width", margin=(0, 10))

        # header: the model's name (editable), what it holds, the file row
        self.model_name = W(pn.widgets.TextInput, value=self.ed.model.name, width=220, margin=(6, 6),
                            css_classes=["wb-model-name"])
        self.model_name.param.watch(g(lambda e: self.rename_model(e.new)), "value")
        self.title = Text("", margin=(12, 6), css_classes=["wb-title"])
        self.files = W(pn.widgets.Select, options=[], width=170, margin=(4, 3), css_classes=["wb-files"])
        self.open_btn = W(pn.widgets.Button, label="Open", width=64, margin=(4, 3))
        self.save_name = W(pn.widgets.TextInput, value="", width=170, margin=(4, 3), css_classes=["wb-save-name"],
                           placeholder="file name, e.g. my_model")
        self.save_btn = W(pn.widgets.Button, label="Save", button_type="success", width=64, margin=(4, 3))
        self.confirm_text = Text("", margin=(10, 6), css_classes=["wb-confirm-text"])
        self.replace_btn = W(pn.widgets.Button, label="Replace it", button_type="danger", width=96, margin=(4, 3))
        self.cancel_btn = W(pn.widgets.Button, label="Cancel", width=70, margin=(4, 3))
        self.confirm = pn.Row(self.confirm_text, self.replace_btn, self.cancel_btn, visible=False,
                              css_classes=["wb-confirm"], styles={"background": "#fff6dd", "border-radius": "6px"})
        self.open_btn.on_click(g(lambda e: self.open(self.files.value)))
        self.save_btn.on_click(g(lambda e: self.save(self.save_name.value)))
        self.replace_btn.on_click(g(lambda e: self.save(self.save_name.value, overwrite=True)))
        self.cancel_btn.on_click(g(lambda e: setattr(self.confirm, "visible", False)))
        self.example = W(pn.widgets.Select, options=list(self.ws.gallery), width=170, margin=(4, 3),
                         value=self.model.name if self.model.name in self.ws.gallery else None,
                         css_classes=["wb-example"])
        self.load_example_btn = W(pn.widgets.Button, label="Load example", width=110, margin=(4, 3))
        self.load_example_btn.on_click(g(lambda e: self.load_example(self.example.value)))
        self.download = W(pn.widgets.FileDownload, callback=self._download, filename="model.json", label="Download",
                          button_type="light", width=96, margin=(4, 3))
        self.upload = W(pn.widgets.FileInput, accept=".json", width=190, margin=(4, 3), css_classes=["wb-upload"])
        self.upload.param.watch(g(self._uploaded), "value")
        self.new_btn = W(pn.widgets.Button, label="New model", width=96, margin=(4, 3))
        self.new_btn.on_click(g(lambda e: self.new_model()))
        self.store = BrowserStore()
        self.store.param.watch(g(self._offer_restore), "stored")
        self.restore_text = Text("", margin=(10, 6), css_classes=["wb-restore-text"])
        self.restore_btn = W(pn.widgets.Button, label="Restore it", button_type="primary", width=96, margin=(4, 3))
        self.discard_btn = W(pn.widgets.Button, label="Discard", width=80, margin=(4, 3))
        self.restore_btn.on_click(g(lambda e: self.restore()))
        self.discard_btn.on_click(g(lambda e: self._discard_autosave()))
        self.restore_row = pn.Row(self.restore_text, self.restore_btn, self.discard_btn, visible=False,
                                  css_classes=["wb-restore"], styles={"background": "#e8f1fd", "border-radius": "6px"})
        header = wrap(pn.pane.HTML("<h2 style='margin:4px 0'>kn-workbench</h2>", margin=(4, 10)),
                       self.model_name, self.title, self.store, styles={"border-bottom": "2px solid #4a6fa5"})
        filebar = wrap(self.files, self.open_btn, pn.Spacer(width=8), self.save_name, self.save_btn,
                        pn.Spacer(width=8), self.example, self.load_example_btn, pn.Spacer(width=8),
                        self.new_btn, self.download, self.upload)

        # left: edit buttons, the canvas, the forms
        accent = dict(button_type="primary", button_style="outline", **btn)
        self.undo_btn = W(pn.widgets.Button, label="↶ Undo", **btn)
        self.redo_btn = W(pn.widgets.Button, label="↷ Redo", **btn)
        self.add_latent_btn = W(pn.widgets.Button, label="+ Latent", **accent)
        self.add_obs_btn = W(pn.widgets.Button, label="+ Observed", **accent)
        self.layout_btn = W(pn.widgets.Button, label="Auto-layout", width=100, margin=(4, 3))
        self.undo_btn.on_click(g(lambda e: self.undo()))
        self.redo_btn.on_click(g(lambda e: self.redo()))
        self.add_latent_btn.on_click(g(lambda e: self.new_node("latent")))
        self.add_obs_btn.on_click(g(lambda e: self.new_node("observed")))
        self.layout_btn.on_click(g(lambda e: self.auto_layout()))
        self.canvas = pn.Column(self._new_flow(), sizing_mode="stretch_width", margin=0)
        hint = Text("Drag from a node's right handle to another node's left handle to make it a parent (its name "
                    "goes into the child's arguments). Drag a node into a plate's box to put it in that plate. "
                    "Select and press Delete to remove.", styles=HINT, margin=(0, 10))
        self.node_form = NodeForm(g(self._apply_node), g(self.delete_node))
        self.plate_form = PlateForm(g(self.add_plate), g(self.resize_plate), g(self.remove_plate),
                                    g(self.rename_plate))
        self.data_form = DataForm(D.bundled(), F.data_from_upload, D.parse_table, g(self.attach_data), D.group_pad,
                                  D.describe, self.jobs.submit)
        self.editor_tabs = pn.Tabs(("Node", self.node_form.view), ("Plates", self.plate_form.view),
                                   ("Data", self.data_form.view), dynamic=False, sizing_mode="stretch_width",
                                   styles={"border-top": "1px solid #ddd"})
        left = pn.Column(wrap(self.undo_btn, self.redo_btn, self.add_latent_btn, self.add_obs_btn, self.layout_btn),
                         self.canvas, hint, self.editor_tabs, sizing_mode="stretch_width", min_width=460,
                         styles={"flex": "1 1 560px"}, margin=(0, 6))

        # right: run controls above the views
        self.method = W(pn.widgets.Select, label="Method", options=list(METHODS), value=s["method"], width=86,
                        css_classes=["wb-method"])
        self.K = W(pn.widgets.IntInput, label="K", value=int(s["K"]), start=1, end=100000, width=76,
                   css_classes=["wb-K"])
        self.iters = W(pn.widgets.IntInput, label="Iterations (at most)", value=int(s["iters"]), start=1, end=100000,
                       width=120, css_classes=["wb-iters"])
        self.lr = W(pn.widgets.FloatInput, label="Learning rate", value=float(s["lr"]), start=1e-6, step=0.01,
                    width=96)
        self.seed = W(pn.widgets.IntInput, label="Seed", value=int(s["seed"]), start=0, width=66)
        self.device = W(pn.widgets.Select, label="Device", options=["auto", "cpu", "cuda"], value=s["device"],
                        width=72)
        rb = dict(margin=(4, 4, 4, 8))
        self.run_btn = W(pn.widgets.Button, label="▶ Run", button_type="primary", width=80, **rb)
        self.stop_btn = W(pn.widgets.Button, label="■ Stop", button_type="danger", width=72, disabled=True, **rb)
        self.clear_btn = W(pn.widgets.Button, label="Clear runs", width=90, **rb)
        self.run_btn.on_click(g(lambda e: self.run()))
        self.stop_btn.on_click(g(lambda e: self.stop()))
        self.clear_btn.on_click(g(lambda e: self.clear_runs()))
        self.progress = pn.indicators.Progress(value=0, max=int(s["iters"]), bar_color="primary", height=14,
                                               sizing_mode="stretch_width", margin=(14, 10, 0, 10))
        self.status = Text("Ready.", margin=(0, 10), css_classes=["run-status"])
        self.K.param.watch(g(lambda e: self.update_einsum()), "value")
        self.method.param.watch(g(lambda e: self.update_einsum()), "value")
        controls = pn.Column(wrap(self.method, self.K, self.iters, self.lr, self.seed, self.device),
                             wrap(self.run_btn, self.stop_btn, self.clear_btn, self.progress),
                             self.status, sizing_mode="stretch_width",
                             styles={"background": "#f6f8fa", "border-radius": "6px"})
        self.views = ViewTabs(g, self.alert, self._push)
        self.compare = CompareTab(self.ed.document)   # sweeps of the model on screen
        self.add_tab("Compare", self.compare)
        self.clear_views()
        right = pn.Column(controls, self.views.view, sizing_mode="stretch_width", min_width=460,
                          styles={"flex": "1 1 560px"}, margin=(0, 6))
        main = pn.FlexBox(left, right, flex_wrap="wrap", align_items="flex-start", sizing_mode="stretch_width")
        self.layout = pn.Column(header, filebar, self.confirm, self.restore_row, self.alerts, main,
                                sizing_mode="stretch_width")

    def _new_flow(self):
        """A canvas for the model on screen; a new one fits the view to the model (React
        Flow fits only when it mounts)."""
        g = self._guard
        self.flow = C.make_flow(self.ed.model, self.ed.pos)
        self.flow.on("edge_added", g(self._on_edge_added))
        self.flow.on("edge_deleted", g(self._on_edge_deleted))
        self.flow.on("node_deleted", g(self._on_node_deleted))
        self.flow.on("node_moved", g(self._on_node_moved))
        self.flow.on("selection_changed", g(self._on_selection))
        return self.flow

    def _refit(self):
        self.canvas.objects = [self._new_flow()]
        self.refresh_canvas()

    def add_tab(self, title: str, view) -> None:
        """Mount another view (e.g. a Compare tab) after the built-in ones."""
        self.views.add(title, view)

    def panel(self):
        return self.layout

    def __panel__(self):
        return self.layout

    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.layout._repr_mimebundle_(include, exclude)

    @contextlib.contextmanager
    def _batch(self):
        """Changes the app makes, sent to a notebook together. Panel inlines its stylesheets
        when the cell renders (pn.extension(inline=True)) but links those of components added
        later (a figure, a message, a canvas) from its CDN, which a classroom or a cluster
        cannot reach (holoviz/panel#7073): they are inlined too, before the batch goes."""
        if not self.layout._comms or self._batching:     # not in a notebook, or inside a batch
            yield
            return
        from bokeh.models import UIElement
        from panel.io.notebook import block_comm, patch_inline_stylesheets, push
        shown = [(root, self.layout._comms[ref][0]) for ref, (root, _) in list(self.layout._models.items())
                 if ref in self.layout._comms and root.document is not None]
        self._batching = True
        try:
            with block_comm():        # Panel pushes each change at once otherwise
                yield
                for root, _ in shown:
                    for m in root.references():
                        if isinstance(m, UIElement):
                            patch_inline_stylesheets(m)
        finally:
            self._batching = False
        for root, comm in shown:
            push(root.document, comm)

    def servable(self, title: str = "kn-workbench"):
        return self.layout.servable(title=title)

    # ---- messages ----------------------------------------------------------------------
    def _guard(self, fn):
        """fn, but an unexpected exception becomes a message in the app (and a traceback in
        the log) instead of a silent failure; the model is left as it was."""
        def run(*args, **kwargs):
            with self._batch():
                try:
                    return fn(*args, **kwargs)
                except Exception as e:  # the UI must survive any bug
                    traceback.print_exc()
                    self.alert(f"Something went wrong: {type(e).__name__}: {e}. The model is unchanged.")
                    with contextlib.suppress(Exception):
                        self.refresh_canvas(force=True)
        return run

    def alert(self, message: str, kind: str = "danger"):
        """Show one message above the canvas; it replaces the one before (messages do not
        pile up). The text is escaped: see views.safe_html."""
        pane = pn.pane.HTML(f'<div class="wb-alert wb-alert-{kind}">{safe_html(message)}</div>',
                            sizing_mode="stretch_width", margin=(2, 0), css_classes=[f"wb-alert-{kind}"])
        close = W(pn.widgets.Button, label="✕", width=30, margin=(6, 4), button_type="light")
        row = pn.Row(pane, close, sizing_mode="stretch_width")
        row._wb_kind, row._wb_text = kind, message
        close.on_click(lambda e: self.alerts.remove(row) if row in self.alerts else None)
        self.alerts.objects = [row]

    def messages(self, kind: str | None = None) -> list[str]:
        """The text of the messages shown (for scripts and tests)."""
        return [r._wb_text for r in self.alerts if kind is None or r._wb_kind == kind]

    def _try(self, fn, *args) -> bool:
        """Call an Edited method; a refusal becomes a message and redraws the canvas as the
        model is (a refused gesture snaps back)."""
        try:
            fn(*args)
        except ModelError as e:
            self.alert(str(e))
            self.refresh_canvas(force=True)
            return False
        return True

    # ---- editing -----------------------------------------------------------------------
    @property
    def model(self) -> Model:
        return self.ed.model

    def edited(self):
        """After an edit of the model on screen: redraw (fitting the view to a canvas laid out
        again), autosave."""
        if self.ed.layouts != self._layouts:
            self._layouts = self.ed.layouts
            self._refit()
        self.refresh()
        self._autosave()

    def undo(self):
        if self._try(self.ed.undo):
            self.edited()

    def redo(self):
        if self._try(self.ed.redo):
            self.edited()

    def _apply_node(self, original, fields, error):
        if error:
            self.alert(f"Node not changed: {error}")      # the form keeps what was typed
            return
        try:
            what = self.ed.apply_node(original, fields)
        except ModelError as e:
            self.alert(str(e))
            self.refresh_canvas(force=True)
            return
        self.node_form.original = fields["name"]
        self.edited()
        self.node_form.show(self.model, fields["name"])
        self.alert(f"{what}: done.", "success")

    def new_node(self, kind: str):
        """Open the node form for a new latent or observed node."""
        self.node_form.new(self.model, kind, suggest(self.model, "z" if kind == "latent" else "x"))
        self.editor_tabs.active = 0

    def delete_node(self, name) -> bool:
        if not self._try(self.ed.delete_node, name):
            return False
        self.node_form.clear()
        self.edited()
        self.alert(f"Deleted node {name!r}.", "success")
        return True

    def connect(self, parent: str, child: str) -> bool:
        """An edge parent -> child: put `parent` into one of child's arguments."""
        try:
            arg, value = self.ed.connect(parent, child)
        except ModelError as e:
            self.alert(str(e))
            self.refresh_canvas(force=True)
            return False
        self.edited()
        note = (f"Edge {parent} → {child}: `{parent}` was put into {child}'s argument **{arg}**, now `{value}`. "
                f"Edges come from arguments: edit the expression below to use {parent} differently.")
        self.node_form.show(self.model, child, note=note, highlight=arg)
        self.editor_tabs.active = 0
        self.alert(note, "info")
        return True

    def disconnect(self, parent: str, child: str) -> bool:
        try:
            changed = self.ed.disconnect(parent, child)
        except ModelError as e:
            self.alert(str(e))
            self.node_form.show(self.model, child) if child in self.model.graph else None
            self.refresh_canvas(force=True)
            return False
        self.edited()
        said = "; ".join(f"**{a}** was `{json.dumps(o) if not isinstance(o, str) else o}`, now "
                         f"`{json.dumps(n) if not isinstance(n, str) else n}`" for a, (o, n) in changed.items())
        self.alert(f"Removed edge {parent} → {child}: in {child}, {said} (Undo puts it back).", "info")
        return True

    def add_plate(self, name, size, parent):
        if self._try(self.ed.add_plate, name, size, parent):
            self.edited()
            self.alert(f"Added plate {name!r} of size {size}. Drag nodes into its box, or pick it in a node's form.",
                       "success")

    def resize_plate(self, name, size):
        if self._try(self.ed.resize_plate, name, size):
            self.edited()
            self.alert(f"Plate {name!r} has size {size}.", "success")

    def rename_plate(self, old, new):
        if self._try(self.ed.rename, "plate", old, new):
            self.edited()
            self.alert(f"Renamed plate {old!r} to {new!r}.", "success")

    def remove_plate(self, name):
        if self._try(self.ed.remove_plate, name):
            self.edited()
            self.alert(f"Removed plate {name!r}.", "success")

    def attach_data(self, name, arr):
        if self._try(self.ed.attach_data, name, arr):
            self.edited()
            self.alert(f"Attached data {name!r} ({D.describe(arr)}).", "success")

    def rename_model(self, name):
        if name == self.model.name:
            return
        if self._try(self.ed.rename_model, name):
            self.edited()
        else:
            self.model_name.value = self.model.name

    def auto_layout(self):
        self.ed.auto_layout()
        self.edited()

    # ---- canvas events -------------------------------------------------------------------
    def _on_edge_added(self, payload, *_):
        e = payload.get("edge") or {}
        self.connect(e.get("source"), e.get("target"))

    def _on_edge_deleted(self, payload, *_):
        ids = [e for e in (payload.get("edge_ids") or [payload.get("edge_id")]) if e and "->" in e]
        kept, when = self._kept_edges
        if ids and set(ids) <= kept and time.monotonic() - when < 2:   # the edges of a refused deletion stay
            self._kept_edges = (kept - set(ids), when)
            self.refresh_canvas(force=True)
            return
        depth, changed = len(self.ed.undo_stack), False
        for eid in ids:
            a, b = eid.split("->", 1)
            b = b.split(":")[0]
            if a in self.model.graph and b in self.model.graph:
                changed |= self.disconnect(a, b)
        edges, undone, when = self._last_edges
        now = time.monotonic()
        if now - when > 1:                     # the browser reports a keypress's edges one by one
            edges, undone = set(), 0
        self._last_edges = (edges | set(ids), undone + len(self.ed.undo_stack) - depth, now)
        if not changed:
            self.refresh_canvas(force=True)

    def _on_node_deleted(self, payload, *_):
        """Delete on a selected node. The browser also deletes its edges, in a message of
        their own, before or after this one: an edge out of the node is not undone silently
        (a child that uses the node keeps it, and the deletion is refused)."""
        ids = [n for n in (payload.get("node_ids") or [payload.get("node_id")]) if n in self.model.graph]
        edges, undone, when = self._last_edges
        seen = set()
        if undone and time.monotonic() - when < 2 and any(e.split("->")[0] in ids for e in edges):
            for _ in range(undone):            # the same keypress: the children's arguments as they were
                self.ed.undo()
            self.ed.redo_stack.clear()
            seen = edges
        self._last_edges = (set(), 0, 0.0)
        for nid in ids:
            if not self.delete_node(nid):      # the browser's messages about its edges may be still to come
                g = self.model.graph
                touching = {f"{a}->{b}" for a, b in [*g.in_edges(nid), *g.out_edges(nid)]}
                self._kept_edges = (self._kept_edges[0] | (touching - seen), time.monotonic())
        self.edited()
        self.refresh_canvas(force=True)

    def _on_node_moved(self, payload, *_):
        name, p = payload.get("node_id"), payload.get("position") or {}
        if name not in self.model.graph or "x" not in p:
            return
        try:
            where = self.ed.move_node(name, float(p["x"]), float(p["y"]))
        except ModelError as e:
            self.alert(str(e))
            self.refresh_canvas(force=True)        # back where it was
            return
        if where is None:
            self.refresh_canvas()
            self._autosave()
            return
        self.edited()
        self.refresh_canvas(force=True)
        self.alert(f"{name!r} is now in {where}.", "success")

    def _on_selection(self, payload, *_):
        nodes = [n for n in (payload.get("nodes") or []) if n in self.model.graph]
        if nodes == self._selected:
            return                  # a redraw re-sent the selection: no jump to the Node tab
        self._selected = nodes
        if len(nodes) == 1 and nodes[0] != self.node_form.original:
            self.node_form.show(self.model, nodes[0])
            self.editor_tabs.active = 0

    # ---- files ------------------------------------------------------------------------------
    def _replace(self, model: Model, name: str | None, said: str, pos: dict | None = None):
        """Another model on screen: the run on the old one stops, the views are cleared."""
        if self.runs.running:
            self.runs.stop("stopped: another model was opened")
        self.ed.replace(model, name, pos=pos)
        self._layouts = self.ed.layouts
        if self.K.value == self._auto_K:
            self._auto_K = self.K.value = default_settings(model)["K"]
        self.save_name.value = name or ""
        self.node_form.clear()
        self._selected = []
        self.clear_views()
        self._refit()
        self.edited()
        self.alert(said, "success")

    def _load(self, fn, what: str, name: str | None, said: str) -> None:
        """Load, lay out and draw the plate diagram off the event loop (served sessions: the
        Graphviz runs are the slow part for a big model), then show the model."""
        def work():
            model = fn()
            dot = V.plate_diagram_dot(model) if len(model.graph) else None
            return model, layout_of(model), (dot, V.render_svg(dot) if dot else None)

        def done(out, err):
            if err is not None:
                msg = str(err) if isinstance(err, ModelError) else f"{type(err).__name__}: {err}"
                self.alert(f"Could not open {what}: {msg}")
                return
            model, pos, svg = out
            self.views.draw_diagram(model, svg=svg)
            self._replace(model, name, said, pos)
        self.jobs.submit(work, done, f"opening {what}")
        self._pump_start()

    def open(self, name) -> None:
        """Open workspace file `name` (a plain file name from the list)."""
        if not name:
            self.alert("The workspace has no model files yet: Save one, or load an example.", "info")
            return
        try:
            fname = F.plain_name(name)
        except ModelError as e:
            self.alert(str(e))
            return
        self._load(lambda: self.ws.load(fname), fname, fname, f"Opened {fname}.")

    def load_example(self, name) -> None:
        if name:
            self._load(lambda: self.ws.load_gallery(name), f"example {name}", None,
                       f"Loaded the example {name!r} (read-only: Save puts a copy in the workspace).")

    def new_model(self):
        self._replace(Model("untitled"), None, "A new, empty model: add a latent node (+ Latent).")

    def save(self, name, overwrite: bool = False) -> bool:
        """Save into the workspace as file `name` (a plain file name); an existing file is
        replaced only with overwrite=True (the app asks first)."""
        self.confirm.visible = False
        if not (name or "").strip():
            self.alert("Name the file first (e.g. my_model): Save writes into the workspace.", "info")
            return False
        try:
            written = self.ws.save(name, self._saveable(), overwrite=overwrite)
        except F.Exists as e:
            self.confirm_text.object = safe_html(f"**{e.name}** exists in the workspace. Replace it?")
            self.confirm.visible = True
            return False
        except (ModelError, OSError) as e:
            self.alert(f"Not saved: {e}")
            return False
        self.ed.saved(written)
        self.save_name.value = written
        self.refresh_files()
        self.refresh_title()
        self._discard_autosave()
        self.alert(f"Saved {self.model.name!r} as {written} in the workspace.", "success")
        return True

    def _saveable(self) -> Model:
        m = self.model.copy()
        m.extras["layout"] = self.ed.document()["layout"]
        return m

    def _download(self):
        stem = Path(self.ed.name).stem if self.ed.name else re.sub(r"[^A-Za-z0-9_-]+", "_", self.model.name)
        self.download.filename = f"{stem.strip('_')[:60] or 'model'}.json"
        return io.StringIO(json.dumps(self.ed.document(), indent=1))

    def _uploaded(self, e):
        if not self.upload.value:
            return
        content = self.upload.value
        label = "".join(c for c in (self.upload.filename or "the upload") if c.isprintable())[:80]
        self._load(lambda: F.model_from_upload(label, content), label, None, f"Loaded {label}.")

    # ---- autosave -------------------------------------------------------------------------------
    def _autosave(self):
        """Keep the model in the browser (see workbench.browser) while it has unsaved edits."""
        if not self.ed.dirty:
            return
        doc = json.dumps({"saved_at": time.strftime("%Y-%m-%d %H:%M"), "model": self.ed.document()})
        if len(doc) <= MAX_CHARS:
            self.store.value = doc

    def _discard_autosave(self):
        self.restore_row.visible = False
        self.store.value = ""
        self.store.stored = ""

    def _offer_restore(self, e=None):
        held = self.store.stored
        if not held or len(held) > MAX_CHARS:
            return
        try:
            kept = json.loads(held)
            doc, when = kept["model"], str(kept.get("saved_at", ""))[:20]
        except (ValueError, KeyError, TypeError):
            return
        if doc == self.ed.document():
            return
        name = doc.get("name", "untitled") if isinstance(doc, dict) else "untitled"
        self.restore_text.object = safe_html(f"Unsaved work from {when}: **{str(name)[:100]}**. Restore it?")
        self.restore_row.visible = True

    def restore(self):
        try:
            if len(self.store.stored) > MAX_CHARS:
                raise ModelError(f"it is over {MAX_CHARS:,} characters")
            doc = json.loads(self.store.stored)["model"]
            model = Model.from_dict(doc)      # checked like an upload (no data_file)
        except (ModelError, ValueError, KeyError, TypeError, RecursionError) as e:
            self.alert(f"Could not restore the autosaved model: {e}")
            self._discard_autosave()
            return
        self.restore_row.visible = False
        self._replace(model, None, f"Restored {model.name!r} (not saved yet: name it and Save).")
        self.ed.version += 1          # unsaved: keep autosaving it
        self._autosave()

    # ---- views ------------------------------------------------------------------------------
    def exact(self) -> dict:
        """The exact answers for the model on screen, worked out once per edit (the ELBO view
        asks for the reference on every poll, and a closed form solves a linear system)."""
        return dict(self._exact()[0])

    def reference(self) -> float | None:
        """The exact log evidence, if the model has a closed form (an "@log_evidence" entry
        of the exact dict, else workbench.exact.log_evidence)."""
        return self._exact()[1]

    def _exact(self) -> tuple[dict, float | None]:
        stamp = (self.ed.key, self.ed.version, id(self.model))
        if self._exact_cache[0] != stamp:
            out = dict(self.model.extras.get("exact") or {})
            if callable(self.exact_arg):
                out.update(self.exact_arg(self.model) or {})
            elif self.exact_arg:
                out.update(self.exact_arg)
            ref = float(out["@log_evidence"]) if "@log_evidence" in out else E.log_evidence(self.model)
            self._exact_cache = (stamp, (out, ref))
        return self._exact_cache[1]

    def refresh_files(self):
        names = self.ws.names()
        self.files.param.update(options=names, value=self.ed.name if self.ed.name in names else
                                (names[0] if names else None))

    def refresh_title(self):
        m, ed = self.model, self.ed
        where = (f"workspace file {ed.name}" + (" (unsaved edits)" if ed.dirty else "")) if ed.name else \
            ("not saved yet" if len(m.graph) or ed.dirty else "")
        self.title.object = safe_html(f"{len(m.latents)} latent, {len(m.observed)} observed, {len(m.plates)} plates"
                                      + (f" · {where}" if where else ""))
        if self.model_name.value != m.name:
            self.model_name.value = m.name

    def refresh(self):
        m = self.model
        self.refresh_title()
        self.undo_btn.disabled = not self.ed.undo_stack
        self.redo_btn.disabled = not self.ed.redo_stack
        self.refresh_files()
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
        run = self.views.shown if self.views.shown is not None else self._streaming()
        if run is None or run.last_ess is None:
            return None, None
        return {k: v for k, v in run.last_ess.items() if k in self.model.graph}, run.K

    def _streaming(self):
        run = self.runs.current
        return run if run is not None and run.model_key == self.ed.key else None

    def refresh_canvas(self, force: bool = False):
        """Draw the model as it is. force: even if nothing changed here (the browser drew a
        gesture the model refused)."""
        ess, K = self._ess_for_model()
        nodes = C.canvas_nodes(self.model, self.ed.pos, ess, K)
        if force:
            self._rev += 1
        edges = C.canvas_edges(self.model, self._rev)
        if force and nodes == self.flow.nodes:
            self.flow.param.trigger("nodes")
        else:
            self.flow.nodes = nodes
        self.flow.edges = edges

    def update_diagram(self):
        ess, K = self._ess_for_model()
        self.views.draw_diagram(self.model, ess, K)

    def update_einsum(self):
        self.views.draw_einsum(self.model, int(self.K.value), self.method.value)

    def clear_views(self):
        """The run views with nothing in them: the model on screen has no finished run."""
        self.views.clear()
        self.progress.value = 0
        self.status.object = safe_html("Ready.")
        self.draw_elbo()

    # ---- ELBO, grouped by model --------------------------------------------------------------
    def draw_elbo(self):
        """The current model's runs in one figure (live); earlier models' runs below, one
        figure each, so that no model's scale flattens another's."""
        groups: dict = {}
        for r in self.runs.runs:
            if r.model_key != self.ed.key:
                groups.setdefault(r.model_key, []).append(r)
        self.views.draw_elbo(self._mine(), list(reversed(groups.values())), self.reference(), self.model.name)

    def _mine(self) -> list:
        return [r for r in self.runs.runs if r.model_key == self.ed.key]

    # ---- running -------------------------------------------------------------------------------
    def settings(self) -> dict:
        return {"method": self.method.value, "K": int(self.K.value), "iters": int(self.iters.value),
                "lr": float(self.lr.value), "seed": int(self.seed.value), "device": self.device.value}

    def run(self) -> bool:
        try:
            run = self.runs.start(self.model, self.settings(), self.ed.key, self.ed.version, self.model.name)
        except ModelError as e:
            self.alert(str(e), "warning" if "already going" in str(e) else "danger")
            return False
        self.draw_elbo()
        self.progress.max, self.progress.value = int(run.settings["iters"]), 0
        self.status.object = safe_html(f"Starting {run.label}…")
        self.run_btn.disabled, self.stop_btn.disabled = True, False
        self._pump_start()
        return True

    def _pump_start(self):
        """Drain runs and loads on the session's event loop while there are any."""
        if not (self.runs.live or self.jobs.pending) or self._callback is not None:
            return
        if pn.state.curdoc is not None:          # a server session, or a notebook comm event
            self._callback = pn.state.add_periodic_callback(self.poll, period=200, start=True)
        elif _in_ipython():                        # run() called from a notebook cell
            threading.Thread(target=self._poll_loop, daemon=True, name="kn-poll").start()
        # else: no event loop (a script or a test): call wait() or poll() yourself

    def _poll_loop(self):
        while not self.poll():
            time.sleep(0.25)

    def stop(self):
        self.runs.stop()
        self.status.object = safe_html("Stopping after this iteration…")

    def clear_runs(self):
        self.runs.clear()
        self.draw_elbo()
        self.views.elbo_note.object = safe_html("Runs cleared.")

    def poll(self) -> bool:
        """Drain finished loads and the runs' events into the views (on the UI's event loop).
        True when nothing is left going."""
        with self._batch():
            return self._poll()

    def _poll(self) -> bool:
        self.jobs.drain()
        for ev in self.runs.drain():
            kind, run = ev[0], ev[1]
            mine = run.model_key == self.ed.key
            if kind == "steps":
                if mine:
                    self._show_steps(run, ev[2])
            elif kind == "status":
                if mine:
                    self.status.object = safe_html(ev[2])
            elif kind == "warn":
                self.alert(ev[2], "warning")
            elif kind == "error":
                if mine:
                    self.alert(f"Run stopped: {ev[2]}")
                    self.status.object = safe_html(f"Stopped: {ev[2]}")
            elif kind == "done":
                if mine:
                    self._finish(run)
                else:
                    self.draw_elbo()
        if not self.runs.live:
            self.run_btn.disabled, self.stop_btn.disabled = False, True
        ended = not (self.runs.live or self.jobs.pending)
        if ended and self._callback is not None:
            self._callback.stop()
            self._callback = None
        return ended

    def _show_steps(self, run, steps):
        if not self.views.stream_elbo(run, self._mine(), self.reference()):
            self.draw_elbo()
        last = steps[-1]
        self.progress.value = min(last.iteration, self.progress.max)
        self.status.object = safe_html(f"{run.label} · iteration {last.iteration}/{self.progress.max} · "
                                       f"ELBO {last.elbo:.4g} · {last.seconds * 1000:.0f} ms/it")
        self.views.draw_ess(run)

    def _push(self, pane):
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            with contextlib.suppress(Exception):
                pn.io.push_notebook(pane)

    def _finish(self, run):
        r = run.result
        warns = r.warnings
        self.status.object = safe_html(
            f"Done: {run.label} · log P_MP {r.log_marginal:.4g} ± {r.log_marginal_mcse:.2g} · {len(run.elbo)} "
            f"iterations" + (f" · {run.message}" if run.message else "")
            + (f" · **{len(warns)} warning{'s' * (len(warns) > 1)}**: see Posterior" if warns else ""))
        self.views.show_result(run, self.model, self.exact(), edited=run.version != self.ed.version)
        self.update_diagram()
        self.refresh_canvas()
        self.draw_elbo()

    def wait(self, timeout: float = 120.0) -> bool:
        """Block until the current run and loads end, draining updates (for scripts and tests)."""
        return wait_until(self.poll, timeout)
