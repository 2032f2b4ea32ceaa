"""The workbench's layout without a browser: the Jupyter path builds, widget and canvas
events become edits (refused ones leave the model and the canvas as they were), files go
through the workspace, runs stream into views that belong to the model on screen, and
every string from a model reaches the page escaped."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine import DISTRIBUTIONS, Model, ModelError
from workbench import Workbench, serve
from workbench import canvas as C

from test_workbench_views import conjugate_model, nested_model

SCRIPT = '<img src=x onerror="window.__pwned=1">'


@pytest.fixture(autouse=True)
def _data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))     # the default workspace


@pytest.fixture
def nested_path(tmp_path):
    p = tmp_path / "nested.json"
    nested_model().save(p)
    return p


@pytest.fixture
def wb(nested_path, tmp_path):
    return Workbench(nested_path, workspace=tmp_path / "ws")


def test_jupyter_path_builds_a_bokeh_root(nested_path, tmp_path):
    from bokeh.document import Document
    w = Workbench(str(nested_path), workspace=tmp_path / "ws")
    root = w.panel().get_root(Document())
    assert root is not None and w.model.name == "nested"
    assert [w.views.tabs._names[i] for i in range(6)] == ["Plate diagram", "Einsum path", "ESS", "ELBO", "Posterior",
                                                    "Degeneracy"]
    assert "<svg" in w.views.diagram.object and "groups (3)" in w.views.diagram.object
    from engine.fit import choose_K
    assert w.K.value == choose_K(w.model) == 30                 # engine.fit.DEFAULTS: K "auto"
    assert w.views.einsum_summary.object is not None and "K = 30" in w.views.einsum_head.object
    assert hasattr(w, "_repr_mimebundle_") and w.__panel__() is w.layout
    assert not w.messages()


def test_default_and_missing_models(tmp_path):
    w = Workbench()                     # the radon example
    assert w.model.name == "radon" and w.ed.name is None and w.save_name.value == ""
    bad = Workbench("/nonexistent/model.json")
    assert len(bad.model.graph) == 0 and "no model file" in bad.messages("danger")[0]
    with pytest.raises(ModelError, match="no model file"):
        serve("/nonexistent/model.json")


def test_canvas_draws_the_model(wb):
    ids = [n["id"] for n in wb.flow.nodes]
    assert ids[:2] == ["plate:groups", "plate:obs"] and set(ids[2:]) == {"mu", "s", "a", "y"}
    kinds = {n["id"]: n["type"] for n in wb.flow.nodes}
    assert kinds["y"] == "observed" and kinds["a"] == "latent" and kinds["plate:obs"] == "plate"
    assert {(e["source"], e["target"]) for e in wb.flow.edges} == set(wb.model.graph.edges)
    boxes = C.plate_boxes(wb.model, wb.ed.pos)
    g, o = boxes["groups"], boxes["obs"]
    assert g[0] < o[0] and g[1] < o[1] and o[2] < g[2] and o[3] < g[3]      # obs drawn inside groups
    assert not C.misdrawn(wb.model, wb.ed.pos)


def test_edge_on_canvas_puts_the_parent_into_arguments(wb):
    wb.flow._handle_msg({"type": "edge_added", "edge": {"id": "s->y", "source": "s", "target": "y"}})
    assert wb.model.node("y").args["scale"] == "s"            # a positive parent fills the numeric scale
    assert wb.model.graph.has_edge("s", "y")
    assert wb.node_form.original == "y" and "argument <b>scale</b>" in wb.node_form.note.object
    assert wb.node_form.arg_inputs["scale"].value == "s"
    assert any("Edge s → y" in a for a in wb.messages("info"))
    wb.flow._handle_msg({"type": "edge_added", "edge": {"id": "mu->y", "source": "mu", "target": "y"}})
    assert wb.model.node("y").args["loc"] == "a + 0.5 * w + mu"
    # deleting the edge on the canvas takes the parent out again, and says what changed
    wb.flow._handle_msg({"type": "edge_deleted", "edge_id": "mu->y"})
    assert wb.model.node("y").args["loc"] == "a + 0.5 * w" and not wb.model.graph.has_edge("mu", "y")
    wb.flow._handle_msg({"type": "edge_deleted", "edge_id": "s->y"})
    assert wb.model.node("y").args["scale"] == 1.0
    assert "scale</b> was <code>s</code>, now <code>1.0</code>" in wb.alerts[0][0].object


def test_refused_edits_leave_the_model_and_the_canvas_unchanged(wb):
    wb.ed.edit(lambda m: m.add_node("g", "latent", "Normal", {"loc": 0, "scale": 1}), "adding g")
    wb.refresh()
    before = json.dumps(wb.model.to_dict())
    n_undo = len(wb.ed.undo_stack)
    rev = wb.flow.edges[0]["data"]["rev"]
    assert not wb.connect("a", "g")           # a lives in plate groups, g outside it
    assert json.dumps(wb.model.to_dict()) == before and len(wb.ed.undo_stack) == n_undo
    msg = wb.messages("danger")[-1]
    assert "refused" in msg and "plate" in msg and "unchanged" in msg
    # the browser drew the edge: the canvas is sent again (new rev), without it
    assert {(e["source"], e["target"]) for e in wb.flow.edges} == set(wb.model.graph.edges)
    assert wb.flow.edges[0]["data"]["rev"] > rev
    assert not wb.delete_node("mu") and "used by" in wb.messages("danger")[-1]
    wb.flow._handle_msg({"type": "node_deleted", "node_id": "a"})      # a has a child: refused, redrawn
    assert "a" in wb.model.graph and "a" in [n["id"] for n in wb.flow.nodes]
    wb._apply_node("s", {"name": "s", "kind": "latent", "dist": "Normal", "args": {"loc": 0}, "plate": None,
                         "shape": None, "data": None}, None)
    assert wb.model.node("s").dist == "HalfNormal" and "needs argument 'scale'" in wb.messages("danger")[-1]
    wb._apply_node(None, {"name": "x2", "kind": "observed", "dist": "Normal", "args": {"loc": 0, "scale": 1},
                          "plate": None, "shape": None, "data": None}, None)
    assert "x2" not in wb.model.graph and "needs data" in wb.messages("danger")[-1]
    assert json.dumps(wb.model.to_dict()) == before


def test_a_refused_apply_keeps_what_was_typed(wb):
    wb.node_form.show(wb.model, "a")
    wb.node_form.arg_inputs["loc"].value = "mu + nosuch"
    wb.node_form.apply.clicks += 1
    assert "nosuch" in wb.messages("danger")[-1] and wb.model.node("a").args["loc"] == "mu"
    assert wb.node_form.arg_inputs["loc"].value == "mu + nosuch"        # the typo is there to fix


@pytest.mark.parametrize("edges_first", [True, False])
def test_deleting_a_used_node_on_the_canvas_changes_nothing(wb, edges_first):
    """Delete on `mu` (used by a): the browser sends the node's deletion and its edges'
    deletion, in either order; a's loc must not silently become a number."""
    wb.ed.edit(lambda m: m.update_node("mu", args={"loc": "s", "scale": 1}), "mu from s")
    wb.refresh()
    before = json.dumps(wb.model.to_dict())
    node = {"type": "node_deleted", "node_id": "mu", "node_ids": ["mu"], "deleted_edges": ["mu->a", "s->mu"]}
    edge = {"type": "edge_deleted", "edge_id": "mu->a", "edge_ids": ["mu->a"]}
    into = {"type": "edge_deleted", "edge_id": "s->mu", "edge_ids": ["s->mu"]}     # one message per edge
    for msg in ([edge, into, node] if edges_first else [node, edge, into]):
        wb.flow._handle_msg(msg)
    assert json.dumps(wb.model.to_dict()) == before and wb.model.node("a").args["loc"] == "mu"
    assert wb.model.node("mu").args["loc"] == "s"
    assert "used by a" in " ".join(wb.messages("danger"))
    assert ("mu", "a") in {(e["source"], e["target"]) for e in wb.flow.edges} and not wb.ed.redo_stack
    wb.flow._handle_msg(edge)                  # deleting just the edge, later: a's loc goes back to a number
    assert wb.model.node("a").args["loc"] == 0.0 and "mu" in wb.model.graph


def test_apply_checks_values_through_the_engine(wb):
    import engine.dists
    if not hasattr(engine.dists, "check_constant"):
        pytest.skip("the engine's argument range checks (issue 12) are not merged yet")
    wb.node_form.show(wb.model, "a")
    wb.node_form.arg_inputs["scale"].value = "-1"
    wb.node_form.apply.clicks += 1
    assert "scale" in wb.messages("danger")[-1] and wb.model.node("a").args["scale"] == "s"
    assert wb.node_form.arg_inputs["scale"].value == "-1"


def test_a_refused_move_snaps_back(wb):
    x, y = wb.ed.pos["y"]
    x1, y1 = C.plate_boxes(wb.model, wb.ed.pos)["groups"][2:]
    n = wb.flow._node_update_count
    # y cannot leave its plate (its data has the plates' shape)
    wb.flow._handle_msg({"type": "node_moved", "node_id": "y", "position": {"x": x1 + 400, "y": y1 + 400}})
    assert wb.model.node("y").plate == "obs" and "refused" in wb.messages("danger")[-1]
    assert wb.ed.pos["y"] == (x, y)
    drawn = next(nd for nd in wb.flow.nodes if nd["id"] == "y")["position"]
    assert (drawn["x"], drawn["y"]) == (x, y) and wb.flow._node_update_count > n     # sent again


def test_rename_node_and_plate_through_the_forms(wb):
    wb.node_form.show(wb.model, "mu")
    wb.node_form.name.value = "m0"
    wb.node_form.apply.clicks += 1
    assert "m0" in wb.model.graph and "mu" not in wb.model.graph
    assert wb.model.node("a").args["loc"] == "m0" and "m0" in wb.ed.pos
    wb.plate_form.which.value = "groups"
    wb.plate_form.new_name.value = "schools"
    wb.plate_form.rename.clicks += 1
    assert "schools" in wb.model.plates and wb.model.node("a").plate == "schools"
    assert wb.model.plates["obs"].parent == "schools"
    wb.model_name.value = "renamed model"
    assert wb.model.name == "renamed model"
    wb.undo()
    assert wb.model.name == "nested" and wb.model_name.value == "nested"


def test_unexpected_errors_become_messages(wb, monkeypatch):
    def boom(*a):
        raise RuntimeError("kaboom")
    monkeypatch.setattr(wb, "connect", boom)
    before = wb.model.to_dict()
    wb.flow._handle_msg({"type": "edge_added", "edge": {"id": "s->y", "source": "s", "target": "y"}})
    assert "Something went wrong: RuntimeError: kaboom" in wb.messages("danger")[-1]
    assert wb.model.to_dict() == before and ("s", "y") not in {(e["source"], e["target"]) for e in wb.flow.edges}


def test_add_edit_delete_nodes_undo_redo(wb):
    wb.node_form.new(wb.model, "latent", "z1")
    wb.node_form.dist.value = "Gamma"
    assert list(wb.node_form.arg_inputs) == list(DISTRIBUTIONS["Gamma"].args)     # fields from the signature
    wb.node_form.arg_inputs["concentration"].value = "2"
    wb.node_form.arg_inputs["rate"].value = "3"
    wb.node_form.apply.clicks += 1
    assert wb.model.node("z1").dist == "Gamma" and wb.model.node("z1").args == {"concentration": 2, "rate": 3}
    assert "z1" in [n["id"] for n in wb.flow.nodes] and not C.misdrawn(wb.model, wb.ed.pos)
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
    x0, y0, x1, y1 = C.plate_boxes(wb.model, wb.ed.pos)["groups"]
    inner = C.plate_boxes(wb.model, wb.ed.pos)["obs"]
    # a spot inside groups but outside obs
    spot = next((x, y) for y in np.arange(y0 + 30, y1 - 20, 10) for x in np.arange(x0 + 5, x1 - 5, 10)
                if not (inner[0] <= x + C.NODE_W / 2 <= inner[2] and inner[1] <= y + C.NODE_H / 2 <= inner[3]))
    wb.flow._handle_msg({"type": "node_moved", "node_id": "z1",
                         "position": {"x": spot[0] - C.NODE_W / 2, "y": spot[1] - C.NODE_H / 2}})
    assert wb.model.node("z1").plate == "groups"
    wb.flow._handle_msg({"type": "node_moved", "node_id": "z1", "position": {"x": x1 + 400, "y": y1 + 400}})
    assert wb.model.node("z1").plate is None and not C.misdrawn(wb.model, wb.ed.pos)


def test_plates_and_data(wb):
    wb.plate_form.name.value, wb.plate_form.size.value = "extra", 2
    wb.plate_form.add.clicks += 1
    assert wb.model.plates["extra"].size == 2 and "plate:extra" in [n["id"] for n in wb.flow.nodes]
    assert not C.misdrawn(wb.model, wb.ed.pos)            # the new plate's box covers no node
    wb.plate_form.name.value, wb.plate_form.size.value = "empty", 0
    wb.plate_form.add.clicks += 1
    assert "empty" not in wb.model.plates and "positive integer" in wb.messages("danger")[-1]
    wb.resize_plate("groups", 5)      # y's data is 3 x 4: refused
    assert wb.model.plates["groups"].size == 3 and "refused" in wb.messages("danger")[-1]
    wb.remove_plate("groups")
    assert "groups" in wb.model.plates and "still holds" in wb.messages("danger")[-1]
    wb.remove_plate("extra")
    assert "extra" not in wb.model.plates
    wb.data_form.source.value = "eight schools"
    wb.data_form.column.value = "sigma"
    assert wb.data_form.target.value == "sigma"
    wb.data_form.attach.clicks += 1
    assert wb.model.data["sigma"].tolist() == [15, 10, 16, 11, 9, 11, 10, 18]
    assert "sigma" in wb.data_form.table.object
    wb.data_form.typed.value = "28 8 -3 7 -1 1 18 12"          # eight numbers typed in
    wb.data_form.typed_name.value = "ys"
    wb.data_form.typed_btn.clicks += 1
    assert wb.model.data["ys"].tolist() == [28, 8, -3, 7, -1, 1, 18, 12]
    wb.data_form.typed.value = "a\tb\n1\t2\nabc\t4"            # a pasted sheet with a bad cell
    wb.data_form.typed_btn.clicks += 1
    assert "row 2" in wb.data_form.info.object and "abc" in wb.data_form.info.object and "a" not in wb.model.data


def test_save_open_and_upload_round_trip(wb, tmp_path):
    wb.connect("s", "y")
    assert not wb.save("")                                   # no name: nothing written
    assert wb.save("out") and wb.ed.name == "out.json" and not wb.ed.dirty
    doc = json.loads((tmp_path / "ws" / "out.json").read_text())
    assert Model.from_dict(doc).node("y").args["scale"] == "s" and set(doc["layout"]) >= set(wb.model.graph)
    assert wb.files.options == ["out.json"]
    wb.new_model()
    assert len(wb.model.graph) == 0 and "empty" in wb.views.diagram.object and wb.save_name.value == ""
    wb.open("out.json")
    assert wb.model.node("y").args["scale"] == "s" and wb.ed.pos == {k: tuple(v) for k, v in doc["layout"].items()}
    wb.open("missing.json")
    assert "'missing.json'" in wb.messages("danger")[-1] and str(tmp_path) not in wb.messages("danger")[-1]
    doc["exact"] = {"mu": {"dist": "Normal", "args": {"loc": 0, "scale": 1}}}
    wb.upload.filename = "up.json"
    wb.upload.value = json.dumps(doc).encode()
    assert wb.model.extras["exact"] == doc["exact"] and wb.exact()["mu"]["args"]["scale"] == 1
    assert json.loads(wb._download().read())["exact"] == doc["exact"]       # kept through a download
    wb.upload.value = b"{not json"
    assert "Could not open up.json" in wb.messages("danger")[-1]


def test_save_asks_before_replacing_and_never_writes_the_gallery(wb, tmp_path):
    gallery = {p: p.read_bytes() for p in wb.ws.gallery.values()}
    wb.load_example("radon")
    assert wb.model.name == "radon" and wb.save_name.value == ""
    assert wb.save("radon")                                 # a copy in the workspace
    wb.new_model()
    wb.save_name.value = "radon"
    wb.save_btn.clicks += 1                                 # the new, empty model over it: asks first
    assert wb.confirm.visible and "radon.json</b> exists" in wb.confirm_text.object
    assert Model.load(tmp_path / "ws" / "radon.json").name == "radon"
    wb.cancel_btn.clicks += 1
    assert not wb.confirm.visible and Model.load(tmp_path / "ws" / "radon.json").name == "radon"
    wb.save_btn.clicks += 1
    wb.replace_btn.clicks += 1
    assert Model.load(tmp_path / "ws" / "radon.json").name == "untitled"
    assert {p: p.read_bytes() for p in wb.ws.gallery.values()} == gallery
    for bad in ("../radon", "/tmp/x", "a/b.json", "..", ".hidden"):
        assert not wb.save(bad) and "not a plain file name" in wb.messages("danger")[-1]


def test_strings_from_a_model_reach_the_page_escaped(tmp_path):
    doc = nested_model().to_dict()
    doc["name"] = SCRIPT
    doc["description"] = SCRIPT
    w = Workbench(Model.from_dict(doc), workspace=tmp_path / "ws")
    w.upload.filename = SCRIPT + ".json"
    w.upload.value = json.dumps({**doc, "nodes": [{**doc["nodes"][0], "dist": SCRIPT}]}).encode()
    shown = [w.title.object, w.alerts[0][0].object]
    assert all("<img" not in s for s in shown) and "&lt;img" in w.alerts[0][0].object
    assert w.model_name.value == SCRIPT                      # a text box shows it as text
    assert "<img" not in w.views.diagram.object


def test_views_belong_to_the_model_on_screen(tmp_path):
    p = tmp_path / "hg.json"
    conjugate_model().save(p)
    w = Workbench(p, K=4, iters=4, workspace=tmp_path / "ws")
    assert w.run() and w.wait(120)
    assert w.views.shown is not None and "| mu |" not in w.views.ess_table.object and "<td>mu</td>" in w.views.ess_table.object
    w.iters.value = 100000
    assert w.run()                                           # still going when another model is opened
    w.load_example("eight_schools_centered")
    assert w.K.value == 4                                    # the user's K stays
    assert w.wait(120) and w.runs.runs[-1].state == "stopped" and "another model" in w.runs.runs[-1].message
    assert w.views.shown is None and w.views.post_table.object is None and w.views.ess_pane.object is None
    assert w.status.object == "Ready." and "hg" not in w.views.post_note.object
    assert w.views.elbo_pane.object is None and "No runs of this model yet" in w.views.elbo_note.object
    assert [f.object.title.text for f in w.views.elbo_others] == ["Earlier model: hg"]    # runs of hg, apart


def test_run_streams_elbo_ess_and_posterior(tmp_path):
    p = tmp_path / "hg.json"
    conjugate_model().save(p)
    w = Workbench(p, K=4, iters=4, workspace=tmp_path / "ws")
    assert w.run() and w.wait(120)
    run = w.runs.runs[-1]
    assert run.label.startswith("QEM K=4") and len(run.elbo) == 4 and run.iteration == [1, 2, 3, 4]
    assert w.progress.value == 4 and w.status.object.startswith("Done")
    assert "<td>mu</td>" in w.views.ess_table.object and "<td>z</td>" in w.views.ess_table.object
    assert w.views.post_table.object is not None and "mu" in w.views.post_table.object.index
    assert w.views.post_names.value[:2] == ["mu", "z[0]"]
    assert "ESS" in w.views.diagram.object                  # the plate diagram is coloured by ESS now
    assert all("background" in n["style"] for n in w.flow.nodes if n["type"] == "latent")
    assert not w.messages("danger")
    assert w.views.deg_latent.value == "mu" and "heaviest of K=4 particles" in w.views.deg_note.object
    assert w.views.deg_heat.object is not None and w.views.deg_particles.object is not None
    w.views.deg_latent.value = "z"                           # z's parent mu: the coupling heatmap
    assert w.views.deg_parent.value == "mu" and w.views.deg_coupling.object is not None
    assert not w.messages("warning")
    w.method.value = "RWS"
    assert w.run() and w.wait(120)
    assert [r.label.split(" ")[0] for r in w.runs.runs] == ["QEM", "RWS"]     # overlaid
    assert [r.name for r in w.views.elbo_pane.object.renderers if r.name] == [r.label for r in w.runs.runs]
    w.views.export.value = "SVG"
    assert w.views.ess_pane.object.output_backend == "svg"
    w.clear_runs()
    assert w.runs.runs == []


def test_run_failures_are_readable(tmp_path, monkeypatch):
    m = Model.from_dict({"format": "kn-model/1", "name": "bad",
                         "nodes": [{"name": "s", "kind": "latent", "dist": "Normal", "args": {"loc": -5, "scale": 1}},
                                   {"name": "x", "kind": "observed", "dist": "Normal",
                                    "args": {"loc": 0, "scale": "s"}}],
                         "data": {"x": 1.0}})
    w = Workbench(m, K=3, iters=3, workspace=tmp_path / "ws")
    assert w.run() and w.wait(120)
    assert "Run stopped" in w.messages("danger")[-1] and "node 'x', argument 'scale'" in w.messages("danger")[-1]
    assert not w.run_btn.disabled and len(w.model.graph) == 2
    w2 = Workbench(nested_model(), workspace=tmp_path / "ws")
    monkeypatch.setattr("engine.program.default_budget", lambda device: 1000)   # no split fits in 1000 bytes
    assert not w2.run() and "needs about" in w2.messages("danger")[-1] and "Remedies" in w2.messages("danger")[-1]
    assert w2.runs.runs == []


def test_stop_ends_a_run_early(tmp_path):
    w = Workbench(conjugate_model(), K=4, iters=100000, workspace=tmp_path / "ws")
    assert w.run()
    w.stop()
    assert w.wait(120)
    assert len(w.runs.runs[-1].elbo) < 100000 and w.views.shown is not None


def test_autosave_and_the_restore_offer(wb, tmp_path):
    assert wb.store.value == ""                              # nothing edited yet: nothing kept
    wb.connect("s", "y")
    kept = json.loads(wb.store.value)
    assert kept["model"]["nodes"] == wb.ed.document()["nodes"]
    # a refresh: a new session, and the browser hands back what it kept
    w2 = Workbench(nested_model(), workspace=tmp_path / "ws")
    w2.store.stored = wb.store.value
    assert w2.restore_row.visible and "nested" in w2.restore_text.object
    w2.restore_btn.clicks += 1
    assert w2.model.node("y").args["scale"] == "s" and not w2.restore_row.visible and w2.ed.dirty
    # what a browser hands back is checked like an upload
    w3 = Workbench(nested_model(), workspace=tmp_path / "ws")
    w3.store.stored = json.dumps({"model": {**nested_model().to_dict(), "data_file": "/etc/x.npz"}})
    w3.restore_btn.clicks += 1
    assert "data_file" in w3.messages("danger")[-1] and w3.model.name == "nested"


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
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs if o.output_type != "stream")
    assert "cdn.bokeh.org" not in html and "cdn.holoviz.org" not in html and "unpkg.com" not in html


def test_an_empty_model_takes_plates_and_data_before_any_node(tmp_path):
    w = Workbench(Model("untitled"), workspace=tmp_path / "ws")
    w.add_plate("groups", 3, None)
    w.attach_data("x", np.arange(3.0))
    assert w.model.plates["groups"].size == 3 and w.model.data["x"].tolist() == [0, 1, 2]
    w.resize_plate("groups", 4)
    assert w.model.plates["groups"].size == 4
    w.remove_plate("groups")
    assert "groups" not in w.model.plates and not w.messages("danger")
    w.undo()
    assert w.model.plates["groups"].size == 4
