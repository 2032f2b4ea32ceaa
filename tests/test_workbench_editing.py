"""The edited model alone (workbench.editing, no Panel): edits validate or leave model and
positions unchanged, undo/redo, names with references following, gestures on the canvas
as model edits, placement that overlaps nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine import DISTRIBUTIONS, Model, ModelError
from workbench import canvas as C
from workbench.editing import Edited, insert_parent, remove_parent, rename_in_expression

from test_workbench_views import nested_model

ROOT = Path(__file__).resolve().parent.parent


def test_the_plain_parts_import_no_panel():
    code = ("import sys, workbench.editing, workbench.files, workbench.runs, workbench.views, workbench.data, "
            "workbench.cli; bad = [m for m in ('panel', 'bokeh.plotting') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_an_edit_validates_or_changes_nothing():
    ed = Edited(nested_model())
    before, pos, key = json.dumps(ed.model.to_dict()), dict(ed.pos), ed.key
    with pytest.raises(ModelError, match="refused: .*plate.*The model is unchanged"):
        ed.edit(lambda m: m.add_node("g", "latent", "Normal", {"loc": "a", "scale": 1}), "Adding node 'g'")
    assert json.dumps(ed.model.to_dict()) == before and ed.pos == pos and not ed.undo_stack and ed.version == 0
    ed.edit(lambda m: m.add_node("g", "latent", "Normal", {"loc": 0, "scale": 1}), "Adding node 'g'")
    assert "g" in ed.model.graph and ed.version == 1 and ed.key == key and ed.dirty
    ed.undo()
    assert "g" not in ed.model.graph
    ed.redo()
    assert "g" in ed.model.graph
    with pytest.raises(ModelError, match="Nothing to redo"):
        ed.redo()


def test_another_model_gets_a_new_key_and_is_one_undo_away():
    ed = Edited(nested_model(), name="nested.json")
    assert not ed.dirty
    key = ed.key
    ed.replace(Model("untitled"))
    assert ed.key != key and ed.name is None and len(ed.model.graph) == 0
    ed.undo()
    assert ed.model.name == "nested"


def test_connect_and_disconnect_say_what_changed():
    ed = Edited(nested_model())
    assert ed.connect("s", "y") == ("scale", "s")
    assert ed.disconnect("s", "y") == {"scale": ("s", 1.0)}
    with pytest.raises(ModelError, match="cycle"):
        ed.connect("y", "mu")
    with pytest.raises(ModelError, match="plates are not variables"):
        ed.connect("plate:groups", "y")


def test_insert_and_remove_parent_rules():
    spec = DISTRIBUTIONS["Normal"]
    node = Model().add_node("n", "latent", "Normal", {"loc": 0, "scale": 1}).node("n")
    assert insert_parent(node, spec, "m", "Normal") == ("loc", "m")
    node.args["loc"] = "a"
    assert insert_parent(node, spec, "m", "Normal") == ("loc", "a + m")
    assert insert_parent(node, spec, "sd", "HalfNormal") == ("scale", "sd")
    node.args = {"loc": "a + m * 2", "scale": "sd"}
    assert remove_parent(node, "sd") == {"loc": "a + m * 2", "scale": 1.0}
    assert remove_parent(node, "a") == {"loc": "m * 2", "scale": "sd"}
    assert remove_parent(node, "m") is None         # used in a product: left to the user


def test_rename_in_expression_renames_names_only():
    assert rename_in_expression("mu + mu2 * mu[county] + sum(mu, axis=0)", "mu", "m") == \
        "m + mu2 * m[county] + sum(m, axis=0)"
    assert rename_in_expression("sum(x, axis=0) + axis", "axis", "ax") == "sum(x, axis=0) + ax"
    assert rename_in_expression("a + (", "a", "b") == "a + ("          # does not tokenize: left alone


def test_renames_follow_every_reference():
    m = nested_model()
    m.proposal["a"] = {"dist": "Normal"}
    m.extras["exact"] = {"a[0]": {"dist": "Normal", "args": {"loc": 0, "scale": 1}}}
    ed = Edited(m)
    ed.rename("node", "a", "alpha")
    assert ed.model.node("y").args["loc"] == "alpha + 0.5 * w" and "alpha" in ed.model.proposal
    assert "alpha[0]" in ed.model.extras["exact"] and "alpha" in ed.pos and "a" not in ed.pos
    ed.rename("data", "w", "weight")
    assert ed.model.node("y").args["loc"] == "alpha + 0.5 * weight" and "weight" in ed.model.data
    ed.apply_node("y", {"name": "obs_y", "kind": "observed", "dist": "Normal", "args": {"loc": "alpha", "scale": 1},
                        "plate": "obs", "shape": None, "data": "y"})          # the form renames an observed node
    assert "obs_y" in ed.model.data and "y" not in ed.model.data and "obs_y" in ed.model.graph
    ed.rename("plate", "groups", "schools")
    assert ed.model.node("alpha").plate == "schools" and ed.model.plates["obs"].parent == "schools"
    with pytest.raises(ModelError, match="taken by node 'mu'"):
        ed.rename("node", "s", "mu")
    with pytest.raises(ModelError, match="identifier"):
        ed.rename("node", "s", "not a name")
    ed.rename_model("  a   new name ")
    assert ed.model.name == "a new name"
    with pytest.raises(ModelError, match="1 to 100"):
        ed.rename_model("x" * 101)


def test_a_refused_move_puts_the_node_back():
    ed = Edited(nested_model())
    x, y = ed.pos["y"]
    with pytest.raises(ModelError, match="refused"):
        ed.move_node("y", x + 2000, y + 2000)          # out of its plates: its data has their shape
    assert ed.pos["y"] == (x, y) and ed.model.node("y").plate == "obs"
    assert ed.move_node("y", x + 5, y + 5) is None and ed.pos["y"] == (x + 5, y + 5)   # inside: just moved


def test_new_nodes_and_plates_overlap_nothing():
    ed = Edited(nested_model())
    for i in range(5):
        ed.apply_node(None, {"name": f"z{i}", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 1},
                             "plate": "groups" if i % 2 else None, "shape": None, "data": None})
        assert not C.misdrawn(ed.model, ed.pos)
        ed.add_plate(f"p{i}", 2, None)
        assert not C.misdrawn(ed.model, ed.pos)
    rects = [(x, y, x + C.NODE_W, y + C.NODE_H) for n, (x, y) in ed.pos.items() if n in ed.model.graph]
    assert not any(C._overlap(a, b) for i, a in enumerate(rects) for b in rects[i + 1:])


def test_misdrawn_catches_a_box_over_a_stranger():
    m = nested_model()
    pos = C.auto_layout(m)
    assert not C.misdrawn(m, pos)
    x0, y0, _, _ = C.plate_boxes(m, pos)["obs"]
    assert C.misdrawn(m, {**pos, "mu": (x0 + 5, y0 + 30)})
    ed = Edited(m)
    ed.pos["mu"] = (x0 + 5, y0 + 30)
    assert ed.tidy() and not C.misdrawn(ed.model, ed.pos)


def test_the_document_keeps_the_layout():
    ed = Edited(nested_model())
    ed.pos["mu"] = (7.0, 9.0)
    doc = ed.document()
    assert doc["layout"]["mu"] == [7, 9]
    again = Edited(Model.from_dict(doc))
    assert again.pos["mu"] == (7.0, 9.0)
