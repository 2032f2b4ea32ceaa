"""Plain form editors beside the canvas: a node form generated from the distribution's
signature (engine.DISTRIBUTIONS), a plates form and a data form. Forms never touch the
model: they hand plain field dicts to callbacks, and the app decides."""
from __future__ import annotations

import json

import numpy as np
import panel as pn

from .compat import W

from engine import DISTRIBUTIONS

NONE = "(none)"


def parse_arg(text: str):
    """Form text -> a kn-model/1 argument: a number, a list, {"param": init}, or an expression."""
    t = (text or "").strip()
    if not t:
        return None
    try:
        v = json.loads(t)
    except ValueError:
        return t
    if isinstance(v, bool) or v is None:
        return t
    if isinstance(v, (int, float, list)) or (isinstance(v, dict) and set(v) == {"param"}):
        return v
    return t


def format_arg(v) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if hasattr(v, "init"):
        v = {"param": v.init}
    return json.dumps(v)


def parse_shape(text: str):
    t = (text or "").strip().strip("[]()")
    if not t:
        return None
    try:
        return [int(x) for x in t.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"shape {text!r}: write whole numbers, e.g. 3 or 2, 3") from None


def _set_options(select, options):
    """New options, keeping the value if it is still there (else the first option), set
    together so that the browser shows the value."""
    value = select.value if select.value in options else (options[0] if options else None)
    select.param.update(options=options, value=value)


class NodeForm:
    """Edit one node: name, kind, distribution, one field per argument of that
    distribution (from its DistSpec), plate, shape, and for observed nodes the data."""

    def __init__(self, on_apply, on_delete):
        self.on_apply, self.on_delete = on_apply, on_delete
        self.original: str | None = None
        self.title = pn.pane.Markdown("### Node\nSelect a node on the canvas, or add one.", margin=(0, 5))
        self.note = pn.pane.Alert("", alert_type="info", visible=False, margin=(0, 5))
        self.name = W(pn.widgets.TextInput, label="Name", width=140)
        self.kind = W(pn.widgets.RadioButtonGroup, options=["latent", "observed"], value="latent", button_type="light",
                                                width=160)
        self.dist = W(pn.widgets.Select, label="Distribution", options=sorted(DISTRIBUTIONS), value="Normal", width=170)
        self.dist_doc = pn.pane.Markdown("", margin=(0, 5), styles={"color": "#555", "font-size": "0.85em"})
        self.args = pn.Column(margin=0)
        self.arg_inputs: dict[str, pn.widgets.TextInput] = {}
        self.plate = W(pn.widgets.Select, label="Plate", options=[NONE], width=140)
        self.shape = W(pn.widgets.TextInput, label="Shape (optional)", placeholder="e.g. 3", width=140)
        self.data = W(pn.widgets.Select, label="Data (observed)", options=[], width=170)
        self.apply = W(pn.widgets.Button, label="Apply", button_type="primary", width=90)
        self.delete = W(pn.widgets.Button, label="Delete node", button_type="danger", button_style="outline", width=110)
        self.apply.on_click(lambda e: self._apply())
        self.delete.on_click(lambda e: self.original and self.on_delete(self.original))
        self.dist.param.watch(lambda e: self._build_args(self._current_args()), "value")
        self.kind.param.watch(lambda e: setattr(self.data, "visible", e.new == "observed"), "value")
        self.body = pn.Column(self.name, self.kind, pn.Row(self.dist, self.plate), self.dist_doc, self.args,
                              pn.Row(self.shape, self.data), pn.Row(self.apply, self.delete), visible=False,
                              margin=0)
        self.view = pn.Column(self.title, self.note, self.body, sizing_mode="stretch_width", margin=0)
        self._build_args({})

    def _current_args(self) -> dict:
        return {a: w.value for a, w in self.arg_inputs.items() if w.value.strip()}

    def _build_args(self, values: dict, highlight: str | None = None):
        spec = DISTRIBUTIONS[self.dist.value]
        alts = {a: g for g in spec.one_of for a in g}
        self.dist_doc.object = f"{spec.name}: {spec.doc}" + \
            "".join(f"; exactly one of {', '.join(g)}" for g in spec.one_of)
        inputs = {}
        for a in spec.args:
            if a in spec.defaults:
                hint = f"default {spec.defaults[a]}"
            elif a in alts:
                hint = f"one of {'/'.join(alts[a])}"
            else:
                hint = "required"
            w = W(pn.widgets.TextInput, label=f"{a}  ({hint})", value=str(values.get(a, "")),
                                     placeholder="number, [list], expression or {\"param\": 1.0}",
                                     sizing_mode="stretch_width", css_classes=[f"arg-{a}"])
            if a == highlight:
                w.styles = {"outline": "2px solid #1f6feb", "border-radius": "4px"}
            inputs[a] = w
        self.arg_inputs = inputs
        self.args.objects = list(inputs.values())

    def set_choices(self, model):
        _set_options(self.plate, [NONE] + list(model.plates))
        _set_options(self.data, sorted(model.data))

    def show(self, model, name: str, note: str | None = None, highlight: str | None = None):
        node = model.node(name)
        self.set_choices(model)
        self.original = name
        self.title.object = f"### Node `{name}`  ({node.kind})"
        self.name.value, self.name.disabled = name, True
        self.kind.value = node.kind
        self.dist.value = node.dist
        self._build_args({a: format_arg(v) for a, v in node.args.items()}, highlight)
        self.plate.value = node.plate or NONE
        self.shape.value = ", ".join(map(str, node.shape)) if node.shape else ""
        self.data.value = name if name in model.data else None
        self.data.visible = node.kind == "observed"
        self.delete.visible = True
        self.note.object, self.note.visible = note or "", bool(note)
        self.body.visible = True

    def new(self, model, kind: str, name: str, plate: str | None = None):
        self.set_choices(model)
        self.original = None
        self.title.object = f"### New {kind} node"
        self.name.value, self.name.disabled = name, False
        self.kind.value = kind
        self.dist.value = "Normal"
        self._build_args({"loc": "0", "scale": "1"})
        self.plate.value = plate or NONE
        self.shape.value = ""
        self.data.value = self.data.options[0] if self.data.options else None
        self.data.visible = kind == "observed"
        self.delete.visible = False
        self.note.object = ("Pick the data this node observes (attach data in the Data tab first)"
                            if kind == "observed" else "")
        self.note.visible = kind == "observed"
        self.body.visible = True

    def clear(self):
        self.original = None
        self.title.object = "### Node\nSelect a node on the canvas, or add one."
        self.note.visible = False
        self.body.visible = False

    def fields(self) -> dict:
        args = {}
        for a, w in self.arg_inputs.items():
            v = parse_arg(w.value)
            if v is not None:
                args[a] = v
        return {"name": self.name.value.strip(), "kind": self.kind.value, "dist": self.dist.value, "args": args,
                "plate": None if self.plate.value in (NONE, None) else self.plate.value,
                "shape": parse_shape(self.shape.value),
                "data": self.data.value if self.kind.value == "observed" else None}

    def _apply(self):
        try:
            fields = self.fields()
        except ValueError as e:
            self.on_apply(self.original, None, str(e))
            return
        self.on_apply(self.original, fields, None)


class PlateForm:
    def __init__(self, on_add, on_resize, on_remove):
        self.table = pn.pane.Markdown("", margin=(0, 5))
        self.name = W(pn.widgets.TextInput, label="New plate", placeholder="name", width=120)
        self.size = W(pn.widgets.IntInput, label="Size", value=3, start=1, width=80)
        self.parent = W(pn.widgets.Select, label="Inside", options=[NONE], width=120)
        self.add = W(pn.widgets.Button, label="Add plate", button_type="primary", width=100)
        self.which = W(pn.widgets.Select, label="Plate", options=[], width=120)
        self.new_size = W(pn.widgets.IntInput, label="Size", value=1, start=1, width=80)
        self.resize = W(pn.widgets.Button, label="Resize", width=80)
        self.remove = W(pn.widgets.Button, label="Remove", button_type="danger", button_style="outline", width=80)
        self.add.on_click(lambda e: on_add(self.name.value.strip(), int(self.size.value),
                                           None if self.parent.value == NONE else self.parent.value))
        self.resize.on_click(lambda e: self.which.value and on_resize(self.which.value, int(self.new_size.value)))
        self.remove.on_click(lambda e: self.which.value and on_remove(self.which.value))
        self.which.param.watch(self._sync_size, "value")
        self._model = None
        hint = pn.pane.Markdown("Put a node in a plate with its form, or drag it into the plate's box on the "
                                "canvas.", styles={"color": "#555", "font-size": "0.85em"})
        self.view = pn.Column(self.table, pn.Row(self.name, self.size, self.parent), self.add, pn.layout.Divider(),
                              pn.Row(self.which, self.new_size), pn.Row(self.resize, self.remove), hint,
                              sizing_mode="stretch_width")

    def _sync_size(self, e=None):
        if self._model is not None and self.which.value in self._model.plates:
            self.new_size.value = self._model.plates[self.which.value].size

    def update(self, model):
        self._model = model
        rows = ["| plate | size | inside | nodes |", "|---|---|---|---|"]
        for p in model.plates.values():
            members = ", ".join(n.name for n in model.nodes if n.plate == p.name) or "-"
            rows.append(f"| {p.name} | {p.size} | {p.parent or '-'} | {members} |")
        self.table.object = "\n".join(rows) if model.plates else "No plates yet."
        _set_options(self.parent, [NONE] + list(model.plates))
        _set_options(self.which, list(model.plates))
        self._sync_size()


class DataForm:
    """Attach data: from a bundled dataset, an uploaded .csv/.npz, or the model's own
    arrays; optionally grouped into a padded (groups x max count) array for nested plates."""

    def __init__(self, bundled: dict, read_upload, on_attach, group_pad, describe):
        self.bundled, self.read_upload, self.on_attach = bundled, read_upload, on_attach
        self.group_pad, self.describe = group_pad, describe
        self.sources: dict[str, dict] = {}
        self.table = pn.pane.Markdown("", margin=(0, 5))
        self.source = W(pn.widgets.Select, label="Source", options=list(bundled), width=230)
        self.upload = W(pn.widgets.FileInput, accept=".csv,.npz", multiple=False, width=230)
        self.column = W(pn.widgets.Select, label="Column", options=[], width=130)
        self.group = W(pn.widgets.Select, label="Group by (optional)", options=[NONE], width=130)
        self.target = W(pn.widgets.TextInput, label="Name in model", width=130)
        self.attach = W(pn.widgets.Button, label="Attach data", button_type="primary", width=110)
        self.info = pn.pane.Markdown("", styles={"color": "#555", "font-size": "0.85em"})
        self.source.param.watch(lambda e: self._load_source(), "value")
        self.column.param.watch(lambda e: self._column_changed(), "value")
        self.upload.param.watch(self._uploaded, "value")
        self.attach.on_click(lambda e: self._attach())
        self.view = pn.Column(self.table, pn.pane.Markdown("**Attach data** from a bundled dataset or an upload "
                                                           "(.csv columns or .npz arrays):", margin=(0, 5)),
                              self.source, self.upload, pn.Row(self.column, self.group), pn.Row(self.target),
                              self.attach, self.info, sizing_mode="stretch_width")
        self._load_source()

    def update(self, model):
        rows = ["| data | shape | used by |", "|---|---|---|"]
        for k, v in model.data.items():
            users = [n.name for n in model.nodes if k in n.mentions() or n.name == k]
            rows.append(f"| {k} | {self.describe(v)} | {', '.join(users) or '-'} |")
        self.table.object = "\n".join(rows) if model.data else "The model has no data yet."

    def _columns(self) -> dict:
        name = self.source.value
        if name is None:
            return {}
        if name not in self.sources:
            try:
                self.sources[name] = self.bundled[name]()
            except Exception as e:  # a broken bundled file: say so, keep going
                self.info.object = f"Cannot load {name}: {e}"
                self.sources[name] = {}
        return self.sources[name]

    def _load_source(self):
        cols = self._columns()
        _set_options(self.column, list(cols))
        _set_options(self.group, [NONE] + list(cols))
        self._column_changed()

    def _column_changed(self):
        if self.column.value:
            self.target.value = self.column.value
            arr = self._columns().get(self.column.value)
            if arr is not None:
                self.info.object = f"{self.column.value}: {self.describe(arr)}"

    def _uploaded(self, e):
        if not self.upload.value:
            return
        fname = self.upload.filename or "upload.csv"
        try:
            cols = self.read_upload(fname, self.upload.value)
        except ValueError as err:
            self.info.object = f"**Upload refused:** {err}"
            return
        key = f"uploaded: {fname}"
        self.sources[key] = cols
        self.bundled = {**self.bundled, key: (lambda c=cols: c)}
        self.source.options = list(self.bundled)
        self.source.value = key
        self._load_source()

    def _attach(self):
        cols = self._columns()
        col = self.column.value
        if not col or col not in cols:
            self.info.object = "Choose a column to attach."
            return
        arr = np.asarray(cols[col])
        if self.group.value not in (NONE, None):
            try:
                arr = self.group_pad(arr, cols[self.group.value])
            except ValueError as err:
                self.info.object = f"**Cannot group:** {err}"
                return
        self.on_attach(self.target.value.strip(), arr)
