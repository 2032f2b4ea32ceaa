"""The workbench's views as plain functions of engine objects: no browser, no server."""
from __future__ import annotations

import io
import re

import numpy as np
import pytest

from engine import Model
from workbench import data as D
from workbench import exact as E
from workbench import files as F
from workbench import views as V
from workbench.forms import format_arg, parse_arg, parse_shape


def nested_model() -> Model:
    """mu -> a (in groups) -> y (in obs inside groups), with a covariate in obs."""
    return Model.from_dict({
        "format": "kn-model/1", "name": "nested",
        "plates": [{"name": "groups", "size": 3}, {"name": "obs", "size": 4, "in": "groups"}],
        "nodes": [
            {"name": "mu", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 1}},
            {"name": "s", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 1}},
            {"name": "a", "kind": "latent", "dist": "Normal", "args": {"loc": "mu", "scale": "s"}, "plate": "groups"},
            {"name": "y", "kind": "observed", "dist": "Normal", "args": {"loc": "a + 0.5 * w", "scale": 1},
             "plate": "obs"}],
        "data": {"y": np.linspace(-1, 1, 12).reshape(3, 4).tolist(), "w": np.ones((3, 4)).tolist()}})


def conjugate_model(G=4, n=3, seed=0) -> Model:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(G, n)).round(3)
    x[1, 2] = np.nan                     # a missing observation
    return Model.from_dict({
        "format": "kn-model/1", "name": "hg",
        "plates": [{"name": "g", "size": G}, {"name": "n", "size": n, "in": "g"}],
        "nodes": [{"name": "mu", "kind": "latent", "dist": "Normal", "args": {"loc": 0.5, "scale": 2}},
                  {"name": "z", "kind": "latent", "dist": "Normal", "args": {"loc": "mu", "scale": 0.7}, "plate": "g"},
                  {"name": "x", "kind": "observed", "dist": "Normal", "args": {"loc": "z", "scale": 1.3},
                   "plate": "n"}],
        "data": {"x": [[None if np.isnan(v) else float(v) for v in row] for row in x]}})


# ---- plate diagram ------------------------------------------------------------------------
def test_dot_has_nested_clusters_with_sizes_and_shaded_observed():
    dot = V.plate_diagram_dot(nested_model())
    outer = dot.index('subgraph "cluster_groups"')
    inner = dot.index('subgraph "cluster_obs"')
    assert outer < inner
    assert 'label="groups (3)"' in dot and 'label="obs (4)"' in dot
    # obs is nested: its cluster opens before groups' cluster closes
    depth, nested = 0, False
    for line in dot.splitlines():
        if "subgraph" in line:
            depth += 1
            nested |= "cluster_obs" in line and depth == 2
        elif line.strip() == "}":
            depth -= 1
    assert nested
    y_line = next(line for line in dot.splitlines() if line.strip().startswith('"y" ['))
    assert f'fillcolor="{V.OBSERVED_FILL}"' in y_line and "Normal" in y_line
    a_line = next(line for line in dot.splitlines() if line.strip().startswith('"a" ['))
    assert "fillcolor" not in a_line and ">Normal<" in a_line
    assert '"mu" -> "a"' in dot and '"a" -> "y"' in dot and '"w" -> "y"' in dot


def test_dot_colours_latents_by_ess():
    dot = V.plate_diagram_dot(nested_model(), ess={"mu": np.array(10.0), "a": np.array([1.0, 5, 9])}, K=10)
    mu = next(line for line in dot.splitlines() if line.strip().startswith('"mu" ['))
    a = next(line for line in dot.splitlines() if line.strip().startswith('"a" ['))
    assert V.ess_colour(1.0) in mu and "ESS 10/10" in mu
    assert V.ess_colour(0.1) in a and "ESS 1/10" in a          # min over plate elements


def test_svg_renders_without_dot_on_path(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    dot = V.plate_diagram_dot(nested_model())
    svg = V.render_svg(dot)
    assert svg.startswith("<svg") and "groups (3)" in svg and ">y<" in svg
    assert V._graphviz_pure() is not None          # found beside the interpreter, not on PATH


def test_svg_fallback_is_never_blank(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(V, "_graphviz_pure", lambda: None)
    svg = V.render_svg(V.plate_diagram_dot(nested_model()))
    assert svg.startswith("<svg")
    for text in ("mu", "a", "y", "groups (3)", "obs (4)"):
        assert f">{text}<" in svg
    assert svg.count("<ellipse") == 4 and "<line" in svg
    assert V.fallback_svg("digraph {}").startswith("<svg")


# ---- einsum path ---------------------------------------------------------------------------
def test_einsum_table_matches_the_plan():
    s = nested_model().sample(K=4, seed=0)
    path = s.einsum_path()
    table = V.einsum_table(s)
    summary = V.einsum_summary(s)
    steps = [st for d in path for st in (d["steps"] or [None])]
    assert len(table) == len(steps)
    for row, st in zip(table.to_dict("records"), steps):
        if st is not None:
            assert row["equation"] == st["equation"]
            assert row["result elements"] == st["output_elements"]
            assert row["result bytes"] == st["output_elements"] * 4       # float32
            assert row["sums out"] == ", ".join(st["sums_out"])
            assert row["summed as it goes"] == (st["summed_over"] or "")
    for d, row in zip(path, summary.to_dict("records")):
        assert row["naive flops"] == d["naive_flops"] and row["optimized flops"] == d["optimized_flops"]
        assert row["largest intermediate"] == d["largest_intermediate"]
        assert row["largest intermediate bytes"] == 4 * d["largest_intermediate"]
        assert row["plate"] == d["plate"]
        if d["steps"]:      # per-step FLOPs add up to opt_einsum's optimised cost
            mine = table[(table["plate"] == d["plate"]) & (table["step"] != "-")]["flops"]
            assert int(mine.sum()) == d["optimized_flops"]
    # innermost plate first, and the operands name factors and earlier results
    assert list(summary["plate"]) == ["obs", "groups", "(global)"]
    assert "K:a(4)" in " ".join(table["indices"])
    assert "Σobs" in " ".join(table["operands"]) and re.search(r"\bt\d", " ".join(table["operands"]))


def test_einsum_table_from_a_description_and_a_program():
    prog = nested_model().compile(3)
    assert len(V.einsum_table(prog)) == len(V.einsum_table(prog.plan.describe()))
    assert V.einsum_table(prog.plan.describe())["flops"].isna().any()     # a bare description has no per-step FLOPs
    assert V.human_bytes(2048) == "2.0 KB"


# ---- ESS -------------------------------------------------------------------------------------
def test_ess_figure_marks_degenerate_latents():
    from bokeh.models import ColumnDataSource, Span
    ess = {"good": np.array(9.0), "bad": np.array([1.0, 8.0, 9.0]), "fine": np.array([5.0, 6.0])}
    fig = V.ess_figure(ess, K=10)
    src = fig.select_one({"name": "ess", "type": ColumnDataSource})
    d = dict(zip(src.data["latent"], src.data["degenerate"]))
    assert d == {"good": False, "bad": True, "fine": False}
    col = dict(zip(src.data["latent"], src.data["colour"]))
    assert col["bad"] == V.DEGENERATE and col["good"] == V.ess_colour(0.9) != V.DEGENERATE
    assert dict(zip(src.data["latent"], src.data["min"]))["bad"] == 1.0
    assert dict(zip(src.data["latent"], src.data["median"]))["bad"] == 8.0
    assert "degenerate" in dict(zip(src.data["latent"], src.data["label"]))["bad"]
    spans = {s.name: s.location for s in fig.select({"type": Span})}
    assert spans == {"threshold": V.default_threshold(10), "K": 10}
    assert fig.x_range.end > 10


def test_ess_figure_from_a_sample():
    s = nested_model().sample(K=5, seed=1)
    data = V.ess_data(s.ess(), 5)
    assert data["latent"] == ["mu", "s", "a"]
    assert data["min"] == pytest.approx([float(s.ess(n).min()) for n in data["latent"]])
    assert data["median"] == pytest.approx([float(s.ess(n).median()) for n in data["latent"]])


# ---- ELBO ------------------------------------------------------------------------------------
def test_elbo_figure_overlays_runs():
    from bokeh.models import ColumnDataSource, GlyphRenderer
    fig = V.elbo_figure({"QEM": [-5, -4, -3.5], "RWS": [-6, -5]})
    lines = [r for r in fig.select({"type": GlyphRenderer}) if r.name in ("QEM", "RWS")]
    assert sorted(r.name for r in lines) == ["QEM", "RWS"]
    src = fig.select_one({"name": "QEM", "type": ColumnDataSource})
    assert list(src.data["elbo"]) == [-5, -4, -3.5] and list(src.data["iteration"]) == [1, 2, 3]
    assert [item.label.value for item in fig.legend[0].items] == ["QEM", "RWS"]
    assert fig.legend[0] in fig.right                        # beside the plot, off the curves
    assert V.elbo_figure([]) is not None
    from bokeh.models import Span
    ref = V.elbo_figure({"QEM": [-5, -4]}, reference=-3.9)
    assert [sp.location for sp in ref.select({"type": Span}) if sp.name == "exact"] == [-3.9]


def test_elbo_range_is_readable():
    early = [-80000.0, -900.0] + [-10.0 - 1.0 / i for i in range(1, 19)]   # a first step far below the rest
    lo, hi = V.elbo_range({"QEM": early, "VI": [-12.0, -11.0]})
    assert -13 < lo < -12 and -10 < hi < -9.5                    # the later points fill the plot
    fig = V.elbo_figure({"QEM": early})
    assert fig.y_range.start > -12 and fig.y_range.end < -9
    assert V.elbo_range({}) is None and V.elbo_range({"a": [-3.0]}) == pytest.approx((-4.0, -2.0))


# ---- posterior -------------------------------------------------------------------------------
def test_safe_html_escapes_everything_it_does_not_mark_up():
    out = V.safe_html('**bold** `code` <img src=x onerror="alert(1)"> & "q"\nnext')
    assert out == ('<b>bold</b> <code>code</code> &lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; '
                   '&quot;q&quot;<br>next')
    assert "<script" not in V.safe_html("**<script>alert(1)</script>**")


def _result(model, K=20, seed=0):
    from engine.fit import Fitter
    return Fitter(model, "is", K=K, seed=seed).result()


def test_posterior_view_and_exact_overlay():
    from bokeh.models import GlyphRenderer
    m = conjugate_model()
    r = _result(m)
    ex = E.gaussian_hierarchy(m)
    names = ["mu", "z[1]"]
    grid = V.posterior_view(r, names, exact=ex, draws=300)
    figs = [c[0] if isinstance(c, tuple) else c for c in grid.children]
    assert [f.title.text for f in figs] == names
    for f in figs:
        assert f.select_one({"name": "hist", "type": GlyphRenderer}) is not None
        assert f.select_one({"name": "kde", "type": GlyphRenderer}) is not None
        assert f.select_one({"name": "exact", "type": GlyphRenderer}) is not None
    grid = V.posterior_view(r, ["mu"], exact=None, draws=100)
    f = grid.children[0][0] if isinstance(grid.children[0], tuple) else grid.children[0]
    assert f.select_one({"name": "exact", "type": GlyphRenderer}) is None
    with pytest.raises(ValueError, match="no latent"):
        V.posterior_view(r, ["nope"], draws=10)
    assert V.posterior_names(m) == ["mu", "z[0]", "z[1]", "z[2]", "z[3]"]
    assert f.legend[0] in f.below                            # under the plot, off the data


def test_a_discrete_latent_is_drawn_as_bars():
    from bokeh.models import GlyphRenderer
    m = Model.from_dict({"format": "kn-model/1", "name": "coin",
                         "nodes": [{"name": "c", "kind": "latent", "dist": "Bernoulli", "args": {"probs": 0.3}},
                                   {"name": "x", "kind": "observed", "dist": "Normal",
                                    "args": {"loc": "c * 2", "scale": 1}}],
                         "data": {"x": 1.5}})
    r = _result(m)
    fig = V.posterior_view(r, ["c"], draws=400).children[0][0]
    bars = fig.select_one({"name": "bars", "type": GlyphRenderer})
    assert bars is not None and fig.select_one({"name": "kde", "type": GlyphRenderer}) is None
    xs, tops = list(bars.data_source.data["x"]), list(bars.data_source.data["top"])
    assert set(xs) <= {0, 1} and sum(tops) == pytest.approx(1.0) and fig.yaxis[0].axis_label == "probability"


def test_exact_pdf_forms():
    x = np.linspace(-3, 3, 7)
    normal = V.exact_pdf({"dist": "Normal", "args": {"loc": 0, "scale": 1}}, x)
    assert np.allclose(normal, np.exp(-x ** 2 / 2) / np.sqrt(2 * np.pi))
    assert np.allclose(V.exact_pdf(lambda t: np.ones_like(t), x), 1)
    assert np.allclose(V.exact_pdf({"x": [-3, 3], "pdf": [0, 6]}, x), x + 3)
    assert np.all(V.exact_pdf({"dist": "HalfNormal", "args": {"scale": 1}}, x)[:3] == 0)


def test_summary_table_from_a_run():
    from engine.fit import Fitter
    f = Fitter(conjugate_model(), "qem", K=5, seed=0)
    list(f.run(2))
    r = f.result()
    table = V.summary_table(r)
    assert {"mu", "z[0]", "z[3]"} <= set(table.index)
    assert list(table.columns) == ["mean", "mcse_mean", "sd", "mcse_sd", "hdi_3%", "hdi_97%", "ess"]
    row = next(x for x in r.summary() if x["name"] == "z[3]")
    err = row["mcse_mean"]
    assert abs(table.loc["z[3]", "mean"] - row["mean"]) <= err and table.loc["z[3]", "mcse_mean"] == float(f"{err:.2g}")
    digits = len(f"{table.loc['z[3]', 'mean']}".split(".")[1]) if "." in f"{table.loc['z[3]', 'mean']}" else 0
    assert 10 ** -digits >= err / 100                           # no digits beyond what the MCSE supports


def test_exact_gaussian_hierarchy_matches_a_brute_force_solution():
    from exact import gaussian_network, hierarchy_net   # tests/exact.py: closed forms for linear-Gaussian networks
    m = conjugate_model()
    ex = E.gaussian_hierarchy(m)
    x = np.asarray(m.data["x"], float)
    out = gaussian_network(hierarchy_net(x, m0=0.5, s0=2.0, tau=0.7, sigma=1.3))
    mean, var = out["mean"], out["var"]
    assert ex["mu"]["args"]["loc"] == pytest.approx(mean["mu"], rel=1e-6)
    assert ex["mu"]["args"]["scale"] == pytest.approx(np.sqrt(var["mu"]), rel=1e-6)
    for g in range(4):
        assert ex[f"z[{g}]"]["args"]["loc"] == pytest.approx(mean[f"z{g}"], rel=1e-6)
        assert ex[f"z[{g}]"]["args"]["scale"] == pytest.approx(np.sqrt(var[f"z{g}"]), rel=1e-6)
    assert E.gaussian_hierarchy(nested_model()) == {} and E.log_evidence(nested_model()) is None
    assert E.log_evidence(m) == pytest.approx(out["log_evidence"], rel=1e-9)


# ---- data and form helpers -------------------------------------------------------------------
def test_uploads_and_group_padding():
    cols = F.data_from_upload("d.csv", b"value,group,name\n1.5,0,a\n2.5,1,b\n3.5,0,c\n")
    assert set(cols) == {"value", "group"} and cols["group"].dtype.kind == "i"
    padded = D.group_pad(cols["value"], cols["group"])
    assert padded.shape == (2, 2) and padded[0].tolist() == [1.5, 3.5] and np.isnan(padded[1, 1])
    buf = io.BytesIO()
    np.savez(buf, y=np.arange(3.0))
    assert F.data_from_upload("d.npz", buf.getvalue())["y"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="csv or .npz"):
        F.data_from_upload("d.xlsx", b"")
    assert "eight schools" in D.bundled() and D.bundled()["seeds"]()["r"].shape == (21,)
    radon = D.bundled()["radon (Minnesota, from ArviZ)"]()
    assert radon["log_radon"].shape == (919,) and D.group_pad(radon["log_radon"], radon["county"]).shape == (85, 116)


def test_form_parsing():
    assert parse_arg("1") == 1 and parse_arg("2.5") == 2.5 and parse_arg("[1, 2]") == [1, 2]
    assert parse_arg('{"param": 0.3}') == {"param": 0.3}
    assert parse_arg("mu + 1") == "mu + 1" and parse_arg("  ") is None and parse_arg("true") == "true"
    assert format_arg(1.5) == "1.5" and format_arg("a*b") == "a*b" and format_arg([1, 2]) == "[1, 2]"
    assert parse_shape("2, 3") == [2, 3] and parse_shape("") is None
    with pytest.raises(ValueError):
        parse_shape("x")
