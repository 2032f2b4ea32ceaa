"""The view tabs beside the canvas: Plate diagram, Einsum path, ESS, ELBO, Posterior,
Degeneracy (and any tab mounted later, such as Compare). Each pane is drawn by the pure
functions of workbench.views and workbench.degeneracy from what the app hands over (the
model on screen, a run); every text goes through views.safe_html; every figure saves
itself as PNG or SVG."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, Plot

from engine import DISTRIBUTIONS, ModelError

from . import degeneracy as DG
from . import views as V
from .compat import W
from .forms import HINT, Text, html_table
from .views import safe_html

TABS = ("Plate diagram", "Einsum path", "ESS", "ELBO", "Posterior", "Degeneracy")


def wrap(*objs, **kw):
    """A row that wraps when narrow (a pn.Row's minimum width is the sum of its children's,
    wider than a notebook's output area)."""
    return pn.FlexBox(*objs, flex_wrap="wrap", align_items="flex-end", sizing_mode="stretch_width", **kw)


def _figure(obj) -> bool:
    return obj is not None and hasattr(obj, "select")


class ViewTabs:
    """guard(fn) wraps widget callbacks (the app's: errors become messages); alert(text,
    kind) shows a message; push(pane) sends a streamed change to a notebook."""

    def __init__(self, guard, alert, push):
        self.alert, self.push = alert, push
        self.shown = None            # the run whose results the tabs show
        self.exact: dict = {}        # the exact posterior of the model on screen, where known
        self._model = None           # what the diagram downloads draw: (model, ess, K)
        self._svg: tuple = (None, None)   # the plate diagram's DOT and SVG last drawn
        self._held = False           # see held
        g = guard
        self.diagram = pn.pane.HTML("", sizing_mode="stretch_width", min_height=200, styles={"overflow": "auto"})
        self.diagram_svg = W(pn.widgets.FileDownload, callback=lambda: self._diagram_file("svg"),
                             filename="plate_diagram.svg", label="SVG", button_type="light", width=70)
        self.diagram_png = W(pn.widgets.FileDownload, callback=lambda: self._diagram_file("png"),
                             filename="plate_diagram.png", label="PNG", button_type="light", width=70)
        self.einsum_head = Text("")
        self.einsum_summary = pn.pane.DataFrame(None, sizing_mode="stretch_width", index=False)
        self.einsum_steps = pn.pane.DataFrame(None, sizing_mode="stretch_width", index=False)
        self.einsum_csv = W(pn.widgets.FileDownload, callback=self._einsum_csv, filename="einsum_steps.csv",
                            label="Steps as CSV", button_type="light", width=120)
        self.ess_pane = pn.pane.Bokeh(None, sizing_mode="stretch_width")
        self.ess_note = Text("")
        self.ess_table = Text("", css_classes=["ess-table"])
        self.elbo_pane = pn.pane.Bokeh(None, sizing_mode="stretch_width")
        self.elbo_note = Text("", css_classes=["elbo-note"])
        self.elbo_others = pn.Column(sizing_mode="stretch_width")
        self.post_note = Text("", css_classes=["post-note"])
        self.post_warnings = Text("", css_classes=["post-warnings"])
        self.post_table = pn.pane.DataFrame(None, sizing_mode="stretch_width", max_height=300,
                                            styles={"overflow": "auto"})
        self.post_names = W(pn.widgets.MultiChoice, label="Latents to plot", options=[], sizing_mode="stretch_width")
        self.post_names.param.watch(g(lambda e: self._held or self.draw_posterior_plots()), "value")
        self.post_plots = pn.pane.Bokeh(None, sizing_mode="stretch_width")
        self.deg_note = Text("")
        self.deg_latent = W(pn.widgets.Select, label="Latent", options=[], width=200)
        self.deg_parent = W(pn.widgets.Select, label="Parent (coupling view)", options=[], width=200)
        self.deg_latent.param.watch(g(lambda e: self._held or self.draw_degeneracy()), "value")
        self.deg_parent.param.watch(g(lambda e: self._held or self.draw_degeneracy()), "value")
        self.deg_heat, self.deg_particles, self.deg_coupling = (pn.pane.Bokeh(None) for _ in range(3))
        self.export = W(pn.widgets.RadioButtonGroup, options=["PNG", "SVG"], value="PNG", width=110,
                        margin=(4, 10), button_type="light")
        self.export.param.watch(g(lambda e: self._set_backend()), "value")
        col = dict(sizing_mode="stretch_width", styles={"overflow": "auto"}, max_height=640)
        self.tabs = pn.Tabs(
            (TABS[0], pn.Column(pn.Row(Text("Download:", styles=HINT, margin=(10, 4, 0, 4)), self.diagram_svg,
                                       self.diagram_png), self.diagram, **col)),
            (TABS[1], pn.Column(self.einsum_head, self.einsum_summary, Text("**Contraction steps, in order** (plate "
                                "levels innermost first)"), self.einsum_steps, self.einsum_csv, **col)),
            (TABS[2], pn.Column(self.ess_note, self.ess_pane, self.ess_table, **col)),
            (TABS[3], pn.Column(self.elbo_note, self.elbo_pane, self.elbo_others, **col)),
            (TABS[4], pn.Column(self.post_note, self.post_warnings, self.post_table, self.post_names,
                                self.post_plots, **col)),
            (TABS[5], pn.Column(pn.Row(self.deg_latent, self.deg_parent), self.deg_note,
                                wrap(self.deg_heat, self.deg_particles), self.deg_coupling, **col)),
            dynamic=False, sizing_mode="stretch_width", min_height=420)
        self.export_row = pn.Row(Text("Figures: the ⤓ on each plot saves it as", styles=HINT, margin=(10, 4, 0, 10)),
                                 self.export, sizing_mode="stretch_width")
        self.view = pn.Column(self.tabs, self.export_row, sizing_mode="stretch_width", margin=0)

    def add(self, title: str, view) -> None:
        self.tabs.append((title, view))

    @contextlib.contextmanager
    def held(self):
        """Selector changes inside do not redraw the posterior and degeneracy views (the
        caller draws them once after)."""
        self._held = True
        try:
            yield
        finally:
            self._held = False

    # ---- the model: plate diagram and einsum path ---------------------------------------------
    def draw_diagram(self, model, ess=None, K=None, svg: tuple | None = None):
        """The plate diagram, latents coloured by `ess` at K where a run gave them. svg: (DOT,
        SVG) drawn already (off the event loop) for this model."""
        self._model = (model, ess, K)
        if svg is not None:
            self._svg = svg
        if not len(model.graph):
            self.diagram.object = "<p>The model is empty: add a latent node (+ Latent).</p>"
            return
        dot = V.plate_diagram_dot(model, ess, K)
        if self._svg[0] != dot:
            self._svg = (dot, V.render_svg(dot))
        self.diagram.object = self._svg[1]

    def draw_einsum(self, model, K: int, method: str):
        """The contraction planned at the run controls' K and method."""
        if not len(model.graph):
            self.einsum_head.object = "The model is empty."
            self.einsum_summary.object = self.einsum_steps.object = None
            return
        mode = "global" if method == "global" else "mp"
        try:
            prog = model.compile(K, mode=mode, device="cpu")
        except ModelError as e:
            self.einsum_head.object = safe_html(f"Cannot plan the contraction: {e}")
            self.einsum_summary.object = self.einsum_steps.object = None
            return
        summ = V.einsum_summary(prog)
        mem = prog.memory_estimate()
        largest = int(summ["largest intermediate bytes"].max()) if len(summ) else 0
        self.einsum_head.object = safe_html(
            f"**{'Global' if mode == 'global' else 'Massively parallel'} contraction at K = {K}** · naive "
            f"{int(summ['naive flops'].sum()):,} FLOPs vs optimised {int(summ['optimized flops'].sum()):,} · "
            f"largest intermediate {V.human_bytes(largest)} · memory for one sample and its backward pass "
            f"about {V.human_bytes(mem)} (budget {V.human_bytes(prog.memory_budget)}"
            + (f"; runs plate {prog.split[0]} in chunks of {prog.split[1]})" if prog.split else ")"))
        self.einsum_summary.object = summ
        self.einsum_steps.object = V.einsum_table(prog)

    def _diagram_file(self, fmt: str):
        model, ess, K = self._model
        dot = V.plate_diagram_dot(model, ess, K)
        if fmt == "png":
            png = V.render_png(dot)
            if png is None:
                self.alert("No Graphviz renderer for PNG here; download the SVG.", "warning")
                return io.BytesIO(b"")
            return io.BytesIO(png)
        return io.StringIO(V.render_svg(dot))

    def _einsum_csv(self):
        df = self.einsum_steps.object
        return io.StringIO(df.to_csv(index=False) if df is not None else "")

    # ---- runs --------------------------------------------------------------------------------
    def clear(self):
        """The run views with nothing in them: the model on screen has no finished run."""
        self.shown = None
        self.ess_note.object = safe_html("Run a method to see the ESS of every latent, updated each iteration.")
        self.ess_pane.object = None
        self.ess_table.object = ""
        self.post_note.object = safe_html("Run a method to see posterior summaries.")
        self.post_warnings.object = ""
        self.post_table.object = None
        with self.held():
            self.post_names.param.update(options=[], value=[])
            self.deg_latent.options = []
            self.deg_parent.options = []
        self.post_plots.object = None
        self.deg_note.object = safe_html("Run a method to see how the particles' weight is spread.")
        self.deg_heat.object = self.deg_particles.object = self.deg_coupling.object = None

    def draw_elbo(self, mine, others: list[list], reference, name: str):
        """`mine`: the runs of the model on screen, in one figure (live); `others`: the runs
        of each earlier model, a figure each, so that no model's scale flattens another's."""
        self.elbo_pane.object = self._backend(V.elbo_figure(mine, reference, title=f"ELBO per iteration: {name}")) \
            if mine else None
        self.elbo_others.objects = [pn.pane.Bokeh(self._backend(V.elbo_figure(
            rs, title=f"Earlier model: {rs[0].model_name}")), sizing_mode="stretch_width") for rs in others]
        self._elbo_note(mine)

    def _elbo_note(self, mine):
        if not mine:
            self.elbo_note.object = safe_html("No runs of this model yet: each run's ELBO streams here, runs "
                                              "overlaid (click a legend entry to hide a run).")
            return
        self.elbo_note.object = safe_html(" · ".join(
            f"**{r.label}**: {len(r.elbo)} points" + (f", last ELBO {r.elbo[-1]:.4g}" if r.elbo else "")
            for r in mine[-4:]))

    def stream_elbo(self, run, mine, reference) -> bool:
        """A run's new iterations onto its curve; False if the figure has no curve for it
        (then draw_elbo)."""
        fig = self.elbo_pane.object
        src = fig.select_one({"name": run.label, "type": ColumnDataSource}) if fig is not None else None
        if src is None:
            return False
        n = len(src.data["elbo"])
        src.stream({"iteration": run.iteration[n:], "elbo": run.elbo[n:]})
        V.set_elbo_range(fig, mine, reference)
        self.push(self.elbo_pane)
        self._elbo_note(mine)
        return True

    def draw_ess(self, run):
        ess, K = run.last_ess, run.K
        it = run.iteration[-1] if run.iteration else "-"
        self.ess_note.object = safe_html(
            f"ESS after iteration {it} of {run.label}: bars are the median over plate elements, dots the minimum; "
            f"red latents are degenerate (min ESS below the dashed threshold).")
        d = V.ess_data(ess, K)
        self.ess_table.object = html_table(
            ["latent", "min ESS", "median ESS", ""],
            [[n, f"{a:.3g}", f"{b:.3g}", "degenerate" if g else "ok"]
             for n, a, b, g in zip(d["latent"], d["min"], d["median"], d["degenerate"])])
        fig = self.ess_pane.object
        src = fig.select_one({"name": "ess", "type": ColumnDataSource}) if fig is not None else None
        if src is not None and list(src.data["latent"]) == list(ess) and getattr(fig, "_wb_K", None) == K:
            src.data = d
            self.push(self.ess_pane)
        else:
            fig = self._backend(V.ess_figure(ess, K))
            fig._wb_K = K
            self.ess_pane.object = fig

    def show_result(self, run, model, exact: dict, edited: bool):
        """A finished run of the model on screen: the pooled estimates, warnings, draws and
        the degeneracy of its first sample. `edited`: the model changed since it started."""
        r = run.result
        self.shown, self.exact = run, exact
        since = " (the model was edited since this run started)" if edited else ""
        self.post_note.object = safe_html(
            f"**{run.label}** on {run.model_name}{since} · log P_MP {r.log_marginal:.4g} ± "
            f"{r.log_marginal_mcse:.2g} (± its Monte Carlo standard error) · estimates pooled over {r.n_samples} "
            f"independent MP samples of K={r.K}; each ± column is the Monte Carlo standard error of the column "
            f"before it")
        self.post_warnings.object = "".join(
            f'<div class="wb-alert wb-alert-warning">{safe_html(w.get("message", ""))}</div>' for w in r.warnings)
        self.post_table.object = run.table
        names = V.posterior_names(model if set(r.model.latents) == set(model.latents) else r.model)
        with self.held():   # drawn once, below
            self.post_names.options = names
            keep = [n for n in self.post_names.value if n in names]
            self.post_names.value = keep or names[:min(6, len(names))]
            self.deg_latent.options = list(r.sample.program.latents)
            if self.deg_latent.value not in self.deg_latent.options:
                self.deg_latent.value = self.deg_latent.options[0] if self.deg_latent.options else None
        self.draw_posterior_plots()
        self.draw_degeneracy()

    def draw_posterior_plots(self):
        if self.shown is None or not self.post_names.value:
            self.post_plots.object = None
            return
        try:
            self.post_plots.object = self._backend(V.posterior_view(self.shown.result, list(self.post_names.value),
                                                                    exact=self.exact, samples=self.shown.samples))
        except (ValueError, KeyError, IndexError) as e:
            self.alert(f"Cannot plot the posterior: {e}", "warning")

    def draw_degeneracy(self):
        """The first pooled sample's particle weights: heatmap, particles on the density, coupling."""
        if self.shown is None or not self.deg_latent.value:
            return
        s, name = self.shown.result.sample, self.deg_latent.value
        parents = [p for p in s.program.model.parents(name) if p in s.program.kdim]
        if list(self.deg_parent.options) != parents:
            with self.held():   # drawn below, once
                self.deg_parent.options = parents
                self.deg_parent.value = parents[0] if parents else None
        try:
            m = DG.weight_matrix(s, name)
            lines = [f"**{name}**: the heaviest of K={m['K']} particles holds {m['mean_top_share']:.0%} of the weight "
                     f"on average over plate elements (1/K = {1 / m['K']:.0%}; 100% is collapse); "
                     f"ESS min {m['ess'].min():.1f}, median {float(np.median(m['ess'])):.1f}."]
            if s.program.mode == "global":
                k = DG.pareto_khat(s)
                lines.append(f"Pareto k-hat of the global weights: {k:.2f} "
                             f"({'unreliable, above 0.7' if k > 0.7 else 'below the 0.7 threshold'}).")
            self.deg_note.object = safe_html(" ".join(lines))
            self.deg_heat.object = self._backend(DG.weights_heatmap(s, name))
            scalar = not s.values[name].event_shape and not DISTRIBUTIONS[s.program.model.node(name).dist].discrete
            element = tuple(0 for _ in s.program.chain[name])
            key = f"{name}[{', '.join(map(str, element))}]" if element else name
            exact = self.exact
            spec = exact.get(key, exact.get(key.replace(", ", ","))) if exact else None
            self.deg_particles.object = self._backend(DG.particles_figure(s, name, element, exact=spec)) \
                if scalar else None
            parent = self.deg_parent.value
            self.deg_coupling.object = self._backend(DG.coupling_heatmap(s, name, parent)) if parent else None
        except (ModelError, ValueError, KeyError, IndexError, RuntimeError) as e:
            self.alert(f"Cannot draw the degeneracy views: {e}", "warning")

    # ---- export -------------------------------------------------------------------------------
    def _set_backend(self):
        """PNG or SVG from the plots' save tools."""
        backend = "svg" if self.export.value == "SVG" else "canvas"
        for pane in (self.ess_pane, self.elbo_pane, self.post_plots, self.deg_heat, self.deg_particles,
                     self.deg_coupling, *self.elbo_others):
            obj = getattr(pane, "object", None)
            if _figure(obj):
                for p in obj.select({"type": Plot}):
                    p.output_backend = backend

    def _backend(self, fig):
        if _figure(fig) and self.export.value == "SVG":
            for p in fig.select({"type": Plot}):
                p.output_backend = "svg"
        return fig
