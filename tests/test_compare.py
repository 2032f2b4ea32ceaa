"""The comparison view: figures from a sweep's rows (the numbers behind every line and
band checked on hand-made rows), and the Compare tab running a sweep on an embedded
cluster and filling in as cells finish."""
import json
import math
from pathlib import Path

import numpy as np
import pytest

from engine import Model
from workbench import compare as C

MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"


def row(model="m", method="qem", K=10, seed=0, lm=-5.0, ess=None, elbo=(-9.0, -7.0, -6.0), secs=(0.1, 0.1, 0.1)):
    ess = ess or {"a": 5.0, "b": 8.0}
    return {"model": model, "method": method, "K": K, "seed": seed, "status": "ok", "log_marginal": lm,
            "ess": {n: {"min": v, "mean": v} for n, v in ess.items()}, "latents": {n: {} for n in ess},
            "history": {"elbo": list(elbo), "seconds": list(secs)}, "final_elbo": elbo[-1],
            "seconds_per_iter": float(np.median(secs)), "warnings": []}


def test_against_K_is_the_mean_and_range_over_seeds_of_each_method():
    rows = [row(K=3, seed=0, lm=-6.0), row(K=3, seed=1, lm=-4.0), row(K=3, seed=2, lm=-5.5),
            row(K=10, seed=0, lm=-5.0), row(method="global", K=3, lm=-9.0),
            row(model="other", K=3, lm=100.0),
            {"model": "m", "method": "qem", "K": 30, "seed": 0, "status": "error", "error": "boom"}]
    got = C.against_K(rows, "m", lambda r: r["log_marginal"])
    assert list(got) == ["qem", "global"]
    q = got["qem"]
    assert q["K"] == [3, 10] and q["seeds"] == [3, 1]      # the failed K=30 cell is left out
    assert q["mean"][0] == pytest.approx(-15.5 / 3) and (q["lo"][0], q["hi"][0]) == (-6.0, -4.0)
    assert q["mean"][1] == q["lo"][1] == q["hi"][1] == -5.0
    assert got["global"]["mean"] == [-9.0]


def test_ess_ratio_is_the_worst_latent_over_the_particles_pooled():
    assert C.ess_ratio(row(K=10, ess={"a": 5.0, "b": 8.0})) == 0.5
    r = row(K=10, ess={"a": 5.0, "b": 8.0})
    r["latents"]["a"]["n_samples"] = 4          # pooled over 4 samples of K particles
    assert C.ess_ratio(r) == 5.0 / 40          # a: 5 of 40 particles; b: 8 of 10


def test_curves_align_seeds_by_iteration():
    rows = [row(seed=0, elbo=(-9.0, -7.0, -6.0), secs=(0.1, 0.2, 0.3)),
            row(seed=1, elbo=(-11.0, -5.0), secs=(0.3, 0.2)),      # stopped early (converged)
            row(K=3, seed=0, elbo=(-1.0,), secs=(1.0,))]
    c = C.curves(rows, "m")["qem"]
    assert c["K"] == 10 and c["iteration"] == [1, 2, 3]
    assert c["mean"] == pytest.approx([-10.0, -6.0, -6.0]) and c["lo"] == [-11.0, -7.0, -6.0]
    assert c["time"] == pytest.approx([0.2, 0.4, 0.6])
    assert C.curves(rows, "m", K=3)["qem"]["mean"] == [-1.0]


def test_figures_draw_every_model_and_method_and_escape_failures():
    from bokeh.models import ColumnDataSource, Div, Plot, Span
    rows = [row(method=m, K=K, seed=s, lm=-5.0 - s) for m in ("qem", "is", "global") for K in (3, 10) for s in (0, 1)]
    rows += [row(model="<b>two</b>", K=3), {"model": "<script>x</script>", "method": "vi", "K": 3, "seed": 0,
                                           "status": "error", "error": "needs <continuous> latents"}]
    lay = C.figures({"format": "kn-sweep/1", "rows": rows}, reference={"m": -4.5})
    note = lay.select_one({"type": Div}).text
    assert "<script>" not in note and "&lt;script&gt;x&lt;/script&gt;" in note and "&lt;continuous&gt;" in note
    assert "13 cells finished" in note and "1 failed" in note
    for name in ("ess", "log_marginal", "elbo_iteration", "elbo_time"):
        for method in ("qem", "is", "global"):
            src = lay.select_one({"type": ColumnDataSource, "name": f"m/{name}:{method}"})
            assert src is not None, (name, method)
    src = lay.select_one({"type": ColumnDataSource, "name": "m/log_marginal:qem"})
    assert src.data["x"] == [3, 10] and src.data["mean"] == [-5.5, -5.5] and src.data["lo"] == [-6.0, -6.0]
    assert lay.select_one({"type": Span, "name": "reference"}).location == -4.5
    titles = {f.title.text for f in lay.select({"type": Plot})}
    assert any(t.startswith("<b>two</b>: ESS/K") for t in titles)   # titles are text, not HTML: shown as typed


def test_figures_read_a_sweep_file(tmp_path):
    from engine import sweep as SW
    path = tmp_path / "s.json"
    SW.write_atomic(path, {"format": SW.FORMAT, "settings": {}, "models": {}, "rows": [row(), row(seed=1)]})
    assert len(C.rows_of(path)) == 2
    assert C.figures(str(path)) is not None


def test_table_gives_each_cell_with_its_error():
    t = C.table([row(K=4, ess={"a": 2.0}), {"model": "m", "method": "vi", "K": 3, "seed": 0, "status": "error",
                                             "error": "no"}])
    assert list(t["ESS/K (worst)"])[0] == 0.5 and list(t["ms / iteration"])[0] == pytest.approx(100.0)
    assert list(t["error"]) == ["", "no"] and math.isnan(t["final ELBO"].iloc[1])


@pytest.fixture(scope="module")
def shared():
    yield C.shared_client(n_workers=2)
    C.close_shared_cluster()


def test_compare_tab_runs_a_sweep_of_the_model_on_screen(shared):
    doc = Model.load(MODELS / "hierarchical_gaussian.json").to_dict()
    tab = C.CompareTab(lambda: doc, methods=("qem", "is"), Ks="2,3", seeds="0", iters=3)
    import panel as pn
    assert pn.Tabs(("Compare", tab))[0] is not None          # mounts as a Panel object
    assert tab.start()
    assert not tab.start()                       # one sweep at a time
    assert tab.message.visible and "already running" in tab.message.object
    assert tab.wait(120)
    assert len(tab.rows) == 4 and all(r["status"] == "ok" for r in tab.rows)
    assert tab.progress.value == 4 and "Done: 4 cells" in tab.status.object
    assert tab.figures.object is not None and len(tab.table.object) == 4
    got = json.loads(tab._download().read())
    assert got["format"] == "kn-sweep/1" and len(got["rows"]) == 4 and got["settings"]["iters"] == 3
    assert not tab.run_btn.disabled and tab.stop_btn.disabled
    from workbench.exact import log_evidence
    assert tab.reference == log_evidence(Model.from_dict(doc)) is not None   # drawn on the log-marginal figure


def test_compare_tab_reports_a_failing_cell_and_bad_input(shared):
    doc = Model.load(MODELS / "occupancy.json").to_dict()
    doc["name"] = "occ <i>x</i>"
    next(n for n in doc["nodes"] if n["name"] == "z")["enumerate"] = False   # sampled: VI cannot take it
    tab = C.CompareTab(lambda: doc, methods=("qem", "vi"), Ks="2", seeds="0", iters=2)
    tab.Ks.value = "2,<b>"
    assert not tab.start()
    assert tab.message.visible and "&lt;b&gt;" in tab.message.object
    tab.Ks.value = "2"
    assert tab.start() and tab.wait(120)
    assert not tab.message.visible
    by = {r["method"]: r for r in tab.rows}
    assert by["qem"]["status"] == "ok" and by["vi"]["status"] == "error" and "discrete" in by["vi"]["error"]
    assert "1 failed" in tab.status.object
    assert list(tab.table.object["error"])[1].startswith("method 'vi' needs")
