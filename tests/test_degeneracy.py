"""Particle-degeneracy views: the numbers behind each view, checked against brute force
or closed forms, and the figures drawn from them."""
import itertools
import math

import numpy as np
import pytest

from engine import ModelError, datasets
from engine.fit import Fitter

dg = pytest.importorskip("workbench.degeneracy")


def small(groups=2, per_group=3, seed=0):
    return datasets.hierarchical_gaussian(groups, per_group, seed)


def test_weight_matrix_rows_sorted_and_normalised():
    s = small(6).sample(K=8, seed=1)
    d = dg.weight_matrix(s, "z")
    w = d["w"]
    assert w.shape == (6, 8)
    assert np.allclose(w.sum(1), 1, atol=1e-5)
    assert np.all(np.diff(w, axis=1) <= 0)                       # heaviest particle first
    assert np.all(np.diff(d["top_share"]) <= 0)                   # most collapsed row first
    raw = s.marginal_weights("z").double().numpy()
    assert np.allclose(np.sort(dg.top_share(s, "z"))[::-1], d["top_share"])
    assert np.allclose(d["top_share"], raw.max(0)[[int(l[2:-1]) for l in d["labels"]]])
    assert np.allclose(d["ess"], 1 / (w ** 2).sum(1))
    with pytest.raises(ModelError, match="not a latent"):
        dg.weight_matrix(s, "x")


def test_collapse_with_prior_proposal_and_recovery_with_qem():
    """50 observations a group pin each z down: K=10 prior particles collapse onto one;
    the QEM proposal spreads the weight again."""
    m = datasets.hierarchical_gaussian(groups=30, per_group=50, seed=0)
    prior = dg.weight_matrix(m.sample(K=10, seed=0), "z")["mean_top_share"]
    f = Fitter(m, "qem", K=10, seed=0, device="cpu")
    for _ in f.run(30):
        pass
    fitted = dg.weight_matrix(m.sample(K=10, seed=0, proposal=f.proposal), "z")["mean_top_share"]
    assert prior > 0.6 and fitted < 0.3, (prior, fitted)   # prior: 0.69-0.85 over seeds 0-9


def _brute_force_joint(s, K, G):
    """P(k_mu, k_z[0..G-1]) by enumerating all K^(G+1) index combinations."""
    f = {n: v.t.detach().double() for n, v in s.factors.items()}
    fx = f["x"].sum(-1)                                              # (K:z, groups): sum over obs
    logp = {}
    for k in itertools.product(range(K), repeat=G + 1):
        km, kz = k[0], k[1:]
        logp[k] = float(f["mu"][km] + sum(f["z"][km, kz[g], g] + fx[kz[g], g] for g in range(G)))
    m = max(logp.values())
    z = sum(math.exp(v - m) for v in logp.values())
    return {k: math.exp(v - m) / z for k, v in logp.items()}


def test_coupling_against_brute_force():
    K, G = 3, 2
    s = small(G).sample(K=K, seed=3)
    assert s.factors["z"].dims == ("K:mu", "K:z", "groups")
    joint = _brute_force_joint(s, K, G)
    for g in range(G):
        want = np.zeros((K, K))
        for k, p in joint.items():
            want[k[1 + g], k[0]] += p
        assert np.allclose(dg.coupling(s, "z", "mu", element=g), want, atol=1e-5)
    avg = dg.coupling(s, "z", "mu")
    assert np.isclose(avg.sum(), 1, atol=1e-5)
    # its margins are the marginal weights of the two latents
    assert np.allclose(avg.sum(0), s.marginal_weights("mu").double().numpy(), atol=1e-5)
    assert np.allclose(dg.coupling(s, "z", "mu", 1).sum(1), s.marginal_weights("z")[:, 1].double().numpy(), atol=1e-5)
    with pytest.raises(ModelError, match="not a parent"):
        dg.coupling(s, "mu", "z")


def test_proposal_density_prior_mixture_and_learned_q():
    m = small(3)
    s = m.sample(K=5, seed=0)
    x = np.linspace(-6, 6, 2001)
    lq_mu = dg.proposal_log_density(s, "mu", x)
    assert np.allclose(lq_mu, -0.5 * x ** 2 - 0.5 * math.log(2 * math.pi), atol=1e-4)      # the prior N(0, 1)
    mus = s.values["mu"].t.double().numpy()
    mix = np.log(np.mean(np.exp(-0.5 * (x[:, None] - mus) ** 2) / math.sqrt(2 * math.pi), 1))
    assert np.allclose(dg.proposal_log_density(s, "z", x, 2), mix, atol=1e-4)              # Q_MP mixture
    f = Fitter(m, "qem", K=5, seed=0, device="cpu")
    for _ in f.run(5):
        pass
    sq = m.sample(K=5, seed=0, proposal=f.proposal)
    p = f.proposal["z"].params()
    loc, scale = float(p["loc"][1]), float(p["scale"][1])
    want = -0.5 * ((x - loc) / scale) ** 2 - math.log(scale * math.sqrt(2 * math.pi))
    assert np.allclose(dg.proposal_log_density(sq, "z", x, 1), want, atol=1e-3)
    assert np.trapezoid(np.exp(dg.proposal_log_density(sq, "z", x, 1)), x) == pytest.approx(1, abs=1e-3)


def test_proposal_density_respects_support():
    m = datasets.load("eight_schools_noncentered")
    s = m.sample(K=4, seed=0)
    x = np.array([-1.0, 0.5, 2.0])
    lq = dg.proposal_log_density(s, "tau", x)
    assert lq[0] == -np.inf and np.all(np.isfinite(lq[1:]))   # HalfCauchy: no mass below 0


def test_particle_density_numbers():
    m = small(3)
    s = m.sample(K=20, seed=2)
    spec = datasets.exact_specs(m)["z[1]"]
    d = dg.particle_density(s, "z", 1, exact=spec)
    assert d["x"].shape == (20,) and np.isclose(d["w"].sum(), 1, atol=1e-5)
    assert d["weighted_mean"] == pytest.approx(float(s.mean("z")[1]), abs=1e-5)
    loc, sc = spec["args"]["loc"], spec["args"]["scale"]
    assert np.allclose(d["exact"], np.exp(-0.5 * ((d["grid"] - loc) / sc) ** 2) / (sc * math.sqrt(2 * math.pi)))
    assert d["exact_mean"] == pytest.approx(loc, abs=1e-3)
    assert d["grid"].min() < loc - 4 * sc and d["grid"].max() > loc + 4 * sc
    with pytest.raises(ModelError, match="plates"):
        dg.particle_density(s, "z")


def test_particle_density_with_a_gridded_exact_posterior():
    m = datasets.load("eight_schools_noncentered")
    spec = m.extras["exact"]["tau"]
    d = dg.particle_density(m.sample(K=50, seed=0), "tau", exact=spec)
    assert np.allclose(d["exact"], np.interp(d["grid"], spec["x"], spec["pdf"], left=0, right=0))
    assert d["grid"].max() >= 15                                   # the grid spans the posterior's bulk
    assert d["exact_mean"] == pytest.approx(datasets.reference(m.name)["latents"]["tau"]["mean"], abs=0.2)
    assert dg.ess_vs_K(m, Ks=(20,), seeds=[0])["reference_kind"] == "exact"


def test_global_log_weights_by_hand():
    m = small(2, 3)
    g = m.sample_global(K=50, seed=0)
    lw = dg.global_log_weights(g)
    z = g.values["z"].t.double().numpy()                        # (K, groups), drawn from the prior
    x = m.data["x"]
    want = (-0.5 * (x[None] - z[:, :, None]) ** 2 - 0.5 * math.log(2 * math.pi)).sum((1, 2))
    assert np.allclose(lw, want, atol=1e-3)
    w = np.exp(lw - lw.max())
    w /= w.sum()
    assert np.allclose(w, g.marginal_weights("mu").double().numpy(), atol=1e-5)
    assert dg.ess_of_log_weights(lw) == pytest.approx(1 / (w ** 2).sum())
    assert g.log_marginal() == pytest.approx(float(np.logaddexp.reduce(lw) - math.log(50)), abs=1e-3)
    with pytest.raises(ModelError, match="global sample"):
        dg.global_log_weights(m.sample(K=5))


def test_pareto_khat():
    rng = np.random.default_rng(0)
    assert dg.pareto_khat(rng.normal(0, 0.3, 2000)) < 0.5                     # light tails
    assert dg.pareto_khat(np.log(rng.pareto(1.0, 2000) + 1)) > dg.KHAT_THRESHOLD   # tail index 1: k = 1
    assert math.isnan(dg.pareto_khat(np.zeros(10)))
    one = datasets.hierarchical_gaussian(groups=1, per_group=5)
    many = datasets.hierarchical_gaussian(groups=50, per_group=5)
    assert dg.pareto_khat(one.sample_global(K=1000, seed=0)) < dg.KHAT_THRESHOLD
    assert dg.pareto_khat(many.sample_global(K=1000, seed=0)) > dg.KHAT_THRESHOLD


def test_ess_against_K_mp_beside_global():
    m = datasets.hierarchical_gaussian(groups=20, per_group=5)
    sw = dg.ess_vs_K(m, Ks=(3, 30, 300), seeds=range(2))
    assert sw["reference_kind"] == "exact"
    assert sw["reference"] == pytest.approx(datasets.exact_posterior(m)["log_evidence"])
    assert np.all(np.diff(sw["mp_ess"]["z"]) > 0)
    assert sw["mp_ess"]["z"][-1] > 30 * sw["global_ess"][-1]       # MP keeps ESS; global has ~1
    # with 21 latents global IS is tens of nats short of log P(x) even at K=300 (23 here);
    # MP is 1.2 nats short at K=30 and within half a nat at K=300
    assert sw["global_gap"][-1] > 10 and abs(sw["mp_gap"][1]) < 2.5 and abs(sw["mp_gap"][2]) < 0.5
    assert sw["khat"][-1] > dg.KHAT_THRESHOLD


def test_ess_against_number_of_latents():
    sw = dg.ess_vs_latents(groups=(1, 5, 25), K=200, seeds=range(2))
    assert np.array_equal(sw["n_latents"], [2, 6, 26])
    assert np.all(np.diff(sw["kl"]) > 0)                            # KL(posterior || prior) grows with n
    assert sw["global_ess"][0] > 0.3 * 200 and sw["global_ess"][-1] < 3   # global IS collapses
    assert np.all(sw["mp_ess"] > 0.2 * 200)                         # MP does not
    assert sw["exp_kl"][-1] > 1e6 > sw["exp_kl"][0]


def test_figures_are_drawn_from_the_numbers():
    from bokeh.embed import file_html
    from bokeh.resources import CDN
    m = small(4)
    s = m.sample(K=6, seed=0)
    fig = dg.weights_heatmap(s, "z")
    img = fig.select_one({"name": "weights"}).data_source.data["image"][0]
    assert np.allclose(img, dg.weight_matrix(s, "z")["w"])
    fig = dg.coupling_heatmap(s, "z", "mu", element=0)
    assert np.isclose(np.sum(fig.select_one({"name": "coupling"}).data_source.data["image"][0]), 1, atol=1e-5)
    fig = dg.particles_figure(s, "mu", exact=datasets.exact_specs(m)["mu"])
    assert fig.select_one({"name": "exact"}) is not None and fig.select_one({"name": "particles"}) is not None
    sk = dg.ess_vs_K(m, Ks=(20, 40), seeds=[0])
    sl = dg.ess_vs_latents(groups=(1, 3), K=20, seeds=[0])
    for f in (dg.weights_heatmap(s, "z"), dg.coupling_heatmap(s, "z", "mu"), dg.particles_figure(s, "z", 0),
              dg.ess_k_figure(sk), dg.ess_latents_figure(sl)):
        assert "<html" in file_html(f, CDN).lower()
