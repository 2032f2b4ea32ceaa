"""The workbench app without a browser: the Jupyter path builds, edits keep the model
valid (refused ones leave it unchanged), canvas gestures become model edits, runs stream."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine import DISTRIBUTIONS, Model, ModelError
from workbench import Workbench, serve
from workbench import app as A
from workbench import canvas as C

from test_workbench_views import conjugate_model, nested_model


@pytest.fixture
def nested_path(tmp_path):
    p = tmp_path / "nested.json"
    nested_model().save(p)
    return p


@pytest.fixture
def wb(nested_path):
    return Workbench(nested_path)


def alerts(wb, kind=None):
    return [r[0].object for r in wb.alerts if kind is None or r._wb_kind == kind]


def test_jupyter_path_builds_a_bokeh_root(nested_path):
    from bokeh.document import Document
    w = Workbench(str(nested_path))
    root = w.panel().get_root(Document())
    assert root is not None and w.model.name == "nested"
    assert [w.views._names[i] for i in range(5)] == ["Plate diagram", "Einsum path", "ESS", "ELBO", "Posterior"]
    assert "<svg" in w.diagram.object and "groups (3)" in w.diagram.object
    assert w.einsum_summary.object is not None and "K = 10" in w.einsum_head.object
    assert hasattr(w, "_repr_mimebundle_") and w.__panel__() is w.layout
    assert not alerts(w)


def test_default_and_missing_models():
    w = Workbench()                     # the radon example, or an empty model if the examples are absent
    assert w.panel() is not None
    bad = Workbench("/nonexistent/model.json")
    assert len(bad.model.graph) == 0 and "no model file" in alerts(bad, "danger")[0]
    with pytest.raises(ModelError, match="no model file"):
        serve("/nonexistent/model.json")


def test_canvas_draws_the_model(wb):
    ids = [n["id"] for n in wb.flow.nodes]
    assert ids[:2] == ["plate:groups", "plate:obs"] and set(ids[2:]) == {"mu", "s", "a", "y"}
    kinds = {n["id"]: n["type"] for n in wb.flow.nodes}
    assert kinds["y"] == "observed" and kinds["a"] == "latent" and kinds["plate:obs"] == "plate"
    assert {(e["source"], e["target"]) for e in wb.flow.edges} == set(wb.model.graph.edges)
    boxes = C.plate_boxes(wb.model, wb.pos)
    g, o = boxes["groups"], boxes["obs"]
    assert g[0] < o[0] and g[1] < o[1] and o[2] < g[2] and o[3] < g[3]      # obs drawn inside groups


def test_edge_on_canvas_puts_the_parent_into_arguments(wb):
    wb.flow._handle_msg({"type": "edge_added", "edge": {"id": "s->y", "source": "s", "target": "y"}})
    assert wb.model.node("y").args["scale"] == "s"            # a positive parent fills the numeric scale
    assert wb.model.graph.has_edge("s", "y")
    assert wb.node_form.original == "y" and "argument **scale**" in wb.node_form.note.object
    assert wb.node_form.arg_inputs["scale"].value == "s"
    assert any("Edge s → y" in a for a in alerts(wb, "info"))
    wb.flow._handle_msg({"type": "edge_added", "edge": {"id": "mu->y", "source": "mu", "target": "y"}})
    assert wb.model.node("y").args["loc"] == "a + 0.5 * w + mu"
    # deleting the edge on the canvas takes the parent out again
    wb.flow._handle_msg({"type": "edge_deleted", "edge_id": "mu->y"})
    assert wb.model.node("y").args["loc"] == "a + 0.5 * w" and not wb.model.graph.has_edge("mu", "y")
    wb.flow._handle_msg({"type": "edge_deleted", "edge_id": "s->y"})
    assert wb.model.node("y").args["scale"] == 1.0


def test_refused_edits_leave_the_model_unchanged(wb):
    assert wb.edit(lambda m: m.add_node("g", "latent", "Normal", {"loc": 0, "scale": 1}), "adding g")
    before = json.dumps(wb.model.to_dict())
    n_undo = len(wb.undo_stack)
    assert not wb.connect("a", "g")           # a lives in plate groups, g outside it
    assert json.dumps(wb.model.to_dict()) == before and len(wb.undo_stack) == n_undo
    msg = alerts(wb, "danger")[-1]
    assert "refused" in msg and "plate" in msg and "unchanged" in msg
    assert {(e["source"], e["target"]) for e in wb.flow.edges} == set(wb.model.graph.edges)
    assert not wb.delete_node("mu") and "used by" in alerts(wb, "danger")[-1]
    wb.flow._handle_msg({"type": "node_deleted", "node_id": "a"})      # a has a child: refused, redrawn
    assert "a" in wb.model.graph and "a" in [n["id"] for n in wb.flow.nodes]
    wb._apply_node("s", {"name": "s", "kind": "latent", "dist": "Normal", "args": {"loc": 0}, "plate": None,
                         "shape": None, "data": None}, None)
    assert wb.model.node("s").dist == "HalfNormal" and "needs argument 'scale'" in alerts(wb, "danger")[-1]
    wb._apply_node(None, {"name": "x2", "kind": "observed", "dist": "Normal", "args": {"loc": 0, "scale": 1},
                          "plate": None, "shape": None, "data": None}, None)
    assert "x2" not in wb.model.graph and "needs data" in alerts(wb, "danger")[-1]
    assert json.dumps(wb.model.to_dict()) == before


def test_unexpected_errors_become_messages(wb, monkeypatch):
    def boom(*a):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(wb, "connect", boom)
    before = wb.model.to_dict()
    wb.flow._handle_msg({"type": "edge_added", "edge": {"id": "s->y", "source": "s", "target": "y"}})
    assert "Something went wrong: RuntimeError: kaboom" in alerts(wb, "danger")[-1]
    assert wb.model.to_dict() == before and ("s", "y") not in {(e["source"], e["target"]) for e in wb.flow.edges}


def test_cycles_are_refused():
    m = Model("c")
    m.add_node("p", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("q", "latent", "Normal", {"loc": "p", "scale": 1})
    w = Workbench(m)
    assert not w.connect("q", "p")
    assert "cycle" in alerts(w, "danger")[-1] and not w.model.graph.has_edge("q", "p")


def test_add_edit_delete_nodes_undo_redo(wb):
    wb.node_form.new(wb.model, "latent", "z1")
    wb.node_form.dist.value = "Gamma"
    assert list(wb.node_form.arg_inputs) == list(DISTRIBUTIONS["Gamma"].args)     # fields from the signature
    wb.node_form.arg_inputs["concentration"].value = "2"
    wb.node_form.arg_inputs["rate"].value = "3"
    wb.node_form.apply.clicks += 1
    assert wb.model.node("z1").dist == "Gamma" and wb.model.node("z1").args == {"concentration": 2, "rate": 3}
    assert "z1" in [n["id"] for n in wb.flow.nodes]
    wb.node_form.dist.value = "Bernoulli"
    assert "exactly one of probs, logits" in wb.node_form.dist_doc.object
    wb.undo()
    assert "z1" not in wb.model.graph
    wb.redo()
    assert wb.model.node("z1").dist == "Gamma"
    wb.flow._handle_msg({"type": "node_deleted", "node_id": "z1"})
    assert "z1" not in wb.model.graph
    wb.undo()
    assert "z1" in wb.model.graph


def test_dragging_a_node_into_a_plate(wb):
    wb.node_form.new(wb.model, "latent", "z1")
    wb.node_form.apply.clicks += 1
    x0, y0, x1, y1 = C.plate_boxes(wb.model, wb.pos)["groups"]
    inner = C.plate_boxes(wb.model, wb.pos)["obs"]
    # a spot inside groups but outside obs
    spot = next((x, y) for y in np.arange(y0 + 30, y1 - 20, 10) for x in np.arange(x0 + 5, x1 - 5, 10)
                if not (inner[0] <= x + C.NODE_W / 2 <= inner[2] and inner[1] <= y + C.NODE_H / 2 <= inner[3]))
    wb.flow._handle_msg({"type": "node_moved", "node_id": "z1",
                         "position": {"x": spot[0] - C.NODE_W / 2, "y": spot[1] - C.NODE_H / 2}})
    assert wb.model.node("z1").plate == "groups"
    wb.flow._handle_msg({"type": "node_moved", "node_id": "z1", "position": {"x": x1 + 400, "y": y1 + 400}})
    assert wb.model.node("z1").plate is None
    # y cannot leave its plate (its data has the plates' shape): refused, model unchanged
    wb.flow._handle_msg({"type": "node_moved", "node_id": "y", "position": {"x": x1 + 400, "y": y0}})
    assert wb.model.node("y").plate == "obs" and "refused" in alerts(wb, "danger")[-1]


def test_plates_and_data(wb):
    wb.add_plate("extra", 2, None)
    assert wb.model.plates["extra"].size == 2 and "plate:extra" in [n["id"] for n in wb.flow.nodes]
    wb.resize_plate("groups", 5)      # y's data is 3 x 4: refused
    assert wb.model.plates["groups"].size == 3 and "refused" in alerts(wb, "danger")[-1]
    wb.remove_plate("groups")
    assert "groups" in wb.model.plates and "still holds" in alerts(wb, "danger")[-1]
    wb.remove_plate("extra")
    assert "extra" not in wb.model.plates
    wb.data_form.source.value = "eight schools"
    wb.data_form.column.value = "sigma"
    assert wb.data_form.target.value == "sigma"
    wb.data_form.attach.clicks += 1
    assert wb.model.data["sigma"].tolist() == [15, 10, 16, 11, 9, 11, 10, 18]
    assert "sigma" in wb.data_form.table.object


def test_save_open_and_upload_round_trip(wb, tmp_path):
    wb.connect("s", "y")
    path = tmp_path / "out.json"
    assert wb.save(path)
    doc = json.loads(path.read_text())
    assert Model.from_dict(doc).node("y").args["scale"] == "s"
    wb.new_model()
    assert len(wb.model.graph) == 0 and "empty" in wb.diagram.object
    assert wb.open(path) and wb.model.node("y").args["scale"] == "s"
    assert not wb.open(tmp_path / "missing.json") and "no model file" in alerts(wb, "danger")[-1]
    doc["exact"] = {"mu": {"dist": "Normal", "args": {"loc": 0, "scale": 1}}}
    wb.upload.filename = "up.json"
    wb.upload.value = json.dumps(doc).encode()
    assert wb.model.extras["exact"] == doc["exact"] and wb.exact()["mu"]["args"]["scale"] == 1
    assert json.loads(wb._download().read())["exact"] == doc["exact"]       # kept through a save
    wb.upload.value = b"{not json"
    assert "Could not load" in alerts(wb, "danger")[-1]


def test_run_streams_elbo_ess_and_posterior(tmp_path):
    p = tmp_path / "hg.json"
    conjugate_model().save(p)
    w = Workbench(p, K=4, iters=4)
    assert w.run() and w.wait(120)
    run = w.runs[-1]
    assert run["label"].startswith("QEM K=4") and len(run["elbo"]) == 4 and run["iteration"] == [1, 2, 3, 4]
    assert w.progress.value == 4 and w.status.object.startswith("Done")
    assert "| mu |" in w.ess_table.object and "| z |" in w.ess_table.object
    assert w.post_table.object is not None and "mu" in w.post_table.object.index
    assert w.post_names.value[:2] == ["mu", "z[0]"]
    assert "ESS" in w.diagram.object                  # the plate diagram is coloured by ESS now
    assert all("background" in n["style"] for n in w.flow.nodes if n["type"] == "latent")
    assert not alerts(w, "danger")
    assert w.deg_latent.value == "mu" and "heaviest of K=4 particles" in w.deg_note.object
    assert w.deg_heat.object is not None and w.deg_particles.object is not None
    w.deg_latent.value = "z"                           # z's parent mu: the coupling heatmap
    assert w.deg_parent.value == "mu" and w.deg_coupling.object is not None
    assert not alerts(w, "warning")
    w.method.value = "RWS"
    assert w.run() and w.wait(120)
    assert [r["label"].split(" ")[0] for r in w.runs] == ["QEM", "RWS"]     # overlaid
    w.clear_runs()
    assert w.runs == []


def test_run_failures_are_readable(tmp_path, monkeypatch):
    m = Model.from_dict({"format": "kn-model/1", "name": "bad",
                         "nodes": [{"name": "s", "kind": "latent", "dist": "Normal", "args": {"loc": -5, "scale": 1}},
                                   {"name": "x", "kind": "observed", "dist": "Normal",
                                    "args": {"loc": 0, "scale": "s"}}],
                         "data": {"x": 1.0}})
    w = Workbench(m, K=3, iters=3)
    assert w.run() and w.wait(120)
    assert "Run stopped" in alerts(w, "danger")[-1] and "node 'x', argument 'scale'" in alerts(w, "danger")[-1]
    assert not w.run_btn.disabled and len(w.model.graph) == 2
    w2 = Workbench(nested_model())
    monkeypatch.setattr("engine.program.default_budget", lambda device: 1000)   # no split fits in 1000 bytes
    assert not w2.run() and "needs about" in alerts(w2, "danger")[-1] and "Remedies" in alerts(w2, "danger")[-1]
    assert w2.runs == []


def test_stop_ends_a_run_early(tmp_path):
    w = Workbench(conjugate_model(), K=4, iters=100000)
    assert w.run()
    w.stop()
    assert w.wait(120)
    assert len(w.runs[-1]["elbo"]) < 100000 and w.result is not None


def test_insert_and_remove_parent_rules():
    spec = DISTRIBUTIONS["Normal"]
    node = Model().add_node("n", "latent", "Normal", {"loc": 0, "scale": 1}).node("n")
    assert A.insert_parent(node, spec, "m", "Normal") == ("loc", "m")
    node.args["loc"] = "a"
    assert A.insert_parent(node, spec, "m", "Normal") == ("loc", "a + m")
    assert A.insert_parent(node, spec, "sd", "HalfNormal") == ("scale", "sd")
    node.args = {"loc": "a + m * 2", "scale": "sd"}
    assert A.remove_parent(node, "sd") == {"loc": "a + m * 2", "scale": 1.0}
    assert A.remove_parent(node, "a") == {"loc": "m * 2", "scale": "sd"}
    assert A.remove_parent(node, "m") is None         # used in a product: left to the user


def test_notebook_cell_displays_the_workbench(nested_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f"import sys; sys.path.insert(0, {str(root)!r})\n"
                                  f"from workbench import Workbench\nWorkbench({str(nested_path)!r})")])
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if o.output_type == "error"]
    data = next(o for o in outputs if o.output_type == "execute_result").data
    assert "application/vnd.holoviews_exec.v0+json" in data and "text/html" in data


def test_an_empty_model_takes_plates_and_data_before_any_node():
    w = Workbench(Model("untitled"))
    w.add_plate("groups", 3, None)
    w.attach_data("x", np.arange(3.0))
    assert w.model.plates["groups"].size == 3 and w.model.data["x"].tolist() == [0, 1, 2]
    w.resize_plate("groups", 4)
    assert w.model.plates["groups"].size == 4
    w.remove_plate("groups")
    assert "groups" not in w.model.plates and not alerts(w, "danger")
    w.undo()
    assert w.model.plates["groups"].size == 4
