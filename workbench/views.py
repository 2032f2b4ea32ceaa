"""The workbench's views: plain functions of engine objects, testable without a browser.

plate_diagram_dot(model, ess, K) -> DOT text      render_svg(dot) -> SVG text (never blank)
einsum_table(sample | program | plan list) -> DataFrame of steps; einsum_summary(...) per component
ess_figure(ess, K) -> Bokeh figure                 elbo_figure(runs) -> Bokeh figure (readable range)
summary_table(result) -> DataFrame (MCSEs)     posterior_view(result, names, exact) -> Bokeh layout
safe_html(text) -> HTML with every character of text escaped (the only way text reaches a page)
"""
from __future__ import annotations

import html
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pandas as pd

from engine.program import human_bytes  # noqa: F401  (the views' byte counts, as the engine prints them)

OBSERVED_FILL = "#c8c8c8"
DEGENERATE = "#d62728"
HEALTHY = "#2ca02c"


# ---- text -------------------------------------------------------------------------------
def safe_html(text) -> str:
    """HTML of a message: every character escaped (model names, descriptions, file names
    and error messages come from users and model files), then `**bold**` and `code`
    spans and line breaks marked up. Nothing in `text` can make a tag."""
    out = html.escape(str(text), quote=True)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`([^`]+?)`", r"<code>\1</code>", out)
    return out.replace("\n", "<br>")


# ---- plate diagram ----------------------------------------------------------------------
def ess_colour(ratio: float) -> str:
    """Red (ESS/K near 0) through amber to green (ESS/K = 1)."""
    r = min(max(float(ratio), 0.0), 1.0)
    stops = [(0.0, (214, 39, 40)), (0.5, (255, 193, 7)), (1.0, (44, 160, 44))]
    for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
        if r <= x1:
            t = (r - x0) / (x1 - x0)
            rgb = [round(a + t * (b - a)) for a, b in zip(c0, c1)]
            return "#%02x%02x%02x" % tuple(rgb)
    return "#2ca02c"


def _min_ess(v) -> float:
    a = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float)
    return float(np.nanmin(a)) if a.size else float("nan")


def _q(s: str) -> str:
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _data_plate(model, name: str, users: list) -> str | None:
    """The innermost plate a covariate lives in: its declared plates, else the deepest
    plate chain of a user that its leading dims match."""
    if name in model.data_plates:
        plates = model.data_plates[name]
        return max(plates, key=lambda p: len(model.chain(p))) if plates else None
    shape = np.shape(model.data[name])
    best = None
    for u in users:
        chain = model.chain(model.node(u).plate)
        for j in range(len(chain), 0, -1):
            if shape[:j] == tuple(model.plates[p].size for p in chain[:j]):
                if best is None or j > len(model.chain(best)):
                    best = chain[j - 1]
                break
    return best


def plate_diagram_dot(model, ess: dict | None = None, K: int | None = None, show_data: bool = True) -> str:
    """Graphviz DOT of the model: plates as nested clusters labelled `name (size)`, observed
    nodes shaded, the distribution under each name, latents coloured by min ESS/K if given."""
    lines = ["digraph model {",
             '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, nodesep=0.3, ranksep=0.4, '
             'margin=0.1, bgcolor="transparent"];',
             '  node [fontname="Helvetica", fontsize=12, shape=ellipse, style=filled, fillcolor=white];',
             '  edge [color="#555555", arrowsize=0.7];']
    members: dict = {None: []}
    for p in model.plates:
        members[p] = []
    enumerated = enumerated_latents(model)
    for n in model.nodes:
        how = " · time series" if n.timeseries is not None else " · enumerated" if n.name in enumerated else ""
        label = f'<<b>{html.escape(n.name)}</b><br/><font point-size="9">{html.escape(n.dist + how)}</font>'
        attrs = {"tooltip": _q(f"{n.kind} {n.name} ~ {n.dist}{how}")}
        if n.kind == "observed":
            attrs["fillcolor"] = _q(OBSERVED_FILL)
        elif ess is not None and n.name in ess and K:
            m = _min_ess(ess[n.name])
            attrs["fillcolor"] = _q(ess_colour(m / K))
            label += f'<br/><font point-size="8">ESS {m:.3g}/{K}</font>'
        attrs["label"] = label + ">"
        members[n.plate].append(f"  {_q(n.name)} [{', '.join(f'{k}={v}' for k, v in attrs.items())}];")
    data_edges = []
    if show_data:
        users: dict = {}
        for n in model.nodes:
            for name in n.mentions():
                if name in model.data and name not in model.graph:
                    users.setdefault(name, []).append(n.name)
        for name, us in users.items():
            plate = _data_plate(model, name, us)
            members[plate].append(f"  {_q(name)} [shape=box, style=\"rounded,dashed\", fontsize=10, "
                                  f"color=\"#888888\", fontcolor=\"#555555\", label={_q(name)}];")
            data_edges += [f"  {_q(name)} -> {_q(u)} [style=dashed, color=\"#aaaaaa\"];" for u in us]

    def cluster(p, indent):
        pl = model.plates[p]
        pad = "  " * indent
        out = [f"{pad}subgraph {_q('cluster_' + p)} {{",
               f"{pad}  label={_q(f'{p} ({pl.size})')}; labeljust=r; labelloc=b; style=rounded; "
               f"color=\"#4a6fa5\"; fontcolor=\"#4a6fa5\";"]
        out += ["  " * indent + line for line in members[p]]
        for child in [q for q in model.plates.values() if q.parent == p]:
            out += cluster(child.name, indent + 1)
        out.append(f"{pad}}}")
        return out
    lines += members[None]
    for p in [q for q in model.plates.values() if q.parent is None]:
        lines += cluster(p.name, 1)
    lines += [f"  {_q(a)} -> {_q(b)};" for a, b in model.graph.edges]
    lines += [f"  {_q(n.name)} -> {_q(n.name)} [label=\"prev\", fontsize=9, fontcolor=\"#4a6fa5\", "
              f"color=\"#4a6fa5\"];" for n in model.nodes if n.timeseries is not None]   # its own previous element
    lines += data_edges
    lines.append("}")
    return "\n".join(lines)


def enumerated_latents(model) -> set[str]:
    """The latents the engine sums over their support, as far as the model alone says (a
    Categorical whose probabilities are computed is decided when the model is compiled)."""
    from engine.model import ENUMERABLE
    from engine.program import ENUMERATE_MAX, support_size
    out = set()
    for n in model.nodes:
        if n.kind == "latent" and n.dist in ENUMERABLE and n.shape in (None, ()) and n.group is None \
                and n.enumerate is not False:
            size = support_size(n, model)
            if n.enumerate or (size is not None and size <= ENUMERATE_MAX):
                out.add(n.name)
    return out


def _graphviz_pure() -> str | None:
    exe = shutil.which("graphviz-pure")
    if exe:
        return exe
    for d in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        p = Path(d) / "graphviz-pure"
        if p.exists():
            return str(p)
    return None


def _run(cmd, dot: str) -> str | None:
    try:
        out = subprocess.run(cmd, input=dot.encode(), capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or b"<svg" not in out.stdout:
        return None
    svg = out.stdout.decode("utf-8", "replace")
    return svg[svg.index("<svg"):]


def render_png(dot: str) -> bytes | None:
    """PNG of DOT from `dot` or `graphviz-pure`, None if neither runs."""
    for exe in (shutil.which("dot"), _graphviz_pure()):
        if exe:
            try:
                out = subprocess.run([exe, "-Tpng"], input=dot.encode(), capture_output=True, timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if out.returncode == 0 and out.stdout.startswith(b"\x89PNG"):
                return out.stdout
    return None


def render_svg(dot: str) -> str:
    """SVG of DOT: the real `dot` if on PATH, else the pure `graphviz-pure` binary, else a
    simple drawing by this module; never an empty picture."""
    exe = shutil.which("dot")
    if exe:
        svg = _run([exe, "-Tsvg"], dot)
        if svg:
            return svg
    exe = _graphviz_pure()
    if exe:
        svg = _run([exe, "-Tsvg"], dot)
        if svg:
            return svg
    return fallback_svg(dot)


def _parse_dot(dot: str):
    """Nodes, edges and clusters of the DOT subset plate_diagram_dot writes."""
    nodes, edges, clusters, stack = {}, [], {}, []
    for raw in dot.splitlines():
        line = raw.strip()
        m = re.match(r'subgraph "cluster_(\w+)"', line)
        if m:
            stack.append(m.group(1))
            clusters[m.group(1)] = {"label": m.group(1), "parent": stack[-2] if len(stack) > 1 else None,
                                    "members": []}
            continue
        if line.startswith("label=") and stack:
            lm = re.match(r'label="([^"]*)"', line)
            if lm:
                clusters[stack[-1]]["label"] = lm.group(1)
            continue
        if line == "}" and stack:
            stack.pop()
            continue
        m = re.match(r'"([^"]+)"\s*->\s*"([^"]+)"', line)
        if m:
            edges.append((m.group(1), m.group(2), "dashed" in line))
            continue
        m = re.match(r'"([^"]+)"\s*\[(.*)\];', line)
        if m:
            name, attrs = m.groups()
            fill = re.search(r'fillcolor="([^"]+)"', attrs)
            dist = re.search(r'point-size="9">([^<]*)<', attrs)
            nodes[name] = {"fill": fill.group(1) if fill else "white", "box": "shape=box" in attrs,
                           "dist": dist.group(1) if dist else "", "cluster": stack[-1] if stack else None}
            if stack:
                clusters[stack[-1]]["members"].append(name)
    return nodes, edges, clusters


def fallback_svg(dot: str) -> str:
    """A plain layered drawing of a plate diagram, for when no Graphviz renderer runs."""
    import networkx as nx
    nodes, edges, clusters = _parse_dot(dot)
    if not nodes:
        return ('<svg xmlns="http://www.w3.org/2000/svg" width="320" height="60"><text x="10" y="35" '
                'font-family="Helvetica" font-size="14">(empty model: add a node)</text></svg>')
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((a, b) for a, b, _ in edges if a in nodes and b in nodes and a != b)   # (a series' loop: its label says)
    row = {}
    for r, gen in enumerate(nx.topological_generations(g)):
        for n in gen:
            row[n] = r
    for n in nodes:                 # data boxes sit just above their first consumer
        if nodes[n]["box"] and list(g.successors(n)):
            row[n] = max(0, min(row[c] for c in g.successors(n)) - 1)
    order = []                      # clusters depth first, so each one's columns are contiguous

    def walk(c):
        order.append(c)
        for k, v in clusters.items():
            if v["parent"] == c:
                walk(k)
    walk(None)
    pos, W, H, col = {}, 150, 90, 0
    for c in order:
        members = [n for n in nodes if nodes[n]["cluster"] == c]
        by_row: dict = {}
        for n in sorted(members, key=lambda n: (nodes[n]["box"], n)):
            by_row.setdefault(row[n], []).append(n)
        for r, ns in by_row.items():
            for i, n in enumerate(ns):
                pos[n] = (100 + (col + i) * W, 80 + r * H)
        col += max((len(ns) for ns in by_row.values()), default=0)
    width = max(x for x, _ in pos.values()) + 140
    height = max(y for _, y in pos.values()) + 110
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="Helvetica" font-size="12">',
           '<defs><marker id="arr" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
           'orient="auto"><path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>']

    def inner(c):
        mem, below = list(clusters[c]["members"]), 0
        for k, v in clusters.items():
            if v["parent"] == c:
                m, b = inner(k)
                mem, below = mem + m, max(below, b + 1)
        return mem, below
    for c, info in sorted(clusters.items(), key=lambda kv: -inner(kv[0])[1]):
        mem, below = inner(c)
        if not mem:
            continue
        pad = 18 * below
        xs = [pos[m][0] for m in mem]
        ys = [pos[m][1] for m in mem]
        x0, y0, x1, y1 = min(xs) - 55 - pad, min(ys) - 30 - pad, max(xs) + 55 + pad, max(ys) + 42 + pad
        out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{y1 - y0}" rx="8" fill="none" '
                   f'stroke="#4a6fa5"/><text x="{x1 - 6}" y="{y1 - 6}" text-anchor="end" fill="#4a6fa5" '
                   f'font-size="11">{html.escape(info["label"])}</text>')
    for a, b, dashed in edges:
        if a in pos and b in pos:
            (x0, y0), (x1, y1) = pos[a], pos[b]
            d = math.hypot(x1 - x0, y1 - y0) or 1
            sx, sy = x0 + (x1 - x0) * 22 / d, y0 + (y1 - y0) * 22 / d
            ex, ey = x1 - (x1 - x0) * 24 / d, y1 - (y1 - y0) * 24 / d
            dash = 'stroke-dasharray="4 3" ' if dashed else ""
            out.append(f'<line x1="{sx:.1f}" y1="{sy:.1f}" x2="{ex:.1f}" y2="{ey:.1f}" stroke="#555" '
                       f'{dash}marker-end="url(#arr)"/>')
    for n, (x, y) in pos.items():
        info = nodes[n]
        if info["box"]:
            out.append(f'<rect x="{x - 40}" y="{y - 14}" width="80" height="28" rx="6" fill="white" '
                       f'stroke="#888" stroke-dasharray="4 3"/>')
        else:
            out.append(f'<ellipse cx="{x}" cy="{y}" rx="48" ry="24" fill="{info["fill"]}" stroke="black"/>')
        out.append(f'<text x="{x}" y="{y + (0 if info["dist"] else 4)}" text-anchor="middle" '
                   f'font-weight="bold">{html.escape(n)}</text>')
        if info["dist"]:
            out.append(f'<text x="{x}" y="{y + 14}" text-anchor="middle" font-size="9">'
                       f'{html.escape(info["dist"])}</text>')
    out.append("</svg>")
    return "\n".join(out)


# ---- einsum path --------------------------------------------------------------------------
def _plan_parts(obj):
    """(describe() list, Program or None) from a Sample, a Program or a describe() list."""
    prog = getattr(obj, "program", None)
    if prog is None and hasattr(obj, "plan") and hasattr(obj, "sizes"):
        prog = obj
    if prog is not None:
        return prog.plan.describe(), prog
    if isinstance(obj, list):
        return obj, None
    raise TypeError(f"einsum views take a Sample, a Program or a plan description, got {type(obj).__name__}")


def _pretty(name: str) -> str:
    m = re.fullmatch(r"<(.+):(\d+)>", name)
    return f"Σ{m.group(1)}" + (f"#{int(m.group(2)) + 1}" if m.group(2) != "0" else "") if m else name


def einsum_table(obj, bytes_per_element: int | None = None) -> pd.DataFrame:
    """One row per contraction step, plate levels innermost first, in execution order:
    operands (factor names, `Σplate` for an inner plate's result, `tN` for an earlier
    step's result), index string, FLOPs of the step, the plate it is summed over as it
    goes (its result then never held whole), and the size of what it holds."""
    desc, prog = _plan_parts(obj)
    if bytes_per_element is None:
        bytes_per_element = (prog.dtype.itemsize if prog is not None else 4)
    comps = [c for lvl in prog.plan.levels for c in lvl.components] if prog is not None else [None] * len(desc)
    rows, t = [], 0
    for d, comp in zip(desc, comps):
        work = [_pretty(f) for f in d["factors"]]
        if not d["steps"]:
            rows.append({"plate": d["plate"], "step": "-", "operands": " , ".join(work), "equation": d["equation"],
                         "indices": "", "sums out": "", "flops": d["optimized_flops"], "summed as it goes": "",
                         "result elements": d["largest_intermediate"],
                         "result bytes": d["largest_intermediate"] * bytes_per_element})
            continue
        for i, st in enumerate(d["steps"]):
            ins = [work[j] for j in st["operands"]]
            work = [w for j, w in enumerate(work) if j not in st["operands"]]
            t += 1
            work.append(f"t{t}")
            flops, indices = None, ""
            if comp is not None:
                from opt_einsum.helpers import flop_count
                s = comp.steps[i]
                idx = set().union(*map(set, s.in_dims))
                flops = flop_count(idx, bool(s.removed), len(s.in_dims), prog.sizes)
                letters = {}
                for term, dims in zip(st["equation"].split("->")[0].split(","), s.in_dims):
                    letters.update(zip(term, dims))
                indices = " ".join(f"{k}={v}({prog.sizes[v]})" for k, v in sorted(letters.items()))
            rows.append({"plate": d["plate"], "step": f"t{t}", "operands": " , ".join(ins),
                         "equation": st["equation"], "indices": indices, "sums out": ", ".join(st["sums_out"]),
                         "flops": flops, "summed as it goes": st.get("summed_over") or "",
                         "result elements": st["output_elements"],
                         "result bytes": st["output_elements"] * bytes_per_element})
    return pd.DataFrame(rows, columns=["plate", "step", "operands", "equation", "indices", "sums out", "flops",
                                       "summed as it goes", "result elements", "result bytes"])


def einsum_summary(obj, bytes_per_element: int | None = None) -> pd.DataFrame:
    """One row per plate level and component: naive vs optimised FLOPs, largest intermediate."""
    desc, prog = _plan_parts(obj)
    if bytes_per_element is None:
        bytes_per_element = (prog.dtype.itemsize if prog is not None else 4)
    rows = []
    for d in desc:
        rows.append({"plate": d["plate"], "factors": ", ".join(_pretty(f) for f in d["factors"]),
                     "sums out": ", ".join(d["sums_out"]), "equation": d["equation"],
                     "naive flops": d["naive_flops"], "optimized flops": d["optimized_flops"],
                     "speed-up": round(d["naive_flops"] / max(d["optimized_flops"], 1), 2),
                     "largest intermediate": d["largest_intermediate"],
                     "largest intermediate bytes": d["largest_intermediate"] * bytes_per_element})
    return pd.DataFrame(rows)


# ---- ESS ------------------------------------------------------------------------------------
def default_threshold(K: int) -> float:
    """ESS below this (per plate element, at worst) marks a latent as degenerate."""
    return max(1.5, 0.1 * K)


def ess_data(ess: dict, K: int, threshold: float | None = None) -> dict:
    """Columns for the ESS figure: min and median ESS over each latent's plate elements."""
    thr = default_threshold(K) if threshold is None else threshold
    names, mins, meds = [], [], []
    for name, v in ess.items():
        a = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float).ravel()
        names.append(name)
        mins.append(float(np.nanmin(a)) if a.size else float("nan"))
        meds.append(float(np.nanmedian(a)) if a.size else float("nan"))
    degenerate = [bool(m < thr) for m in mins]
    return {"latent": names, "min": mins, "median": meds, "degenerate": degenerate,
            "colour": [DEGENERATE if d else ess_colour(m / K) for d, m in zip(degenerate, mins)],
            "label": [f"{m:.3g}" + ("  degenerate" if d else "") for m, d in zip(mins, degenerate)]}


def ess_figure(ess: dict, K: int, threshold: float | None = None, title: str | None = None):
    """Bars of median ESS per latent (min over plate elements as a dot) on a 0..K axis,
    a dashed threshold line, degenerate latents in red and labelled."""
    from bokeh.models import ColumnDataSource, Label, Span
    from bokeh.plotting import figure
    thr = default_threshold(K) if threshold is None else threshold
    data = ess_data(ess, K, thr)
    src = ColumnDataSource(data, name="ess")
    names = list(reversed(data["latent"])) or ["(no latents)"]
    fig = figure(y_range=names, x_range=(0, K * 1.18), height=max(180, 34 * len(names) + 80),
                 sizing_mode="stretch_width", title=title or f"ESS per latent (K = {K})",
                 x_axis_label="effective sample size (bar: median over plate elements, dot: min)",
                 toolbar_location="above", tools="hover,save",
                 tooltips=[("latent", "@latent"), ("min ESS", "@min{0.00}"), ("median ESS", "@median{0.00}"),
                           ("degenerate", "@degenerate")])
    fig.hbar(y="latent", right="median", height=0.6, source=src, fill_color="colour", line_color="colour",
             fill_alpha=0.55, name="bars")
    fig.scatter(y="latent", x="min", size=9, source=src, color="colour", name="mins")
    fig.text(y="latent", x="min", text="label", source=src, x_offset=8, y_offset=6, text_font_size="9pt",
             text_color="colour", name="labels")
    fig.add_layout(Span(location=thr, dimension="height", line_dash="dashed", line_color=DEGENERATE,
                        line_width=1.5, name="threshold"))
    fig.add_layout(Span(location=K, dimension="height", line_color="#555555", line_width=1, name="K"))
    fig.add_layout(Label(x=thr, y=0, y_units="screen", text=f" threshold {thr:.3g}", text_font_size="8pt",
                         text_color=DEGENERATE))
    fig.add_layout(Label(x=K, y=0, y_units="screen", text=" K", text_font_size="8pt"))
    return fig


# ---- ELBO -----------------------------------------------------------------------------------
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]


def _runs(runs) -> list[dict]:
    if isinstance(runs, dict):
        return [{"label": k, "elbo": v} for k, v in runs.items()]
    return [r if isinstance(r, dict) else {"label": r.label, "elbo": r.elbo, "iteration": r.iteration} for r in runs]


def elbo_range(runs, reference: float | None = None) -> tuple[float, float] | None:
    """A y range that shows where the runs go: every run's points after its first tenth
    (the early iterations can sit orders of magnitude lower and flatten the rest), and
    the reference line. None if there is nothing to show."""
    vals = []
    for run in _runs(runs):
        y = [float(v) for v in run["elbo"] if math.isfinite(float(v))]
        vals += y[len(y) // 10:]
    if reference is not None and math.isfinite(reference):
        vals.append(float(reference))
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    pad = 0.08 * (hi - lo) if hi > lo else max(1.0, 0.01 * abs(hi))
    return lo - pad, hi + pad


def set_elbo_range(fig, runs, reference: float | None = None) -> None:
    r = elbo_range(runs, reference)
    if r is not None:
        fig.y_range.start, fig.y_range.end = r


def elbo_figure(runs, reference: float | None = None, title: str | None = None):
    """One ELBO curve per run, overlaid (runs of one model: see the app's grouping).
    `runs`: {label: [elbo, ...]}, a list of {"label", "elbo"[, "iteration"]} or of Runs.
    Each curve's renderer and source are named by its label. `reference`: the exact log
    evidence, drawn as a dashed line, where the model has one. The y range is
    elbo_range's; the legend sits beside the plot, never on the curves."""
    from bokeh.models import ColumnDataSource, Label, Legend, Range1d, Span
    from bokeh.plotting import figure
    runs = _runs(runs)
    r = elbo_range(runs, reference) or (0.0, 1.0)
    fig = figure(height=300, sizing_mode="stretch_width", title=title or "ELBO (log P_MP) per iteration",
                 x_axis_label="iteration", y_axis_label="ELBO", toolbar_location="above",
                 tools="pan,wheel_zoom,box_zoom,reset,save,hover", y_range=Range1d(*r),
                 tooltips=[("run", "$name"), ("iteration", "@iteration"), ("ELBO", "@elbo{0.000}")])
    items = []
    for i, run in enumerate(runs):
        y = [float(v) for v in run["elbo"]]
        x = list(run.get("iteration") or range(1, len(y) + 1))
        src = ColumnDataSource({"iteration": x, "elbo": y}, name=run["label"])
        colour = PALETTE[i % len(PALETTE)]
        line = fig.line("iteration", "elbo", source=src, color=colour, line_width=2, name=run["label"])
        dots = fig.scatter("iteration", "elbo", source=src, color=colour, size=3)
        items.append((run["label"], [line, dots]))
    if reference is not None and np.isfinite(reference):
        fig.add_layout(Span(location=float(reference), dimension="width", line_dash="dashed", line_color="black",
                            line_width=1.5, name="exact"))
        fig.add_layout(Label(x=0, x_units="screen", y=float(reference), text=f" exact log P(data) = {reference:.4g}",
                             text_font_size="9pt", y_offset=3))
    if items:
        fig.add_layout(Legend(items=items, click_policy="hide", label_text_font_size="8pt"), "right")
    return fig


# ---- posterior ------------------------------------------------------------------------------
def summary_table(result) -> pd.DataFrame:
    """The run's pooled estimates, one row per latent element (Result.summary()): mean and
    sd each with its Monte Carlo standard error, the 94% HDI (empty where too few effective
    particles stand behind it) and the pooled ESS. Each estimate is rounded to the digits its MCSE supports (two significant digits of the
    MCSE: the first one that is uncertain shown, no more)."""
    rows = []
    for r in result.summary():
        dm, ds = _decimals(r["mcse_mean"]), _decimals(r["mcse_sd"])
        rows.append({"name": r["name"], "mean": round(r["mean"], dm), "mcse_mean": _sig2(r["mcse_mean"]),
                     "sd": round(r["sd"], ds), "mcse_sd": _sig2(r["mcse_sd"]),
                     "hdi_3%": None if r["hdi_3%"] is None else round(r["hdi_3%"], dm),
                     "hdi_97%": None if r["hdi_97%"] is None else round(r["hdi_97%"], dm),
                     "ess": round(r["ess"], 1)})
    return pd.DataFrame(rows).set_index("name")


def _decimals(err: float) -> int:
    """Decimals that show an estimate to the second significant digit of its error."""
    if not (err > 0 and math.isfinite(err)):
        return 6
    return max(0, 1 - math.floor(math.log10(err)))


def _sig2(x: float) -> float:
    return float(f"{x:.2g}") if math.isfinite(x) else x


def posterior_names(model_or_result, limit: int = 200) -> list[str]:
    """`name` for scalar latents, `name[i]`/`name[i,j]` for elements of plated ones."""
    model = getattr(model_or_result, "model", model_or_result)
    out = []
    for n in model.latents:
        node = model.node(n)
        sizes = [model.plates[p].size for p in model.chain(node.plate)] + list(node.shape or ())
        if not sizes:
            out.append(n)
            continue
        for idx in np.ndindex(*sizes):
            out.append(f"{n}[{','.join(map(str, idx))}]")
            if len(out) >= limit:
                return out
    return out


def _split(name: str):
    m = re.fullmatch(r"(\w+)(?:\[([\d,\s]+)\])?", name.strip())
    if not m:
        raise ValueError(f"{name!r}: write a latent as name or name[i] or name[i,j]")
    idx = tuple(int(i) for i in m.group(2).split(",")) if m.group(2) else ()
    return m.group(1), idx


def exact_pdf(spec, x: np.ndarray) -> np.ndarray | None:
    """Density on x of an exact posterior given as a callable, {"dist", "args"} (any engine
    distribution with numeric arguments), or {"x": [...], "pdf": [...]}."""
    import torch
    if spec is None:
        return None
    if callable(spec):
        return np.asarray(spec(x), dtype=float)
    if isinstance(spec, dict) and "pdf" in spec:
        return np.interp(x, np.asarray(spec["x"], float), np.asarray(spec["pdf"], float), left=0, right=0)
    if isinstance(spec, dict) and "dist" in spec:
        from engine import DISTRIBUTIONS
        ds = DISTRIBUTIONS[spec["dist"]]
        args = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in spec.get("args", {}).items()}
        d = ds.cls(**args, validate_args=False)
        xt = torch.as_tensor(x, dtype=torch.float64)
        with torch.no_grad():
            lp = d.log_prob(xt)
        return np.where(np.isfinite(lp.numpy()), np.exp(lp.numpy()), 0.0)
    raise ValueError(f"exact posterior {spec!r}: give a callable, {{'dist', 'args'}} or {{'x', 'pdf'}}")


def kde(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density of x on grid, Silverman's bandwidth."""
    x = np.asarray(x, float)
    sd = x.std()
    iqr = np.subtract(*np.percentile(x, [75, 25]))
    h = 0.9 * min(sd, iqr / 1.34 if iqr > 0 else sd) * len(x) ** -0.2 or 1e-3
    z = (grid[:, None] - x[None, :]) / h
    return np.exp(-0.5 * z * z).sum(1) / (len(x) * h * np.sqrt(2 * np.pi))


def posterior_draws(result, draws: int = 2000) -> dict:
    """{latent: (draws, *plates, *event) array}: the Result's joint draws pooled over its
    samples (computed once; the summary's HDIs come from the same draws)."""
    return result.draws(draws)


def _discrete(result, base: str) -> bool:
    from engine import DISTRIBUTIONS
    model = getattr(result, "model", None)
    try:
        return bool(DISTRIBUTIONS[model.node(base).dist].discrete)
    except (AttributeError, KeyError, ValueError):
        return False


def posterior_view(result, names: list[str], exact=None, draws: int = 2000, samples: dict | None = None):
    """Histograms of posterior draws of the chosen latents (name or name[i]); the exact
    posterior drawn over them where `exact` (dict name -> spec, or a callable taking the
    name and returning a spec or None) supplies one."""
    from bokeh.layouts import gridplot
    from bokeh.models import Div
    from bokeh.plotting import figure
    samples = samples if samples is not None else posterior_draws(result, draws)
    figs = []
    for i, name in enumerate(names):
        base, idx = _split(name)
        if base not in samples:
            raise ValueError(f"{name!r}: no latent {base!r} in this run (latents: {', '.join(samples)})")
        x = samples[base]
        x = x[(slice(None), *idx)] if idx else x
        x = np.asarray(x, float).reshape(len(x), -1)[:, 0]
        x = x[np.isfinite(x)]
        discrete = _discrete(result, base)
        fig = figure(height=250, width=330, title=name, toolbar_location=None, tools="save",
                     x_axis_label=name, y_axis_label="probability" if discrete else "density")
        if x.size and discrete:          # a discrete latent: the probability of each value, as bars
            vals, counts = np.unique(x.astype(np.int64), return_counts=True)
            fig.vbar(x=vals, top=counts / counts.sum(), width=0.7, fill_color=PALETTE[0], fill_alpha=0.6,
                     line_color=PALETTE[0], legend_label="posterior draws", name="bars")
            fig.xaxis.ticker = [int(v) for v in vals] if len(vals) <= 12 else fig.xaxis.ticker
            fig.y_range.start = 0
        elif x.size:
            lo, hi = float(x.min()), float(x.max())
            if hi - lo < 1e-12:
                lo, hi = lo - 0.5, hi + 0.5
            bins = int(min(30, max(5, len(np.unique(x)))))
            hist, edges = np.histogram(x, bins=bins, range=(lo, hi), density=True)
            fig.quad(top=hist, bottom=0, left=edges[:-1], right=edges[1:], fill_color=PALETTE[0],
                     fill_alpha=0.35, line_color="white", legend_label="posterior draws", name="hist")
            if len(np.unique(x)) > 1:
                grid = np.linspace(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo), 200)
                fig.line(grid, kde(x, grid), color=PALETTE[0], line_width=2, legend_label="draws (KDE)",
                         name="kde")
            spec = exact(name) if callable(exact) and not isinstance(exact, dict) else \
                (exact or {}).get(name, (exact or {}).get(base) if not idx else None)
            if spec is not None:
                span = hi - lo
                grid = np.linspace(lo - 0.25 * span, hi + 0.25 * span, 300)
                pdf = exact_pdf(spec, grid)
                fig.line(grid, pdf, color="black", line_width=2, legend_label="exact", name="exact")
        if x.size:                       # the legend under the plot, off the data
            legend = fig.legend[0]
            fig.legend.label_text_font_size = "8pt"
            fig.legend.orientation = "horizontal"
            fig.legend.spacing = 4
            fig.center.remove(legend)
            fig.add_layout(legend, "below")
        figs.append(fig)
    if not figs:
        return Div(text="Choose latents to plot.")
    return gridplot(figs, ncols=2, toolbar_location="above", merge_tools=True)
