"""The edited model: the engine Model on screen, its canvas positions, undo/redo, and the
name it is saved under. Plain Python (no Panel): the app's layout calls these methods and
shows what they return or the ModelError they raise.

Every edit is tried on a copy and validated; an edit that fails raises ModelError
("... refused: why. The model is unchanged.") and leaves model and positions as they
were. Undo/redo keep kn-model/1 documents with positions. `key` names the model on
screen (it changes when another model replaces it) and `version` counts its edits, so
that a run and a view know which model they belong to.
"""
from __future__ import annotations

import io
import itertools
import re
import tokenize

from engine import DISTRIBUTIONS, Model, ModelError

from . import canvas as C

NEUTRAL = {"scale": 1.0, "rate": 1.0, "concentration": 1.0, "concentration1": 1.0, "concentration0": 1.0,
           "df": 3.0, "probs": 0.5, "total_count": 1, "high": 1.0}
UNDO_DEPTH = 100
MAX_NAME = 100
_keys = itertools.count(1)


def suggest(model, stem: str) -> str:
    """The first of stem1, stem2, ... that names no node, plate or data."""
    i = 1
    while f"{stem}{i}" in model.graph or f"{stem}{i}" in model.plates or f"{stem}{i}" in model.data:
        i += 1
    return f"{stem}{i}"


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


def rename_in_expression(text: str, old: str, new: str) -> str:
    """`text` with every name token `old` replaced by `new` (not keyword arguments such as
    `axis=`, not parts of longer names). Text that does not tokenize is left as it is."""
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return text
    lines = text.splitlines(keepends=True) or [""]
    starts = [0]
    for ln in lines:
        starts.append(starts[-1] + len(ln))
    spans = [(starts[t.start[0] - 1] + t.start[1], starts[t.end[0] - 1] + t.end[1])
             for i, t in enumerate(toks)
             if t.type == tokenize.NAME and t.string == old
             and not (i + 1 < len(toks) and toks[i + 1].string == "=")]
    for a, b in reversed(spans):
        text = text[:a] + new + text[b:]
    return text


def _rename_exact_key(key: str, old: str, new: str) -> str:
    return new + key[len(old):] if key == old or key.startswith(old + "[") else key


def rename_document(doc: dict, what: str, old: str, new: str) -> dict:
    """A kn-model/1 document with node, data or plate `old` renamed `new`, every
    reference following (expressions, data, plates, proposals, layout, exact)."""
    doc = {**doc, "nodes": [dict(n, args=dict(n.get("args") or {})) for n in doc.get("nodes", [])],
           "plates": [dict(p) for p in doc.get("plates", [])], "data": dict(doc.get("data") or {})}
    if what in ("node", "data"):
        for n in doc["nodes"]:
            if n["name"] == old:
                n["name"] = new
            n["args"] = {a: rename_in_expression(v, old, new) if isinstance(v, str) else v
                         for a, v in n["args"].items()}
        for field in ("data", "data_plates", "proposal"):
            if field in doc and old in doc[field]:
                doc[field] = {(new if k == old else k): v for k, v in doc[field].items()}
        if isinstance(doc.get("exact"), dict):
            doc["exact"] = {_rename_exact_key(k, old, new): v for k, v in doc["exact"].items()}
        key = old
    elif what == "plate":
        for p in doc["plates"]:
            if p["name"] == old:
                p["name"] = new
            if p.get("in") == old:
                p["in"] = new
        for n in doc["nodes"]:
            if n.get("plate") == old:
                n["plate"] = new
        if "data_plates" in doc:
            doc["data_plates"] = {k: [new if p == old else p for p in v] for k, v in doc["data_plates"].items()}
        key = f"plate:{old}"
    else:
        raise ValueError(f"rename what? {what!r}")
    if isinstance(doc.get("layout"), dict) and key in doc["layout"]:
        doc["layout"] = {(new if what != "plate" else f"plate:{new}") if k == key else k: v
                         for k, v in doc["layout"].items()}
    return doc


def layout_of(model) -> dict:
    """Canvas positions: the model's `layout` field if it covers every node, else Graphviz's."""
    return _layout_from(model) or C.auto_layout(model)


def _layout_from(model) -> dict | None:
    """Canvas positions kept in the model's `layout` field, if they cover every node."""
    lay = model.extras.get("layout")
    if not isinstance(lay, dict):
        return None
    pos = {}
    for k, v in lay.items():
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(c, (int, float)) for c in v):
            pos[str(k)] = (float(v[0]), float(v[1]))
    return pos if all(n in pos for n in model.graph) else None


class Edited:
    """The model on screen and what was done to it."""

    def __init__(self, model: Model | None = None, name: str | None = None):
        self.undo_stack: list[tuple[dict, dict]] = []
        self.redo_stack: list[tuple[dict, dict]] = []
        self.replace(model if model is not None else Model("untitled"), name, keep_history=False)

    # ---- whole models ------------------------------------------------------------------
    def replace(self, model: Model, name: str | None = None, keep_history: bool = True,
                pos: dict | None = None) -> None:
        """Show another model (opened, uploaded, new, restored): a new key; the one it
        replaces stays one undo away. `name`: its workspace file name, None if it has none.
        `pos`: its canvas positions, if laid out already (see layout_of)."""
        if keep_history:
            self._push()
        self.model = model
        self.name = name
        self.pos = pos if pos is not None else layout_of(model)
        self.layouts = 0             # how often the canvas was laid out again (the view then refits)
        self.key = next(_keys)
        self.version = self.saved_version = 0

    @property
    def dirty(self) -> bool:
        """Edited since it was opened, loaded or saved."""
        return self.version != self.saved_version

    def saved(self, name: str) -> None:
        self.name, self.saved_version = name, self.version

    def document(self) -> dict:
        """The kn-model/1 document, canvas positions in its `layout` field."""
        doc = self.model.to_dict()
        doc["layout"] = {k: [round(x), round(y)] for k, (x, y) in self.pos.items()
                         if k in self.model.graph or (k.startswith("plate:") and k[6:] in self.model.plates)}
        return doc

    # ---- the edit protocol -------------------------------------------------------------
    def _push(self) -> None:
        self.undo_stack.append((self.model.to_dict(), dict(self.pos)))
        del self.undo_stack[:-UNDO_DEPTH]
        self.redo_stack.clear()

    def edit(self, fn, what: str) -> Model:
        """Apply fn to a copy of the model (fn may return a new Model instead); keep the
        result only if it validates."""
        try:
            new = self.model.copy()
            out = fn(new)
            new = out if isinstance(out, Model) else new
            if new.graph:   # a model with no nodes yet is fine to edit (plates, data)
                new.validate()
        except (ModelError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{what} refused: {e}. The model is unchanged.") from None
        self._push()
        self.model = new
        self.version += 1
        return new

    def undo(self) -> None:
        self._travel(self.undo_stack, self.redo_stack, "undo")

    def redo(self) -> None:
        self._travel(self.redo_stack, self.undo_stack, "redo")

    def _travel(self, back: list, forth: list, what: str) -> None:
        if not back:
            raise ModelError(f"Nothing to {what}.")
        forth.append((self.model.to_dict(), dict(self.pos)))
        doc, pos = back.pop()
        self.model = Model.from_dict(doc)
        self.pos = pos
        self.version += 1

    # ---- nodes -------------------------------------------------------------------------
    def apply_node(self, original: str | None, fields: dict) -> str:
        """Add a node (original None) or change one from the node form's fields (a new
        name renames it, every reference following)."""
        name = fields["name"]
        renamed = original is not None and name != original
        if renamed:
            self._check_free(name, f"Renaming node {original!r}")

        def fn(m):
            if renamed:
                m = Model.from_dict(rename_document(m.to_dict(), "node", original, name))
            if fields["kind"] == "observed":
                src = fields.get("data")
                src = name if renamed and src == original else src
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
            return m
        what = (f"Adding node {name!r}" if original is None else f"Renaming node {original!r} to {name!r}"
                if renamed else f"Changing node {name!r}")
        self.edit(fn, what)
        if renamed and original in self.pos:
            self.pos[name] = self.pos.pop(original)
        if original is None:
            self.place(name)
        self.tidy()
        return what

    def place(self, name: str) -> None:
        """Put a new node where it overlaps nothing: inside its plate's box if it has one."""
        node = self.model.node(name)
        boxes = C.plate_boxes(self.model, self.pos, exclude=name)
        others = {k: v for k, v in self.pos.items() if k in self.model.graph and k != name}
        if node.plate is not None:
            members = [k for k in others if self.model.node(k).plate == node.plate]
            if members:
                x0, y0, x1, y1 = boxes[node.plate]
                self.pos[name] = (x1 - C.PAD - C.NODE_W, y1 - C.PAD + 20)   # the box grows down by one row
                self.tidy()
                return
        self.pos[name] = C.free_spot(others, boxes)

    def tidy(self) -> bool:
        """Lay the canvas out again if a plate's box covers a node that is not in it or
        crosses another plate's box (the drawing would say something the model does
        not). True if it did."""
        if C.misdrawn(self.model, self.pos):
            self.auto_layout()
            return True
        return False

    def auto_layout(self) -> None:
        self.pos = C.auto_layout(self.model)
        self.layouts += 1

    def delete_node(self, name: str) -> None:
        self.edit(lambda m: m.remove_node(name), f"Deleting node {name!r}")
        self.pos.pop(name, None)

    def connect(self, parent: str, child: str) -> tuple[str, object]:
        """An edge parent -> child: `parent` goes into one of child's arguments. Returns
        (argument, its new value)."""
        m = self.model
        if parent not in m.graph or child not in m.graph:
            raise ModelError("Edges join two variables (plates are not variables).")
        if m.graph.has_edge(parent, child):
            raise ModelError(f"{child} already depends on {parent}.")
        node = m.node(child)
        arg, value = insert_parent(node, DISTRIBUTIONS[node.dist], parent, m.node(parent).dist)
        args = {**node.args, arg: value}
        self.edit(lambda md: md.update_node(child, args=args), f"Edge {parent} → {child}")
        (px, _), (cx, _) = self.pos.get(parent, (0, 0)), self.pos.get(child, (1, 0))
        if px >= cx or C.misdrawn(self.model, self.pos):   # an edge drawn backwards, through the nodes
            self.auto_layout()
        return arg, value

    def disconnect(self, parent: str, child: str) -> dict:
        """Take `parent` out of child's arguments; returns {argument: (old, new)}."""
        if not self.model.graph.has_edge(parent, child):
            raise ModelError(f"{child} does not depend on {parent}.")
        node = self.model.node(child)
        args = remove_parent(node, parent)
        if args is None:
            raise ModelError(f"Edge {parent} → {child} stays: {child}'s arguments use {parent} in a way that "
                             f"cannot be removed automatically; edit them in {child}'s form.")
        changed = {a: (node.args[a], args[a]) for a in args if args[a] != node.args.get(a)}
        self.edit(lambda m: m.update_node(child, args=args), f"Removing edge {parent} → {child}")
        return changed

    def move_node(self, name: str, x: float, y: float) -> str | None:
        """A node dropped at (x, y): it joins the plate whose box (as drawn before the drag)
        holds its centre. Returns
        'plate NAME' / 'no plate' if its plate changed, None if only its position did.
        A refused change puts it back where it was."""
        if name not in self.model.graph:
            return None
        target = C.plate_at(self.model, self.pos, x + C.NODE_W / 2, y + C.NODE_H / 2)
        if target == self.model.node(name).plate:
            self.pos[name] = (x, y)
            return None
        where = f"plate {target!r}" if target else "no plate"
        self.edit(lambda m: m.update_node(name, plate=target), f"Moving {name!r} into {where}")
        self.pos[name] = (x, y)
        self.tidy()
        return where

    # ---- plates and data ---------------------------------------------------------------
    def add_plate(self, name: str, size, parent: str | None) -> None:
        self.edit(lambda m: m.add_plate(name, size, parent), f"Adding plate {name!r}")
        boxes = C.plate_boxes(self.model, {k: v for k, v in self.pos.items() if k != f"plate:{name}"})
        nodes = {k: v for k, v in self.pos.items() if k in self.model.graph}
        others = {p: b for p, b in boxes.items() if p != name}
        self.pos[f"plate:{name}"] = C.free_spot(nodes, others, size=C.EMPTY_PLATE)

    def resize_plate(self, name: str, size) -> None:
        self.edit(lambda m: m.resize_plate(name, size), f"Resizing plate {name!r}")

    def remove_plate(self, name: str) -> None:
        self.edit(lambda m: m.remove_plate(name), f"Removing plate {name!r}")
        self.pos.pop(f"plate:{name}", None)

    def attach_data(self, name: str, arr) -> None:
        self.edit(lambda m: m.set_data(name, arr), f"Attaching data {name!r}")

    # ---- names ---------------------------------------------------------------------------
    def rename(self, what: str, old: str, new: str) -> None:
        """Rename node, data or plate `old` to `new`; every reference follows."""
        new = (new or "").strip()
        if new == old:
            return
        self._check_free(new, f"Renaming {what} {old!r}")
        doc = rename_document(self.document(), what, old, new)

        def fn(_):
            return Model.from_dict(doc)
        self.edit(fn, f"Renaming {what} {old!r} to {new!r}")
        key, nkey = (f"plate:{old}", f"plate:{new}") if what == "plate" else (old, new)
        if key in self.pos:
            self.pos[nkey] = self.pos.pop(key)

    def _check_free(self, new: str, what: str) -> None:
        m = self.model
        taken = (f"node {new!r}" if new in m.graph else f"plate {new!r}" if new in m.plates
                 else f"data {new!r}" if new in m.data else None)
        if taken:
            raise ModelError(f"{what} refused: the name is taken by {taken}. The model is unchanged.")

    def rename_model(self, new: str) -> None:
        new = " ".join((new or "").split())
        if not new or len(new) > MAX_NAME:
            raise ModelError(f"A model's name is 1 to {MAX_NAME} characters.")

        def fn(m):
            m.name = new
        self.edit(fn, "Renaming the model")
