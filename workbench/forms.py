"""Plain form editors beside the canvas: a node form generated from the distribution's
signature (engine.DISTRIBUTIONS), a plates form and a data form. Forms never touch the
model: they hand plain field dicts to callbacks, and the app decides. A refused edit
leaves the form as the user typed it. Text reaches the page through views.safe_html."""
from __future__ import annotations

import json

import numpy as np
import panel as pn

from engine import DISTRIBUTIONS, ModelError

from .compat import W
from .views import safe_html

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


def html_table(header: list, rows: list[list]) -> str:
    """An HTML table of escaped cells."""
    head = "".join(f"<th>{safe_html(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{safe_html(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="wb-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def Text(text: str = "", **kw):
    """An HTML pane showing `text` escaped (see safe_html); set it with .object = safe_html(...)."""
    return pn.pane.HTML(safe_html(text), **kw)


HINT = {"color": "#555", "font-size": "0.85em"}


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
        self.title = Text("", margin=(0, 5), css_classes=["wb-node-title"])
        self.note = Text("", visible=False, margin=(0, 5), css_classes=["wb-note"])
        self.name = W(pn.widgets.TextInput, label="Name (renaming updates every reference)", width=220,
                      css_classes=["wb-node-name"])
        self.kind = W(pn.widgets.RadioButtonGroup, options=["latent", "observed"], value="latent", button_type="light",
                                                width=160)
        self.dist = W(pn.widgets.Select, label="Distribution", options=sorted(DISTRIBUTIONS), value="Normal", width=170)
        self.dist_doc = Text("", margin=(0, 5), styles=HINT)
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
        self.clear()

    def _current_args(self) -> dict:
        return {a: w.value for a, w in self.arg_inputs.items() if w.value.strip()}

    def _build_args(self, values: dict, highlight: str | None = None):
        spec = DISTRIBUTIONS[self.dist.value]
        alts = {a: g for g in spec.one_of for a in g}
        self.dist_doc.object = safe_html(f"{spec.name}: {spec.doc}" +
                                         "".join(f"; exactly one of {', '.join(g)}" for g in spec.one_of))
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
        self.title.object = f"<h3>Node <code>{safe_html(name)}</code> ({safe_html(node.kind)})</h3>"
        self.name.value = name
        self.kind.value = node.kind
        self.dist.value = node.dist
        self._build_args({a: format_arg(v) for a, v in node.args.items()}, highlight)
        self.plate.value = node.plate or NONE
        self.shape.value = ", ".join(map(str, node.shape)) if node.shape else ""
        self.data.value = name if name in model.data else None
        self.data.visible = node.kind == "observed"
        self.delete.visible = True
        self.note.object, self.note.visible = safe_html(note or ""), bool(note)
        self.body.visible = True

    def new(self, model, kind: str, name: str, plate: str | None = None):
        self.set_choices(model)
        self.original = None
        self.title.object = f"<h3>New {safe_html(kind)} node</h3>"
        self.name.value = name
        self.kind.value = kind
        self.dist.value = "Normal"
        self._build_args({"loc": "0", "scale": "1"})
        self.plate.value = plate or NONE
        self.shape.value = ""
        self.data.value = self.data.options[0] if self.data.options else None
        self.data.visible = kind == "observed"
        self.delete.visible = False
        self.note.object = safe_html("Pick the data this node observes (attach data in the Data tab first)"
                                     if kind == "observed" else "")
        self.note.visible = kind == "observed"
        self.body.visible = True

    def clear(self):
        self.original = None
        self.title.object = "<h3>Node</h3><p>Select a node on the canvas, or add one.</p>"
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
    """Add, resize, rename and remove plates. Sizes go to the engine as typed (it refuses
    a size below 1 with its own message)."""

    def __init__(self, on_add, on_resize, on_remove, on_rename):
        self.table = Text("", margin=(0, 5))
        self.name = W(pn.widgets.TextInput, label="New plate", placeholder="name", width=120, css_classes=["wb-plate-name"])
        self.size = W(pn.widgets.IntInput, label="Size", value=3, width=80, css_classes=["wb-plate-size"])
        self.parent = W(pn.widgets.Select, label="Inside", options=[NONE], width=120)
        self.add = W(pn.widgets.Button, label="Add plate", button_type="primary", width=100)
        self.which = W(pn.widgets.Select, label="Plate", options=[], width=120)
        self.new_size = W(pn.widgets.IntInput, label="Size", value=1, width=80)
        self.new_name = W(pn.widgets.TextInput, label="Rename to", width=120)
        self.resize = W(pn.widgets.Button, label="Resize", width=80)
        self.rename = W(pn.widgets.Button, label="Rename", width=80)
        self.remove = W(pn.widgets.Button, label="Remove", button_type="danger", button_style="outline", width=80)
        self.add.on_click(lambda e: on_add(self.name.value.strip(), self.size.value,
                                           None if self.parent.value == NONE else self.parent.value))
        self.resize.on_click(lambda e: self.which.value and on_resize(self.which.value, self.new_size.value))
        self.rename.on_click(lambda e: self.which.value and on_rename(self.which.value, self.new_name.value.strip()))
        self.remove.on_click(lambda e: self.which.value and on_remove(self.which.value))
        self.which.param.watch(self._sync, "value")
        self._model = None
        hint = Text("Put a node in a plate with its form, or drag it into the plate's box on the canvas.", styles=HINT)
        self.view = pn.Column(self.table, pn.Row(self.name, self.size, self.parent), self.add, pn.layout.Divider(),
                              pn.Row(self.which, self.new_size, self.resize), pn.Row(self.new_name, self.rename),
                              self.remove, hint, sizing_mode="stretch_width")

    def _sync(self, e=None):
        if self._model is not None and self.which.value in self._model.plates:
            self.new_size.value = self._model.plates[self.which.value].size
            self.new_name.value = self.which.value

    def update(self, model):
        self._model = model
        rows = [[p.name, p.size, p.parent or "-", ", ".join(n.name for n in model.nodes if n.plate == p.name) or "-"]
                for p in model.plates.values()]
        self.table.object = html_table(["plate", "size", "inside", "nodes"], rows) if rows else "No plates yet."
        _set_options(self.parent, [NONE] + list(model.plates))
        _set_options(self.which, list(model.plates))
        self._sync()


class DataForm:
    """Attach data: numbers typed or pasted into a table, a bundled dataset, an uploaded
    .csv/.npz; optionally grouped into a padded (groups x max count) array for nested
    plates. `submit(fn, done, what)` runs a parse off the event loop (runs.Jobs.submit)."""

    def __init__(self, bundled: dict, read_upload, parse_table, on_attach, group_pad, describe, submit):
        self.bundled, self.read_upload, self.parse_table = bundled, read_upload, parse_table
        self.on_attach, self.group_pad, self.describe, self.submit = on_attach, group_pad, describe, submit
        self.sources: dict[str, dict] = {}
        self.table = Text("", margin=(0, 5), css_classes=["wb-data-table"])
        self.typed = W(pn.widgets.TextAreaInput, label="Type or paste numbers (a spreadsheet's cells; a first "
                       "row of names makes columns)", height=110, sizing_mode="stretch_width",
                       placeholder="28 8 -3 7 -1 1 18 12", css_classes=["wb-typed"])
        self.typed_name = W(pn.widgets.TextInput, label="Name in model", width=130, css_classes=["wb-typed-name"])
        self.typed_btn = W(pn.widgets.Button, label="Attach typed data", button_type="primary", width=150)
        self.source = W(pn.widgets.Select, label="Source", options=list(bundled), width=230)
        self.upload = W(pn.widgets.FileInput, accept=".csv,.npz", multiple=False, width=230)
        self.column = W(pn.widgets.Select, label="Column", options=[], width=130)
        self.group = W(pn.widgets.Select, label="Group by (optional)", options=[NONE], width=130)
        self.target = W(pn.widgets.TextInput, label="Name in model", width=130)
        self.attach = W(pn.widgets.Button, label="Attach data", button_type="primary", width=110)
        self.info = Text("", styles=HINT, css_classes=["wb-data-info"])
        self.source.param.watch(lambda e: self._load_source(), "value")
        self.column.param.watch(lambda e: self._column_changed(), "value")
        self.upload.param.watch(self._uploaded, "value")
        self.attach.on_click(lambda e: self._attach())
        self.typed_btn.on_click(lambda e: self._attach_typed())
        self.view = pn.Column(self.table, self.typed, pn.Row(self.typed_name, self.typed_btn), pn.layout.Divider(),
                              Text("**Or attach a column** of a bundled dataset or an upload (.csv columns or "
                                   ".npz arrays):", margin=(0, 5)),
                              self.source, self.upload, pn.Row(self.column, self.group), pn.Row(self.target),
                              self.attach, self.info, sizing_mode="stretch_width")
        self._load_source()

    def say(self, text: str):
        self.info.object = safe_html(text)

    def update(self, model):
        rows = [[k, self.describe(v), ", ".join(n.name for n in model.nodes if k in n.mentions() or n.name == k) or "-"]
                for k, v in model.data.items()]
        self.table.object = html_table(["data", "shape", "used by"], rows) if rows else "The model has no data yet."

    def _attach_typed(self):
        try:
            cols = self.parse_table(self.typed.value, self.typed_name.value.strip() or None)
        except ModelError as err:
            self.say(f"**Not attached:** {err}")
            return
        for name, arr in cols.items():
            self.on_attach(name, arr)

    def _columns(self) -> dict:
        name = self.source.value
        if name is None:
            return {}
        if name not in self.sources:
            try:
                self.sources[name] = self.bundled[name]()
            except Exception as e:  # a broken bundled file: say so, keep going
                self.say(f"Cannot load {name}: {e}")
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
                self.say(f"{self.column.value}: {self.describe(arr)}")

    def _uploaded(self, e):
        if not self.upload.value:
            return
        fname = "".join(c for c in (self.upload.filename or "upload.csv") if c.isprintable())[:80]
        content = self.upload.value

        def done(cols, err):
            if err is not None:
                self.say(f"**Upload refused:** {err}" if isinstance(err, ModelError)
                         else f"**Upload refused:** {type(err).__name__}: {err}")
                return
            key = f"uploaded: {fname}"
            self.sources[key] = cols
            self.bundled = {**self.bundled, key: (lambda c=cols: c)}
            self.source.options = list(self.bundled)
            self.source.value = key
            self._load_source()
        self.submit(lambda: self.read_upload(fname, content), done, f"reading {fname}")

    def _attach(self):
        cols = self._columns()
        col = self.column.value
        if not col or col not in cols:
            self.say("Choose a column to attach.")
            return
        arr = np.asarray(cols[col])
        if self.group.value not in (NONE, None):
            try:
                arr = self.group_pad(arr, cols[self.group.value])
            except ValueError as err:
                self.say(f"**Cannot group:** {err}")
                return
        self.on_attach(self.target.value.strip(), arr)
