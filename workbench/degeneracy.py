"""Particle-degeneracy views: plain functions of engine objects.

Each view comes as numbers (a function returning arrays, which the tests check) and a
Bokeh figure drawn from those numbers:

    weight_matrix / weights_heatmap      marginal weights, plate elements x K particles, sorted
    coupling / coupling_heatmap          the joint marginal P(k_child, k_parent)
    particle_density / particles_figure  proposal density, exact posterior, weighted particles
    ess_vs_K / ess_k_figure              ESS and log-marginal gap against K, MP beside global IS
    ess_vs_latents / ess_latents_figure  ESS against the number of latents: global IS collapses
    global_log_weights, pareto_khat      PSIS k-hat of global importance weights (0.7 threshold)

This module imports only the engine (never the rest of the workbench), so notebooks and
tests can use it on its own.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from engine import Model, ModelError, datasets
from .exact import log_evidence
from .views import exact_pdf

KHAT_THRESHOLD = 0.7     # Vehtari et al. (2024): above it, importance sampling is unreliable
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=float)


def _check_latent(sample, name):
    if name not in sample.program.latents:
        raise ModelError(f"{name!r} is not a latent of this model (latents: {', '.join(sample.program.latents)})")


def _labels(name, shape):
    if not shape:
        return [name]
    return [f"{name}[{','.join(str(i) for i in idx)}]" for idx in np.ndindex(*shape)]


# ---- weights heatmap -------------------------------------------------------------------------------
def top_share(sample, name: str) -> np.ndarray:
    """Share of latent `name`'s marginal weight held by its heaviest particle, per plate
    element (*plates). 1/K is perfectly even; 1 is total collapse onto one particle."""
    _check_latent(sample, name)
    return _np(sample.marginal_weights(name)).max(0)


def weight_matrix(sample, name: str) -> dict:
    """Marginal weights as an (elements, K) matrix, each row sorted heaviest first and the
    rows sorted most collapsed first: {"w", "labels" (row names), "top_share" (per row, in
    row order), "mean_top_share", "ess" (per row)}."""
    _check_latent(sample, name)
    w = _np(sample.marginal_weights(name))              # (K, *plates)
    plates = w.shape[1:]
    w = w.reshape(w.shape[0], -1).T                      # (elements, K)
    w = -np.sort(-w, axis=1)
    order = np.argsort(-w[:, 0], kind="stable")
    labels = _labels(name, plates)
    return {"w": w[order], "labels": [labels[i] for i in order], "top_share": w[order, 0],
            "mean_top_share": float(w[:, 0].mean()), "ess": 1.0 / (w[order] ** 2).sum(1), "K": w.shape[1]}


def weights_heatmap(sample, name: str, max_rows: int = 60):
    """Heatmap of `weight_matrix`: plate elements (most collapsed at the top) x particles
    (heaviest at the left), coloured by marginal weight."""
    from bokeh.models import ColorBar, LinearColorMapper
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure
    d = weight_matrix(sample, name)
    w, labels = d["w"][:max_rows], d["labels"][:max_rows]
    n, K = w.shape
    mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=1.0)
    title = (f"{name}: marginal weights, K={K}; top particle holds {d['mean_top_share']:.0%} on average "
             f"(even: {1 / K:.0%})")
    fig = figure(title=title, x_range=(0.5, K + 0.5), y_range=(n - 0.5, -0.5), height=max(180, 60 + 14 * n),
                 width=560, x_axis_label="particle, heaviest first", y_axis_label="plate element, most collapsed first",
                 tools="hover,save", tooltips=[("weight", "@image{0.000}")], toolbar_location="right")
    fig.image(image=[w], x=0.5, y=-0.5, dw=K, dh=n, color_mapper=mapper, name="weights")   # row 0 on top
    fig.yaxis.ticker = list(range(n)) if n <= 30 else list(range(0, n, max(1, n // 15)))
    fig.yaxis.major_label_overrides = {i: labels[i] for i in range(n)}
    fig.add_layout(ColorBar(color_mapper=mapper, title="weight", width=10), "right")
    return fig


# ---- coupling --------------------------------------------------------------------------------------
def coupling(sample, child: str, parent: str, element: tuple | int | None = None) -> np.ndarray:
    """Joint marginal P(k_child, k_parent), (K, K), rows the child's particles: the gradient of
    log P_MP with respect to the child's factor, summed over the factor's other K-dims. With
    `element` None it is averaged over the child's plate elements (each sums to 1), else
    taken at that element (an index into the child's plates)."""
    _check_latent(sample, child)
    _check_latent(sample, parent)
    prog = sample.program
    kc, kp = prog.kdim[child], prog.kdim[parent]
    if kc == kp:
        raise ModelError(f"{child!r} and {parent!r} share one K-dim; they have no joint over two indices")
    j = sample.joint_marginal(child)
    if kp not in j.dims:
        raise ModelError(f"{parent!r} is not a parent of {child!r} (its factor spans {', '.join(j.dims)})")
    plates = prog.chain[child]
    t = j.expand_to((kc, kp, *[d for d in j.dims if d not in (kc, kp, *plates)], *plates), prog.sizes)
    t = t.reshape(prog.K, prog.K, -1, *[prog.sizes[p] for p in plates]).sum(2)
    t = _np(t)
    if not plates:
        return t
    if element is None:
        return t.reshape(prog.K, prog.K, -1).mean(-1)
    idx = (element,) if isinstance(element, (int, np.integer)) else tuple(element)
    if len(idx) != len(plates):
        raise ModelError(f"element {element!r}: {child!r} lives in plates {plates}; give {len(plates)} index(es)")
    return t[(slice(None), slice(None), *idx)]


def _order_by_value(sample, name, element):
    v = _np(sample.values[name].expand_to((sample.program.kdim[name], *sample.program.chain[name]),
                                          sample.program.sizes))
    if v.ndim - 1 > len(sample.program.chain[name]):
        return np.arange(v.shape[0]), v
    if sample.program.chain[name]:
        v = v.reshape(v.shape[0], -1)
        v = v[:, 0] if element is None else v.reshape(v.shape[0], *[sample.program.sizes[p] for p in
                                                                     sample.program.chain[name]])[
            (slice(None), *((element,) if isinstance(element, (int, np.integer)) else element))]
    return np.argsort(v, kind="stable"), v


def coupling_heatmap(sample, child: str, parent: str, element=None):
    """Heatmap of `coupling`, particles of each latent sorted by value (scalar latents)."""
    from bokeh.models import ColorBar, LinearColorMapper
    from bokeh.palettes import Viridis256
    from bokeh.plotting import figure
    P = coupling(sample, child, parent, element)
    oc, _ = _order_by_value(sample, child, element if sample.program.chain[child] else None)
    op, _ = _order_by_value(sample, parent, None)
    P = P[np.ix_(oc, op)]
    K = P.shape[0]
    mapper = LinearColorMapper(palette=Viridis256, low=0.0, high=float(P.max()) or 1.0)
    where = "averaged over plate elements" if element is None and sample.program.chain[child] else \
        (f"element {element}" if element is not None else "")
    fig = figure(title=f"P(k_{child}, k_{parent}) {where}".strip(), x_range=(0.5, K + 0.5), y_range=(0.5, K + 0.5),
                 width=420, height=400, x_axis_label=f"{parent} particle (by value)",
                 y_axis_label=f"{child} particle (by value)", tools="hover,save",
                 tooltips=[("P", "@image{0.0000}")])
    fig.image(image=[P], x=0.5, y=0.5, dw=K, dh=K, color_mapper=mapper, name="coupling")
    fig.add_layout(ColorBar(color_mapper=mapper, width=10), "right")
    return fig


# ---- particles on the density --------------------------------------------------------------------------
def proposal_log_density(sample, name: str, x: np.ndarray, element: tuple = ()) -> np.ndarray:
    """log Q(x) of latent `name`'s proposal at plate element `element`, for scalar latents:
    the learned family where there is one, else the prior given the parents' particles mixed
    uniformly over them (the engine's Q_MP)."""
    _check_latent(sample, name)
    prog = sample.program
    element = (element,) if isinstance(element, (int, np.integer)) else tuple(element)
    plates = prog.chain[name]
    if len(element) != len(plates):
        raise ModelError(f"{name!r} lives in plates {plates or '(none)'}; give {len(plates)} index(es)")
    xt = torch.as_tensor(np.asarray(x, dtype=float), dtype=prog.dtype, device=prog.device)
    q = prog.proposal[name]
    with torch.no_grad():
        if q is not None:
            if q.event_shape:
                raise ModelError(f"{name!r} is not scalar (event shape {q.event_shape})")
            d = q.dist()
            lp = d.log_prob(xt.reshape(-1, *[1] * len(plates)))[(slice(None), *element)]
            return _np(lp)
        d, dims, n_extra = prog.distribution(name, sample.values)
        if n_extra or d.event_shape:
            raise ModelError(f"{name!r} is not scalar")
        shape = [prog.sizes[dd] for dd in dims]
        lp = d.expand(shape).log_prob(xt.reshape(-1, *[1] * len(dims)))
        try:
            ok = d.support.check(xt.reshape(-1, *[1] * len(dims)))
            lp = torch.where(ok, lp, torch.full_like(lp, -math.inf))
        except (NotImplementedError, AttributeError):
            pass
        for i in reversed(range(len(dims))):          # pick the plate element; K-dims remain
            if dims[i] in plates:
                lp = lp.select(i + 1, element[plates.index(dims[i])])
        if lp.dim() > 1:                                # uniform mixture over parents' particles
            lp = torch.logsumexp(lp.reshape(lp.shape[0], -1), 1) - math.log(lp[0].numel())
        return _np(lp)


def particle_density(sample, name: str, element: tuple | int = (), exact=None, n_grid: int = 400) -> dict:
    """For a scalar latent at one plate element: its K particles and their marginal weights,
    and on a grid (spanning the exact posterior's bulk and the particles with at least 1/1000
    of the top weight; "outside" counts the particles beyond it) the proposal density and, if `exact` is given (a callable x -> pdf,
    {"dist": ..., "args": {...}} or {"x": [...], "pdf": [...]}, as in a model file's "exact"
    field), the exact posterior density. Also the weighted and the
    exact mean where both are known."""
    _check_latent(sample, name)
    prog = sample.program
    element = (element,) if isinstance(element, (int, np.integer)) else tuple(element)
    v = _np(sample.values[name].expand_to((prog.kdim[name], *prog.chain[name]), prog.sizes))
    if v.ndim != 1 + len(prog.chain[name]):
        raise ModelError(f"{name!r} is not a scalar latent (event shape {v.shape[1 + len(prog.chain[name]):]})")
    if len(element) != len(prog.chain[name]):
        raise ModelError(f"{name!r} lives in plates {prog.chain[name] or '(none)'}; give {len(prog.chain[name])} index(es)")
    x = v[(slice(None), *element)]
    w = _np(sample.marginal_weights(name))[(slice(None), *element)]
    heavy = x[w >= 1e-3 * w.max()]          # the view spans the particles that carry weight
    lo, hi = float(heavy.min()), float(heavy.max())
    if isinstance(exact, dict) and exact.get("dist") == "Normal":
        loc, sc = float(exact["args"]["loc"]), float(exact["args"]["scale"])
        lo, hi = min(lo, loc - 4 * sc), max(hi, loc + 4 * sc)
    elif isinstance(exact, dict) and "pdf" in exact:
        gx, gp = np.asarray(exact["x"], float), np.asarray(exact["pdf"], float)
        mass = gx[gp > 1e-3 * gp.max()]
        lo, hi = min(lo, float(mass.min())), max(hi, float(mass.max()))
    span = max(hi - lo, 1e-6)
    grid = np.linspace(lo - 0.15 * span, hi + 0.15 * span, n_grid)
    out = {"x": x, "w": w, "grid": grid, "outside": int(((x < grid[0]) | (x > grid[-1])).sum()), "proposal": np.exp(proposal_log_density(sample, name, grid, element)),
           "exact": exact_pdf(exact, grid), "weighted_mean": float((w * x).sum()), "ess": float(1 / (w * w).sum())}
    if out["exact"] is not None and np.trapezoid(out["exact"], grid) > 0:
        out["exact_mean"] = float(np.trapezoid(out["exact"] * grid, grid) / np.trapezoid(out["exact"], grid))
    return out


def particles_figure(sample, name: str, element: tuple | int = (), exact=None):
    """Proposal density, exact posterior (where known) and the K particles as a rug whose
    marker area is the particle's marginal weight."""
    from bokeh.models import ColumnDataSource
    from bokeh.plotting import figure
    d = particle_density(sample, name, element, exact)
    label = f"{name}[{','.join(map(str, element))}]" if element not in ((), None) and not isinstance(element, int) \
        else (f"{name}[{element}]" if isinstance(element, int) else name)
    more = f"; {d['outside']} far out of view" if d["outside"] else ""
    fig = figure(title=f"{label}: K={len(d['x'])} particles, ESS {d['ess']:.1f}{more}", height=280, width=560,
                 x_range=(float(d["grid"][0]), float(d["grid"][-1])),
                 x_axis_label=label, y_axis_label="density", tools="pan,wheel_zoom,reset,save,hover",
                 tooltips=[("x", "@x{0.000}"), ("weight", "@w{0.000}")])
    top = float(np.nanmax([d["proposal"].max(), *([d["exact"].max()] if d["exact"] is not None else [])]) or 1.0)
    fig.line(d["grid"], d["proposal"], color=COLOURS[0], line_width=2, legend_label="proposal", name="proposal")
    if d["exact"] is not None:
        fig.line(d["grid"], d["exact"], color="black", line_width=2, line_dash="dashed", legend_label="exact posterior",
                 name="exact")
    src = ColumnDataSource({"x": d["x"], "w": d["w"], "size": 4 + 40 * np.sqrt(d["w"]),
                            "y": np.full(len(d["x"]), -0.04 * top), "top": d["w"] * top})
    fig.segment(x0="x", y0=0, x1="x", y1="top", source=src, color=COLOURS[1], line_width=2, alpha=0.7)
    fig.scatter(x="x", y="y", size="size", source=src, color=COLOURS[1], alpha=0.5, legend_label="particles (area ~ weight)",
                name="particles")
    fig.legend.location = "top_right"
    fig.legend.label_text_font_size = "8pt"
    return fig


# ---- global importance sampling: log weights and Pareto k-hat ----------------------------------------------
def global_log_weights(sample) -> np.ndarray:
    """The K joint log importance weights of a global sample (`model.sample_global`): each
    factor summed over its plates."""
    prog = sample.program
    if prog.mode != "global":
        raise ModelError("global log weights need a global sample (model.sample_global(K))")
    lw = torch.zeros(prog.K, dtype=torch.float64)
    for f in sample.factors.values():
        t = f.t.detach().double().cpu()
        if "K" in f.dims:
            t = t.movedim(f.dims.index("K"), 0).reshape(prog.K, -1).sum(1)
        else:
            t = t.sum().expand(prog.K)
        lw = lw + t
    return lw.numpy()


def ess_of_log_weights(lw: np.ndarray) -> float:
    w = np.exp(lw - lw.max())
    w /= w.sum()
    return float(1.0 / (w * w).sum())


def pareto_khat(sample_or_log_weights) -> float:
    """PSIS shape estimate k-hat (az.psislw) of global importance weights: above 0.7 the
    importance-sampling estimates are unreliable. NaN below 20 samples (too few in the tail)."""
    import arviz as az
    lw = sample_or_log_weights if isinstance(sample_or_log_weights, np.ndarray) else \
        global_log_weights(sample_or_log_weights)
    if len(lw) < 20:     # too few tail samples for the generalised Pareto fit
        return float("nan")
    _, k = az.psislw(np.asarray(lw, dtype=float).copy())
    return float(k)


# ---- sweeps ------------------------------------------------------------------------------------------
def _reference_log_evidence(model) -> tuple[float | None, str]:
    exact = model.extras.get("exact") or {}
    if "@log_evidence" in exact:
        return float(exact["@log_evidence"]), "exact"
    value = log_evidence(model)
    if value is not None:
        return value, "exact"
    ref = datasets.reference(model.name)
    if ref is not None and "log_evidence" in ref:
        return float(ref["log_evidence"]), "reference"
    return None, ""


def ess_vs_K(model: Model, Ks=(3, 10, 30, 100, 300, 1000), seeds=range(3), max_bytes: float = 2e9,
             reference: float | None = None) -> dict:
    """ESS and log marginal against K for MP importance sampling (the prior as proposal) and
    global importance sampling (K joint samples) on `model`, averaged over `seeds`.
    {"K", "mp_ess": {latent: mean ESS over plate elements and seeds}, "global_ess",
     "mp_log_marginal", "global_log_marginal", "khat" (global, mean over seeds),
     "reference" (exact or stored log evidence, else the largest-K MP estimate),
     "reference_kind", "mp_gap", "global_gap" (reference - mean estimate)}. MP runs whose
    estimated memory passes `max_bytes` are skipped (NaN)."""
    Ks = [int(k) for k in Ks]
    seeds = list(seeds)
    lat = model.latents
    out = {"K": np.array(Ks), "mp_ess": {n: np.full(len(Ks), np.nan) for n in lat},
           "global_ess": np.full(len(Ks), np.nan), "mp_log_marginal": np.full(len(Ks), np.nan),
           "global_log_marginal": np.full(len(Ks), np.nan), "khat": np.full(len(Ks), np.nan)}
    for i, K in enumerate(Ks):
        prog = model.compile(K, device="cpu")
        if prog.memory_estimate() <= max_bytes:
            ess, lm = {n: [] for n in lat}, []
            for s in seeds:
                smp = prog.sample(s)
                lm.append(smp.log_marginal())
                for n, e in smp.ess().items():
                    ess[n].append(float(_np(e).mean()))
            for n in lat:
                out["mp_ess"][n][i] = np.mean(ess[n])
            out["mp_log_marginal"][i] = np.mean(lm)
        gprog = model.compile(K, mode="global", device="cpu")
        gess, glm, gk = [], [], []
        for s in seeds:
            smp = gprog.sample(s)
            lw = global_log_weights(smp)
            gess.append(ess_of_log_weights(lw))
            glm.append(smp.log_marginal())
            gk.append(pareto_khat(lw))
        out["global_ess"][i], out["global_log_marginal"][i], out["khat"][i] = np.mean(gess), np.mean(glm), np.mean(gk)
    ref, kind = (reference, "given") if reference is not None else _reference_log_evidence(model)
    if ref is None:
        good = np.isfinite(out["mp_log_marginal"])
        ref, kind = (float(out["mp_log_marginal"][good][-1]), f"MP at K={Ks[np.flatnonzero(good)[-1]]}") \
            if good.any() else (float("nan"), "none")
    out.update(reference=ref, reference_kind=kind, mp_gap=ref - out["mp_log_marginal"],
               global_gap=ref - out["global_log_marginal"])
    return out


def ess_vs_latents(groups=(1, 2, 5, 10, 20, 50, 100, 200), K: int = 100, per_group: int = 5, seeds=range(3),
                   data_seed: int = 0) -> dict:
    """Global collapse against the number of latents, on the conjugate Gaussian hierarchy
    (engine.datasets.hierarchical_gaussian) with G groups (G + 1 latents), K samples, the
    prior as proposal. {"groups", "n_latents", "global_ess", "mp_ess" (z's, mean over
    groups), "mp_ess_mu", "kl" (exact KL(posterior || prior)), "exp_kl" (the Chatterjee-
    Diaconis sample size exp(KL)), "khat", "global_gap", "mp_gap" (exact log evidence -
    estimate)}, means over seeds."""
    from engine import datasets
    seeds = list(seeds)
    rows = []
    for G in groups:
        m = datasets.hierarchical_gaussian(int(G), per_group, data_seed)
        ex = datasets.exact_posterior(m)
        g, mp = m.compile(K, mode="global", device="cpu"), m.compile(K, device="cpu")
        r = {"ge": [], "gl": [], "k": [], "me": [], "mm": [], "ml": []}
        for s in seeds:
            gs = g.sample(s)
            lw = global_log_weights(gs)
            r["ge"].append(ess_of_log_weights(lw))
            r["gl"].append(gs.log_marginal())
            r["k"].append(pareto_khat(lw))
            ms = mp.sample(s)
            e = ms.ess()
            r["me"].append(float(_np(e["z"]).mean()))
            r["mm"].append(float(_np(e["mu"]).mean()))
            r["ml"].append(ms.log_marginal())
        rows.append((ex["kl_prior"], ex["log_evidence"], {k: float(np.mean(v)) for k, v in r.items()}))
    groups = np.array([int(G) for G in groups])
    kl = np.array([r[0] for r in rows])
    le = np.array([r[1] for r in rows])
    col = lambda k: np.array([r[2][k] for r in rows])
    return {"groups": groups, "n_latents": groups + 1, "K": K, "global_ess": col("ge"), "mp_ess": col("me"),
            "mp_ess_mu": col("mm"), "kl": kl, "exp_kl": np.exp(np.minimum(kl, 700)), "khat": col("k"),
            "global_gap": le - col("gl"), "mp_gap": le - col("ml")}


# ---- sweep figures ------------------------------------------------------------------------------------------
def _khat_panel(x, khat, x_label, x_type="log"):
    from bokeh.models import Span
    from bokeh.plotting import figure
    fig = figure(title="Pareto k-hat of the global weights", height=260, width=340, x_axis_type=x_type,
                 x_axis_label=x_label, y_axis_label="k-hat", tools="save")
    fig.line(x, khat, color=COLOURS[1], line_width=2)
    fig.scatter(x, khat, color=COLOURS[1], size=6, name="khat")
    fig.add_layout(Span(location=KHAT_THRESHOLD, dimension="width", line_dash="dashed", line_color="black"))
    fig.text([x[0]], [KHAT_THRESHOLD], text=[f"{KHAT_THRESHOLD} threshold"], text_font_size="8pt",
             y_offset=-2, text_baseline="bottom")
    return fig


def ess_k_figure(sweep: dict):
    """ESS against K (MP per latent, global) beside the log-marginal gap, and k-hat."""
    from bokeh.layouts import row
    from bokeh.plotting import figure
    K = sweep["K"].astype(float)
    f1 = figure(title="ESS against K", height=260, width=340, x_axis_type="log", y_axis_type="log",
                x_axis_label="K", y_axis_label="ESS (mean over plate elements)", tools="save")
    f1.line(K, K, color="#bbbbbb", line_dash="dotted", legend_label="ESS = K")
    for i, (n, e) in enumerate(sweep["mp_ess"].items()):
        ok = np.isfinite(e)
        f1.line(K[ok], e[ok], color=COLOURS[(i + 2) % len(COLOURS)], line_width=2, legend_label=f"MP {n}")
    f1.line(K, sweep["global_ess"], color=COLOURS[1], line_width=3, legend_label="global", name="global_ess")
    f1.legend.location = "top_left"
    f1.legend.label_text_font_size = "7pt"
    f2 = figure(title=f"log-marginal gap to {sweep['reference_kind']} log evidence", height=260, width=340,
                x_axis_type="log", x_axis_label="K", y_axis_label="reference - estimate (nats)", tools="save")
    ok = np.isfinite(sweep["mp_gap"])
    f2.line(K[ok], sweep["mp_gap"][ok], color=COLOURS[0], line_width=2, legend_label="MP")
    f2.scatter(K[ok], sweep["mp_gap"][ok], color=COLOURS[0], size=6)
    f2.line(K, sweep["global_gap"], color=COLOURS[1], line_width=2, legend_label="global")
    f2.scatter(K, sweep["global_gap"], color=COLOURS[1], size=6)
    f2.legend.label_text_font_size = "8pt"
    return row(f1, f2, _khat_panel(K, sweep["khat"], "K"))


def ess_latents_figure(sweep: dict):
    """ESS/K against the number of latents (global collapses, MP does not), beside the
    samples global IS needs, exp(KL(posterior || prior)), and k-hat."""
    from bokeh.layouts import row
    from bokeh.plotting import figure
    n, K = sweep["n_latents"].astype(float), sweep["K"]
    f1 = figure(title=f"ESS / K against the number of latents (K={K})", height=260, width=340, x_axis_type="log",
                y_axis_type="log", x_axis_label="latents", y_axis_label="ESS / K", tools="save")
    f1.line(n, sweep["mp_ess"] / K, color=COLOURS[0], line_width=2, legend_label="MP (group means z)")
    f1.line(n, sweep["mp_ess_mu"] / K, color=COLOURS[2], line_width=2, legend_label="MP (mu)")
    f1.line(n, sweep["global_ess"] / K, color=COLOURS[1], line_width=3, legend_label="global", name="global_ess")
    f1.legend.location = "bottom_left"
    f1.legend.label_text_font_size = "8pt"
    f2 = figure(title="samples global IS needs: exp(KL)", height=260, width=340, x_axis_type="log",
                y_axis_type="log", x_axis_label="latents", y_axis_label="exp KL(posterior || prior)", tools="save")
    f2.line(n, sweep["exp_kl"], color="black", line_width=2)
    f2.scatter(n, sweep["exp_kl"], color="black", size=5)
    f2.line(n, np.full(len(n), K), color=COLOURS[1], line_dash="dashed", legend_label=f"K = {K}")
    f2.legend.location = "top_left"
    return row(f1, f2, _khat_panel(n, sweep["khat"], "latents"))


__all__ = ["top_share", "weight_matrix", "weights_heatmap", "coupling", "coupling_heatmap", "proposal_log_density",
           "particle_density", "particles_figure", "global_log_weights", "ess_of_log_weights", "pareto_khat",
           "ess_vs_K", "ess_vs_latents", "ess_k_figure", "ess_latents_figure", "KHAT_THRESHOLD"]
