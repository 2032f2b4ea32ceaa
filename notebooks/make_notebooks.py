"""Write the tutorial notebooks (run: python notebooks/make_notebooks.py).

The notebooks are generated from the cells below so that they stay reviewable as code and
are committed with outputs cleared. Each reads KN_SMALL=1 (set by tests/test_notebooks.py)
to run smaller sizes on CI.
"""
import hashlib
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''import os, sys, time, math
from pathlib import Path
ROOT = Path.cwd().resolve()
while not (ROOT / "engine").is_dir() and ROOT != ROOT.parent:   # run from anywhere in a checkout
    ROOT = ROOT.parent
sys.path.insert(0, str(ROOT))
SMALL = os.environ.get("KN_SMALL") == "1"      # smaller sizes for continuous integration

import numpy as np
import torch
from bokeh.io import output_notebook, show
from bokeh.plotting import figure
from bokeh.resources import INLINE
from engine import Model, datasets
from engine.fit import Fitter
from workbench import degeneracy as dg
output_notebook(INLINE, hide_banner=True)      # BokehJS in the notebook itself: renders offline
torch.set_num_threads(2)'''


class M(str):
    """A markdown cell (plain strings are code cells)."""


def nb(cells):
    out = [new_markdown_cell(c.strip()) if isinstance(c, M) else new_code_cell(c.strip()) for c in cells]
    for i, cell in enumerate(out):   # ids from position and text: regenerating changes only what changed
        cell.id = f"c{i:02d}-" + hashlib.sha1(cell.source.encode()).hexdigest()[:8]
    book = new_notebook(cells=out)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    return book


# ---------------------------------------------------------------------------------------------
NB1 = [
    M("""# 1. Importance weighting: from one latent to many

Importance weighting estimates posterior expectations with samples from a proposal Q:
draw z^1..z^K ~ Q, weight each by w_k ∝ P(z^k, x) / Q(z^k), normalise. The effective
sample size ESS = 1 / Σ_k w_k² says how many of the K samples are doing the work.
This notebook shows it working for one latent, failing for many (the global collapse
that Chatterjee and Diaconis predict), and the first massively parallel (MP) estimate
that avoids it."""),
    SETUP,
    M("""## One latent

μ ~ N(0, 1), five observations x_n ~ N(μ, 1). The posterior is N(Σx / 6, 1/√6)."""),
    '''one = Model("one_latent")
one.add_plate("obs", 5)
one.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
one.add_node("x", "observed", "Normal", {"loc": "mu", "scale": 1}, plate="obs")
one.set_data("x", [1.2, 0.4, 1.9, 0.8, 1.1])
exact = {"dist": "Normal", "args": {"loc": sum([1.2, 0.4, 1.9, 0.8, 1.1]) / 6, "scale": 1 / math.sqrt(6)}}

s = one.sample_global(K=200, seed=0)          # K draws from the prior, one weight each
w = s.marginal_weights("mu").numpy()
print(f"ESS {1 / (w ** 2).sum():.1f} of K = 200")
print(f"weighted mean {float(s.mean('mu')):.3f}, exact {exact['args']['loc']:.3f}")
show(dg.particles_figure(s, "mu", exact=exact))''',
    M("""Each red marker is a particle drawn from the prior (blue); its area is its weight. The
particles that land where the posterior (dashed) has mass carry the estimate.

## Many latents: global importance sampling collapses

Now a hierarchy with G groups: μ ~ N(0, 1), z_g ~ N(μ, 1), five x_gn ~ N(z_g, 1) per
group, so G + 1 latents. Global importance sampling draws K joint samples of all of them.
Chatterjee and Diaconis (2018): it needs about exp(KL(posterior ‖ proposal)) samples, and
the KL grows in proportion to the number of latents. The closed form gives the KL exactly."""),
    '''groups = (1, 2, 5, 10, 20) if SMALL else (1, 2, 5, 10, 20, 50, 100, 200)
K = 100 if SMALL else 300
sweep = dg.ess_vs_latents(groups=groups, K=K, seeds=range(2 if SMALL else 3))
for G, n, ge, me, kl, kh in zip(sweep["groups"], sweep["n_latents"], sweep["global_ess"], sweep["mp_ess"],
                                sweep["kl"], sweep["khat"]):
    print(f"{n:4d} latents  KL {kl:7.1f}  global ESS {ge:7.1f}   MP ESS of z {me:7.1f}   k-hat {kh:5.2f}")
show(dg.ess_latents_figure(sweep))''',
    M("""Global ESS falls to 1 once exp(KL) passes K: one sample takes all the weight and the
estimate is that sample. The Pareto k-hat of the weights (PSIS, Vehtari et al.) crosses
0.7 at the same point: past it, the weights have too heavy a tail to trust. The MP line
stays flat: it is the subject of the next section.

## A first massively parallel estimate

MP importance sampling draws K particles for *every* latent and weighs all K^(G+1)
combinations, by a tensor contraction that uses the model's conditional independencies.
On a model where global IS has collapsed:"""),
    '''G = 20 if SMALL else 100
m = datasets.hierarchical_gaussian(groups=G, per_group=5, seed=0)
ex = datasets.exact_posterior(m)
K = 30
mp, gl = m.sample(K=K, seed=0), m.sample_global(K=K, seed=0)
for name, smp in (("MP", mp), ("global", gl)):
    err = np.abs(smp.mean("z").numpy() - ex["latents"]["z"]["mean"]) / ex["latents"]["z"]["sd"]
    print(f"{name:6s}  log P(x) estimate {smp.log_marginal():9.2f} (exact {ex['log_evidence']:.2f})   "
          f"ESS of z: mean {smp.ess('z').mean():5.1f}   error of E[z_g] in posterior sds: mean {err.mean():.2f}")''',
    '''show(dg.weights_heatmap(mp, "z", max_rows=30))''',
    M("""Each row is one group's z: its K particles' marginal weights, heaviest first. Several
particles share the weight in every row; with global IS every row would be a single
yellow cell. Next: how the contraction works (notebook 2)."""),
]

# ---------------------------------------------------------------------------------------------
NB2 = [
    M("""# 2. Massively parallel importance weighting

K particles for each of n latents make K^n combinations. The MP estimate of the evidence
averages the importance weight of every combination,

  P_MP = K^(-n) Σ_{k_1..k_n} Π_i f_i(k_i, k_pa(i)),

and that sum factorises along the graph, so it is a tensor contraction: an einsum.
Everything else (marginal weights, joint marginals, posterior samples) is a gradient of
log P_MP."""),
    SETUP,
    M("""## K^n combinations by brute force, and by contraction

A tiny hierarchy (μ, z_1, z_2) with K = 3: 27 combinations we can list."""),
    '''import itertools
m = datasets.hierarchical_gaussian(groups=2, per_group=3, seed=0)
K = 3
s = m.sample(K=K, seed=3)
f = {n: v.t.detach().double() for n, v in s.factors.items()}
print({n: v.dims for n, v in s.factors.items()})
fx = f["x"].sum(-1)                     # log P(x_g | z_g) summed over the observations
logw = [float(f["mu"][km] + sum(f["z"][km, kz[g], g] + fx[kz[g], g] for g in range(2)))
        for km, *kz in itertools.product(range(K), repeat=3)]
brute = float(torch.logsumexp(torch.tensor(logw), 0)) - 3 * math.log(K)
print(f"{len(logw)} combinations: log P_MP by brute force {brute:.6f}, by contraction {s.log_marginal():.6f}")''',
    M("""## The einsum path

Plate by plate, innermost first, the engine sums out the K-dims of latents living in the
plate (in log space) and multiplies over the plate's elements; `opt_einsum` plans the
order within each level. The radon model (85 counties, 919 houses) at K = 10:"""),
    '''radon = datasets.load("radon")
prog = radon.compile(10, device="cpu")
for c in prog.plan.describe():
    print(f"[{c['plate']}] {c['equation']}\\n    sums out {c['sums_out'] or '-'}; FLOPs naive {c['naive_flops']:.3g}, "
          f"planned {c['optimized_flops']:.3g}; largest intermediate {c['largest_intermediate']:.3g} elements")
n = sum(math.prod(radon.plates[p].size for p in radon.chain(radon.node(l).plate)) for l in radon.latents)
print(f"n = {n} latent variables, so K^n = 10^{n} combinations; estimated peak memory {prog.memory_estimate() / 2**20:.0f} MiB")''',
    M("""## Weights are gradients: the source-term trick

Add a zero tensor J_i, shaped like latent i's particles, to its factor. Then
∂ log P_MP / ∂ J_i at zero is latent i's marginal weights: the posterior probability,
under the MP index distribution, that each particle is the one in use. The engine adds
these sources when it contracts; one backward pass gives every latent's weights. Here
by hand, and checked by a finite difference:"""),
    '''m = datasets.hierarchical_gaussian(groups=5, per_group=5, seed=0)
s = m.sample(K=10, seed=0)
(grad,) = torch.autograd.grad(s.log_p, s.sources["z"], retain_graph=True)
print("d log P_MP / d J_z, group 0:", grad[:, 0].numpy().round(3), " sums to", float(grad[:, 0].sum()))
# the engine renormalises them in float64 (a float32 gradient sums to 1 only to ~|log P_MP| 2^-24)
print("engine's marginal weights agree:", torch.allclose(grad.double(), s.marginal_weights("z"), atol=1e-5))

prog, eps, k = s.program, 1e-3, int(grad[:, 0].argmax())
f = s.factors["z"]
bump = torch.zeros_like(f.t)
bump[(slice(None),) * f.dims.index("K:z") + (k,) + (slice(None),) * (len(f.dims) - f.dims.index("K:z") - 2) + (0,)] = eps
bumped = prog.plan.contract({**s.factors, "z": type(f)(f.t.detach() + bump, f.dims)}, prog.sizes)[0]
print(f"finite difference for particle {k} of z[0]: {(float(bumped.detach()) - s.log_marginal()) / eps:.3f} "
      f"vs gradient {float(grad[k, 0]):.3f}")''',
    M("""The same trick on the whole factor gives joint marginals: ∂ log P_MP / ∂ f_z is
P(k_z, k_μ) per group. Particles sorted by value: z's particles that fit a given μ particle
light up along a band."""),
    '''show(dg.coupling_heatmap(s, "z", "mu", element=0))
P = dg.coupling(s, "z", "mu", element=0)
print("margins: Σ_kz P =", np.allclose(P.sum(0), s.marginal_weights("mu").numpy(), atol=1e-5),
      " Σ_kμ P =", np.allclose(P.sum(1), s.marginal_weights("z")[:, 0].numpy(), atol=1e-5))''',
    M("""## Posterior samples

Normalising the joint marginals gives P(k_child | k_parent); the engine samples the
indices exactly, walking the contraction backwards, and returns the particles they pick."""),
    '''ex = datasets.exact_posterior(m)
s = m.sample(K=300, seed=1)
post = s.posterior_samples(2000, seed=0)
print("E[mu]: samples %.3f, weights %.3f, exact %.3f" % (post["mu"].mean(), s.mean("mu"), ex["latents"]["mu"]["mean"]))
print("sd[mu]: samples %.3f, exact %.3f" % (post["mu"].std(), ex["latents"]["mu"]["sd"]))
x = post["z"][:, 0].numpy()
hist, edges = np.histogram(x, bins=30, density=True)
fig = figure(title="z[0]: posterior samples and the exact posterior", height=260, width=500)
fig.quad(top=hist, bottom=0, left=edges[:-1], right=edges[1:], alpha=0.4)
grid = np.linspace(edges[0], edges[-1], 200)
mu0, sd0 = ex["latents"]["z"]["mean"][0], ex["latents"]["z"]["sd"][0]
fig.line(grid, np.exp(-0.5 * ((grid - mu0) / sd0) ** 2) / (sd0 * math.sqrt(2 * math.pi)), color="black", line_width=2)
show(fig)''',
]

# ---------------------------------------------------------------------------------------------
NB3 = [
    M("""# 3. Exploratory modelling: germinating seeds

Crowder's seeds data (the BUGS "Seeds" example): in each of 21 dishes, r of n seeds of
*Orobanche* germinated; the dishes differ in seed type (x1) and root extract (x2). The
counts vary between dishes more than a binomial allows, which a dish random effect can
absorb. We build the model, look at it in the workbench, fit it with QEM, read ArviZ
summaries against a NUTS reference, and compare variants on held-out seeds."""),
    SETUP,
    M("""## Build the model

logit p_i = X_i · α + b_i with rows X_i = (1, x1, x2, x1·x2), α ~ N(0, 2.5) (four
coefficients, proposed jointly by a full-covariance Normal), dish effects b_i ~ N(0, σ),
σ ~ HalfNormal(1), r_i ~ Binomial(n_i, p_i)."""),
    '''import pandas as pd
table = pd.read_csv(ROOT / "assets" / "data" / "seeds.csv")
X = np.stack([np.ones(len(table)), table.x1, table.x2, table.x1 * table.x2], 1)

def seeds_model(r, n, name="seeds"):
    m = Model(name)
    m.add_plate("dishes", len(r))
    m.add_node("alpha", "latent", "Normal", {"loc": 0, "scale": 2.5}, shape=[4])
    m.add_node("sigma", "latent", "HalfNormal", {"scale": 1})
    m.add_node("b", "latent", "Normal", {"loc": 0, "scale": "sigma"}, plate="dishes")
    m.add_node("r", "observed", "Binomial", {"total_count": "n", "logits": "X @ alpha + b"}, plate="dishes")
    m.set_data("r", np.asarray(r)).set_data("n", np.asarray(n)).set_data("X", X, plates=["dishes"])
    m.proposal["alpha"] = {"dist": "MultivariateNormal"}
    m.validate()
    return m

seeds = seeds_model(table.r.values, table.n.values)
print(seeds)
table''',
    M("""The embedded workbench shows the model as a plate diagram and canvas, with the einsum
path and live fitting views. Everything below calls the engine directly, so it also runs
where the workbench cannot be shown."""),
    '''try:
    from workbench import Workbench
    wb = Workbench(seeds)
except ImportError as e:          # the workbench needs Panel; the rest of the notebook does not
    wb = None
    print("workbench not available:", e)
wb''',
    M("""## Fit with QEM

QEM (Heap, Bowyer and Aitchison): the E-step is MP importance weighting's estimate of Q's
sufficient statistics; the M-step sets Q's parameters to match their running average.
No gradients, no learning rate. The final estimates reweight K = 300 particles from the
learned Q. (With KN_SMALL=1, the CI setting, the fits are shorter.)"""),
    '''K, ITERS = (50, 40) if SMALL else (100, 150)
def fit(model, K=K, iters=ITERS):
    f = Fitter(model, "qem", K=K, seed=0, device="cpu")
    t = time.time()
    for step in f.run(iters):
        pass
    print(f"{model.name}: {iters} QEM iterations at K={K} in {time.time() - t:.1f} s; final ELBO {step.elbo:.2f}")
    return f

full = fit(seeds)
res = full.result(K=300)
elbo = figure(title="ELBO (log P_MP) per iteration", height=250, width=500, x_axis_label="iteration")
elbo.line(np.arange(len(full.history["elbo"])), full.history["elbo"])
show(elbo)''',
    M("""## ArviZ summaries against NUTS

`Result.to_arviz()` resamples posterior draws from the MP index posterior. The reference
(assets/reference/seeds.json) is a long NUTS run on the same model."""),
    '''import arviz as az
idata = res.to_arviz(draws=2000)
summary = az.summary(idata, var_names=["alpha", "sigma"], kind="stats")
ref = datasets.reference("seeds")["latents"]
summary["NUTS mean"] = np.r_[ref["alpha"]["mean"], ref["sigma"]["mean"]]
summary["NUTS sd"] = np.r_[ref["alpha"]["sd"], ref["sigma"]["sd"]]
summary.round(3)''',
    M("""## Held-out seeds, and three variants

Hold out 30% of the seeds of every dish (a hypergeometric split of its germinated and
failed seeds), fit on the rest, and score the held-out counts: same dishes, same b_i,
new seeds. The variants: the model as built; without the dish effects (plain logistic
regression); without the interaction x1·x2."""),
    '''rng = np.random.default_rng(1)
n_test = np.round(0.3 * table.n.values).astype(int)
r_test = rng.hypergeometric(table.r.values, table.n.values - table.r.values, n_test)
r_train, n_train = table.r.values - r_test, table.n.values - n_test
test_data = {"r": r_test, "n": n_test}

with_b = seeds_model(r_train, n_train, "dish_effects")
no_b = seeds_model(r_train, n_train, "no_dish_effects")
no_b.update_node("r", args={"total_count": "n", "logits": "X @ alpha"})
no_b.remove_node("b")
no_b.remove_node("sigma")
no_int = seeds_model(r_train, n_train, "no_interaction")
no_int.set_data("X", X[:, :3], plates=["dishes"])
no_int.update_node("alpha", shape=[3])

rows = []
for m in (with_b, no_b, no_int):
    r = fit(m).result(K=300, test_data=test_data)
    rows.append({"model": m.name, "log P(train) (MP estimate)": r.log_marginal,
                 "predictive log-lik. of held-out": r.predictive_log_likelihood})
pd.DataFrame(rows).set_index("model").round(2)''',
    M("""Higher is better in both columns. The evidence estimate weighs fit against prior
volume (an extra coefficient with a N(0, 2.5) prior costs something), while the held-out
score asks only how well new seeds from the same dishes are predicted. Dish effects are
the usual answer to overdispersion in these data; the interaction's posterior sits less
than two sds from zero, so whether to keep it is a closer call. Differences of a fraction
of a nat are within the Monte Carlo noise of these estimates: refit with other seeds (the
`seed` of `Fitter` and of `result`) before reading much into them.

The same steps apply to the Minnesota radon model (`assets/models/radon.json`, 919
houses in 85 counties, 90 latent variables): `kn fit assets/models/radon.json --method qem
--K 10 --iters 60` takes well under a minute, and notebook 2 shows its einsum plan."""),
]

# ---------------------------------------------------------------------------------------------
NB4 = [
    M("""# 4. Particle degeneracy: diagnose, fix, recover

A degenerate run has weights piled onto single particles: estimates rest on one draw and
their error bars lie. We build one on purpose (the prior as proposal on a large plate of
well-identified latents), read the views, fix it three ways, and watch the views recover."""),
    SETUP,
    '''G, N = (40, 20) if SMALL else (200, 20)
m = datasets.hierarchical_gaussian(groups=G, per_group=N, seed=0)
ex = datasets.exact_posterior(m)
specs = datasets.exact_specs(m)
def report(s, label):
    err = np.abs(s.mean("z").numpy() - ex["latents"]["z"]["mean"]) / ex["latents"]["z"]["sd"]
    print(f"{label:28s} mean top share {dg.weight_matrix(s, 'z')['mean_top_share']:.2f}   "
          f"ESS/K of z {s.ess('z').mean() / s.K:.2f}   |error| of E[z_g] {err.mean():.2f} sds   "
          f"log P gap {ex['log_evidence'] - s.log_marginal():.1f} nats")
bad = m.sample(K=10, seed=0)
report(bad, "prior proposal, K=10")''',
    M("""## Reading the views

**Weights heatmap.** One row per group, most collapsed at the top: a single bright cell
per row means one particle holds nearly all the weight."""),
    '''show(dg.weights_heatmap(bad, "z", max_rows=40))''',
    M("""**Particles on the density.** For one group: the proposal (the prior mixed over μ's
particles) is far wider than the exact posterior, so only a particle or two land inside it."""),
    '''show(dg.particles_figure(bad, "z", 0, exact=specs["z[0]"]))''',
    M("""**Coupling.** The joint marginal of (k_z, k_μ), averaged over groups: all the mass on
one column means μ has collapsed too: every group agrees on one μ particle."""),
    '''show(dg.coupling_heatmap(bad, "z", "mu"))''',
    M("""**ESS against K, MP beside global.** More particles help MP only slowly when the
proposal is this poor; global IS does not move at all. The right panel is the Pareto
k-hat of the global weights against its 0.7 threshold."""),
    '''Ks = (3, 10, 30) if SMALL else (3, 10, 30, 100, 300)
show(dg.ess_k_figure(dg.ess_vs_K(m, Ks=Ks, seeds=range(2))))''',
    M("""## Fix 1: more particles"""),
    '''more = m.sample(K=30 if SMALL else 100, seed=0)
report(more, f"prior proposal, K={more.K}")''',
    M("""## Fix 2: learn the proposal with QEM

Watch the numbers as QEM runs: the top share falls towards 1/K, ESS/K rises towards 1 and
the evidence gap closes. Read ESS together with the gap: a Q narrower than the posterior
and off-centre gives its particles even weights while they all sit in the wrong place, so
a high ESS is necessary, not sufficient; the gap (or a second, independent run) exposes
that case."""),
    '''f = Fitter(m, "qem", K=10, seed=0, device="cpu")
for step in f.run(100):
    if step.iteration in (10, 30, 100):
        report(m.sample(K=10, seed=0, proposal=f.proposal), f"QEM proposal after {step.iteration:3d} its")
good = m.sample(K=10, seed=0, proposal=f.proposal)''',
    M("""## Fix 3: a better proposal by hand

Any Q with one family per latent can be handed to the sampler. Here a Normal matched to the
exact posterior marginals: the best a mean-field Normal can do."""),
    '''from engine.proposal import Proposal, FAMILIES
NormalQ = FAMILIES["Normal"]
def normal_q(mean, sd):
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
    sd = torch.as_tensor(np.asarray(sd, dtype=np.float32))
    return NormalQ.from_moments([mean, mean ** 2 + sd ** 2], ())
best = Proposal({n: normal_q(d["mean"], d["sd"]) for n, d in ex["latents"].items()})
ideal = m.sample(K=10, seed=0, proposal=best)
report(ideal, "exact-marginal proposal, K=10")''',
    M("""## The views recover"""),
    '''show(dg.weights_heatmap(good, "z", max_rows=40))''',
    '''show(dg.particles_figure(good, "z", 0, exact=specs["z[0]"]))''',
    '''show(dg.coupling_heatmap(good, "z", "mu"))''',
    M("""## A real model: the centred eight schools funnel

In the centred parameterisation θ_j ~ N(μ, τ): when τ is small every θ_j must sit next to
μ. With the prior as proposal, the coupling of θ with τ shows the funnel: small-τ particles
get weight only together with the rare θ particles that happen to be close to μ."""),
    '''es = datasets.load("eight_schools_centered")
se = es.sample(K=30, seed=0)
print("ESS/K:", {n: round(float(e.mean()) / se.K, 2) for n, e in se.ess().items()})
show(dg.coupling_heatmap(se, "theta", "tau", element=0))''',
    M("""The model file carries τ's exact marginal posterior (by quadrature, in its `exact`
field): set beside the particles, most of the prior's draws of τ lie far out in the
HalfCauchy tail where the posterior has little mass."""),
    '''show(dg.particles_figure(se, "tau", exact=es.extras["exact"]["tau"]))''',
]

# ---------------------------------------------------------------------------------------------
NB5 = [
    M("""# 5. QEM, MP RWS and MP VI

Three ways to fit the proposal Q, all driven by the same MP sample each iteration:
QEM (moment matching, no gradients), MP reweighted wake-sleep (a gradient step on
Σ_k w_k log Q(z^k)) and MP VI (reparameterised gradients of log P_MP). We compare them, with
MP importance sampling from the prior and global RWS as baselines, over a grid of methods,
K and seeds: a **sweep**, every cell a fit on a worker of a Dask cluster (here an embedded
one on this machine; `kn sweep ... --scheduler ADDRESS` runs the same grid on a real
cluster). Then we check QEM's invariance to reparameterisation."""),
    SETUP,
    '''from distributed import Client
from engine import sweep as sw
from workbench.compare import figures

ITERS = 30 if SMALL else 300
KS = (3, 10) if SMALL else (3, 10, 30)
SEEDS = (0, 1) if SMALL else (0, 1, 2)
cluster = sw.local_cluster(2 if SMALL else None)     # one single-threaded worker per core
client = Client(cluster)
print(sw.describe(client))

def at_largest_K(doc, method):
    """The finished rows of one method at the sweep's largest K (one per seed)."""
    rows = [r for r in doc["rows"] if r["method"] == method and r["status"] == "ok"]
    return [r for r in rows if r["K"] == max(KS)]''',
    M("""## A conjugate hierarchy (exact answer known)

Each row of the sweep is one cell's `Result`: the final ELBO, the log marginal estimate, the
posterior means and sds (with their Monte Carlo errors), ESS per latent, seconds per
iteration, any warnings. `figures(sweep)` draws ESS/K and the log marginal against K (the
line is the mean over seeds, the band their range; the dotted line is the exact log P(x)),
and the ELBO against iterations and against wall time."""),
    '''m = datasets.hierarchical_gaussian(groups=10 if SMALL else 30, per_group=5, seed=0)
ex = datasets.exact_posterior(m)
hier = sw.run_sweep({"hierarchy": m}, methods=("is", "qem", "rws", "vi", "global"), Ks=KS, seeds=SEEDS,
                    iters=ITERS, device="cpu", scheduler=client)
show(figures(hier, reference={"hierarchy": ex["log_evidence"]}))
print(f"exact log P(x) = {ex['log_evidence']:.2f};  at K = {max(KS)}, over {len(SEEDS)} seeds:")
for method in ("qem", "rws", "vi"):
    rows = at_largest_K(hier, method)
    err = [np.mean(np.abs(np.array(r["latents"]["z"]["mean"]) - ex["latents"]["z"]["mean"]) / ex["latents"]["z"]["sd"])
           for r in rows]
    print(f"{method:4s} final ELBO {np.mean([r['final_elbo'] for r in rows]):8.2f}   "
          f"{1000 * np.median([r['seconds_per_iter'] for r in rows]):5.1f} ms/iter   "
          f"mean |error| of E[z] {np.mean(err):.3f} sds")''',
    M("""Look at the log marginal at small K: MP importance sampling from the prior sits far below
the exact value and closes the gap only as K grows, while the learned proposals of QEM and
RWS are close to it already at K = 3, with ESS/K near 1. Global RWS, one weight per joint
sample, needs more particles than they do for the same accuracy. (With KN_SMALL=1 the fits
are short and the curves noisier.)

## Eight schools (non-centred), against quadrature"""),
    '''es = datasets.load("eight_schools_noncentered")
ref = datasets.reference("eight_schools_noncentered")
schools = sw.run_sweep({"eight schools": es}, methods=("qem", "rws", "vi"), Ks=KS, seeds=SEEDS, iters=ITERS,
                       device="cpu", scheduler=client)
show(figures(schools, reference={"eight schools": ref["log_evidence"]}))
print(f"quadrature log P(y) = {ref['log_evidence']:.2f};  E[tau | y] = {ref['latents']['tau']['mean']:.2f}, "
      f"E[mu | y] = {ref['latents']['mu']['mean']:.2f}")
for method in ("qem", "rws", "vi"):
    rows = at_largest_K(schools, method)
    tau, mu = ([float(r["latents"][n]["mean"]) for r in rows] for n in ("tau", "mu"))
    print(f"{method:4s} final ELBO {np.mean([r['final_elbo'] for r in rows]):8.2f}   "
          f"E[tau] {np.mean(tau):.2f} (seeds {min(tau):.2f}..{max(tau):.2f})   E[mu] {np.mean(mu):.2f}")''',
    M("""## A discrete latent: occupancy

VI needs reparameterised samples, so it cannot fit the Bernoulli occupancy indicators;
QEM and RWS can. The sweep reports VI's cells as failed, with the reason, and finishes the
others."""),
    '''occ = datasets.load("occupancy")
ref = datasets.reference("occupancy")
occupancy = sw.run_sweep({"occupancy": occ}, methods=("qem", "rws", "vi"), Ks=KS, seeds=SEEDS, iters=ITERS,
                         device="cpu", scheduler=client)
show(figures(occupancy, reference={"occupancy": ref["log_evidence"]}))
for r in sw.failed(occupancy)[:1]:
    print(f"{len(sw.failed(occupancy))} cells failed, e.g. {r['method']} K={r['K']}: {r['error']}")''',
    M("""## Reparameterisation invariance

Rewrite the hierarchy with μ on a scale 100 times larger: μ' ~ N(0, 100), z_g ~ N(μ'/100, 1).
It is the same model. QEM's Normal Q for μ' is the image of its Q for μ, step for step,
because moment matching commutes with affine maps; the ELBO curves coincide. RWS and VI
take Adam steps of a fixed size in parameter space, so the rescaled μ' is learnt far more
slowly."""),
    '''client.close(); cluster.close()      # the rest runs here, in this process
scaled = m.copy()
scaled.update_node("mu", args={"loc": 0, "scale": 100})
scaled.update_node("z", args={"loc": "mu / 100", "scale": 1})

def elbo(model, method, K=10, seed=0):
    return np.array([step.elbo for step in Fitter(model, method, K=K, seed=seed, device="cpu").run(ITERS)])

figs = []
from bokeh.layouts import row
for method in ("qem", "rws", "vi"):
    a, b = elbo(m, method), elbo(scaled, method)
    print(f"{method:4s} max |ELBO difference| between the parameterisations: {np.abs(a - b).max():.4f}")
    fig = figure(title=method, height=240, width=300, x_axis_label="iteration")
    fig.line(np.arange(ITERS), a, legend_label="mu", line_width=2)
    fig.line(np.arange(ITERS), b, legend_label="mu' = 100 mu", color="#d62728", line_dash="dashed", line_width=2)
    fig.y_range.start = float(np.percentile(np.concatenate([a, b]), 10))
    fig.legend.location = "bottom_right"
    figs.append(fig)
show(row(*figs))''',
]

NOTEBOOKS = {"01_importance_weighting": NB1, "02_massively_parallel": NB2, "03_exploratory_modelling": NB3,
             "04_particle_degeneracy": NB4, "05_qem_rws_vi": NB5}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(nb(cells), HERE / f"{name}.ipynb")
        print("wrote", HERE / f"{name}.ipynb")
