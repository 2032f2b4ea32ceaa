"""Fitting Q: QEM, MP RWS, MP VI against exact answers; the loop's contract."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import betaln

from engine import Model, ModelError
from engine.fit import FitError, Fitter
from engine.proposal import FAMILIES
from exact import gaussian_network, hierarchy_net


def hierarchy(G=100, N=5, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(1.0, 1.0, G)
    x = rng.normal(z[:, None], 1.0, (G, N)).round(4)
    m = Model("hier").add_plate("groups", G).add_plate("obs", N, "groups")
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("z", "latent", "Normal", {"loc": "mu", "scale": 1}, plate="groups")
    m.add_node("x", "observed", "Normal", {"loc": "z", "scale": 1}, plate="obs")
    m.set_data("x", x)
    return m, gaussian_network(hierarchy_net(x))


@pytest.fixture(scope="module")
def hier():
    return hierarchy()


@pytest.fixture(scope="module")
def runs(hier):
    m, _ = hier
    out = {}
    for method in ("qem", "rws", "vi"):
        f = Fitter(m, method, K=10, seed=0, lr=0.03)
        list(f.run(300))
        out[method] = f
    return out


def windows(f, n=6):
    return [w.mean() for w in np.split(np.array(f.history["elbo"]), n)]


def test_qem_reaches_the_exact_posterior(hier, runs):
    """Q's means within a small fraction of the posterior sd; the ELBO within 1 nat.

    Q's parameters are EMA-averaged moments, so their MC error shrinks as the run goes
    on; 0.35 sd over all 100 groups is about 3 sigma of a K=10 moment estimate averaged
    over the last ~15 effective iterations."""
    _, ex = hier
    q = runs["qem"].proposal
    zsd = np.sqrt([ex["var"][f"z{g}"] for g in range(100)])
    zm = np.array([ex["mean"][f"z{g}"] for g in range(100)])
    assert abs(float(q["mu"].params()["loc"]) - ex["mean"]["mu"]) < 0.25 * math.sqrt(ex["var"]["mu"])
    assert np.max(np.abs(q["z"].params()["loc"].numpy() - zm) / zsd) < 0.35
    assert np.allclose(q["z"].params()["scale"].numpy(), zsd, rtol=0.25)
    # one iteration's log P_MP spreads by sd (0.22 nat here); 4.5 sd bounds the error of one
    # estimate, and of an average of correlated ones, whatever the autocorrelation
    last = np.array(runs["qem"].history["elbo"][-100:])
    sd = last.std(ddof=1)
    assert abs(last.mean() - ex["log_evidence"]) < 4.5 * sd
    r = runs["qem"].result()
    assert abs(r.log_marginal - ex["log_evidence"]) < 4.5 * sd


def test_rws_and_vi_improve_and_are_slower_than_qem(hier, runs):
    _, ex = hier
    for method in ("rws", "vi"):
        w = windows(runs[method])
        assert w[0] < w[1] < w[2], (method, w)       # improving, in windows of 50 iterations
        assert w[-1] > w[0] + 5
        assert windows(runs["qem"])[1] > w[1] + 1    # QEM is there sooner
    last = np.array(runs["rws"].history["elbo"][-50:])   # RWS gets there too (4.5 sd, as for QEM)
    assert abs(last.mean() - ex["log_evidence"]) < 4.5 * last.std(ddof=1)
    w = windows(runs["vi"])
    assert all(b > a - 0.5 for a, b in zip(w, w[1:])), w               # VI: still climbing


def test_qem_is_invariant_to_reparameterisation():
    """A scale written as s ~ LogNormal with a LogNormal Q, or as exp(u), u ~ Normal with
    a Normal Q: QEM takes the same steps, so the ELBOs agree within MC error."""
    rng = np.random.default_rng(3)
    x = rng.normal(0.5, 2.0, (12, 4)).round(3)
    elbos = []
    for scale_node, scale_expr in ((("s", "LogNormal", {"loc": 0, "scale": 1}), "s"),
                                   (("u", "Normal", {"loc": 0, "scale": 1}), "exp(u)")):
        m = Model("reparam").add_plate("g", 12).add_plate("n", 4, "g")
        m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 2})
        m.add_node(scale_node[0], "latent", scale_node[1], scale_node[2])
        m.add_node("z", "latent", "Normal", {"loc": "mu", "scale": scale_expr}, plate="g")
        m.add_node("x", "observed", "Normal", {"loc": "z", "scale": 1}, plate="n")
        m.set_data("x", x)
        m.proposal = {"s": {"dist": "LogNormal"}} if scale_node[0] == "s" else {}
        f = Fitter(m, "qem", K=10, seed=0)
        list(f.run(150))
        elbos.append(np.array(f.history["elbo"][-50:]))
    a, b = elbos
    se = math.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4 * se + 0.05, (a.mean(), b.mean(), se)


def mixture():
    x = [1.4, -0.8, 0.2, 2.1, -1.5, 0.9]
    m = Model("mix").add_plate("n", 6)
    m.add_node("p", "latent", "Beta", {"concentration1": 2, "concentration0": 2})
    m.add_node("z", "latent", "Bernoulli", {"probs": "p"}, plate="n")
    m.add_node("x", "observed", "Normal", {"loc": "2 * z - 1", "scale": 1}, plate="n")
    m.set_data("x", x)
    # exact by enumerating the 64 indicator settings, p integrated out (Beta-Bernoulli)
    x = np.array(x)
    post, p_mean, total = np.zeros(6), 0.0, 0.0
    for z in itertools.product([0, 1], repeat=6):
        z = np.array(z)
        s = z.sum()
        w = math.exp(betaln(2 + s, 2 + 6 - s) - betaln(2, 2) - 0.5 * ((x - (2 * z - 1)) ** 2).sum())
        total += w
        post += w * z
        p_mean += w * (2 + s) / (4 + 6)
    return m, post / total, p_mean / total


@pytest.mark.parametrize("method,iters,tol", [("qem", 150, 0.05), ("rws", 400, 0.08)])
def test_discrete_latent_against_enumeration(method, iters, tol):
    """A sampled (not enumerated) Bernoulli latent: QEM's and RWS's Bernoulli Q against the
    exact posterior, and the pooled estimate within 4 of its reported MCSE."""
    m, post_z, post_p = mixture()
    m.update_node("z", enumerate=False)
    f = Fitter(m, method, K=10, seed=0, lr=0.05)
    list(f.run(iters))
    q = f.proposal
    assert q["z"].name == "Bernoulli" and q["p"].name == "Beta"
    assert np.max(np.abs(q["z"].params()["probs"].numpy() - post_z)) < tol
    c1, c0 = (float(v) for v in q["p"].params().values())
    assert abs(c1 / (c1 + c0) - post_p) < tol
    r = f.result(K=30)
    d = r.latents["z"]
    assert np.all(np.abs(d["mean"] - post_z) < 4 * d["mcse_mean"] + 0.01)


def test_stop_and_resume_follow_the_same_trajectory():
    m, _ = hierarchy(G=10)
    for method in ("qem", "rws"):
        full = Fitter(m, method, K=5, seed=7)
        list(full.run(12))
        f = Fitter(m, method, K=5, seed=7)
        for step in f.run(12):
            if step.iteration == 5:
                f.stop()
        assert f.t == 5
        list(f.run(7))
        assert f.history["elbo"] == full.history["elbo"]
        g = Fitter(m, method, K=5, seed=7)    # and through a checkpoint
        list(g.run(5))
        h = Fitter(m, method, K=5, seed=7)
        h.load_state_dict(g.state_dict())
        list(h.run(7))
        assert h.history["elbo"] == full.history["elbo"]


def test_same_seed_same_numbers():
    m, _ = hierarchy(G=10)
    a, b = Fitter(m, "vi", K=5, seed=3), Fitter(m, "vi", K=5, seed=3)
    list(a.run(5)), list(b.run(5))
    assert a.history["elbo"] == b.history["elbo"]
    assert Fitter(m, "vi", K=5, seed=4).step().elbo != a.history["elbo"][0]


def test_nan_stops_the_loop_naming_node_and_iteration_and_keeps_last_good():
    m = Model("p").add_plate("n", 50)
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("x", "observed", "Normal", {"loc": "mu", "scale": {"param": 0.3}}, plate="n")
    m.set_data("x", np.zeros(50))
    f = Fitter(m, "rws", K=10, seed=0, lr=1.0)   # one Adam step drives the scale negative
    with pytest.raises(FitError, match=r"iteration 1: node 'x'.*NaN.*kept the last good"):
        list(f.run(5))
    assert float(f.params[("x", "scale")].detach()) == pytest.approx(0.3)
    g = Fitter(m, "qem", K=10, seed=0)
    g.proposal["mu"].raw["loc"] = torch.tensor(float("nan"))
    with pytest.raises(FitError, match=r"iteration 0: node 'mu'"):
        g.step()


def test_vi_with_a_sampled_discrete_latent_is_refused_before_any_work():
    m, _, _ = mixture()
    Fitter(m, "vi")                                  # z is enumerated: summed exactly, VI is fine
    m.update_node("z", enumerate=False)
    with pytest.raises(ModelError, match=r"method 'vi' needs every latent continuous or enumerated, but 'z' is "
                                         r"Bernoulli"):
        Fitter(m, "vi")
    with pytest.raises(ModelError, match="method must be one of"):
        Fitter(m, "em")


def test_model_parameter_fitted_to_maximum_likelihood():
    """mu ~ N(theta, 1), x_n ~ N(mu, 1): the marginal likelihood peaks at theta = mean(x)."""
    x = np.array([0.3, 1.9, 2.4, 0.8, 1.1, 2.6, 1.7, 0.4])
    m = Model("ml").add_plate("n", 8)
    m.add_node("mu", "latent", "Normal", {"loc": {"param": 0.0}, "scale": 1})
    m.add_node("x", "observed", "Normal", {"loc": "mu", "scale": 1}, plate="n")
    m.set_data("x", x)
    for method in ("rws", "vi", "qem"):
        f = Fitter(m, method, K=10, seed=0, lr=0.05)
        list(f.run(300))
        assert float(f.params[("mu", "loc")].detach()) == pytest.approx(x.mean(), abs=0.15), method


def test_predictive_log_likelihood_against_closed_form():
    m, _ = hierarchy(G=10, N=5, seed=2)
    x = m.data["x"]
    rng = np.random.default_rng(9)
    x_test = (x.mean(1, keepdims=True) + rng.normal(0, 1, (10, 3))).round(4)
    net = hierarchy_net(x)
    both = net + [(f"t{g}{n}", {f"z{g}": 1}, 0, 1, x_test[g, n]) for g in range(10) for n in range(3)]
    exact = gaussian_network(both)["log_evidence"] - gaussian_network(net)["log_evidence"]
    f = Fitter(m, "qem", K=10, seed=0)
    list(f.run(100))
    r = f.result(test_data={"x": x_test})   # the obs plate changes size: it holds no latent
    assert abs(r.predictive_log_likelihood - exact) < 0.5, (r.predictive_log_likelihood, exact)
    assert r.to_dict()["predictive_log_likelihood"] == r.predictive_log_likelihood
    with pytest.raises(ModelError, match="plate 'groups' holds latents"):
        f.result(test_data={"x": x_test[:4]})


def test_arviz_export(hier, runs):
    import arviz as az
    r = runs["qem"].result()
    idata = r.to_arviz(draws=2000, seed=0)
    summary = az.summary(idata, kind="stats")
    assert "mu" in summary.index and "z[0]" in summary.index and len(summary) == 101
    sd = r.latents["z"]["sd"]
    assert np.all(np.abs(summary.loc[[f"z[{g}]" for g in range(100)], "mean"].to_numpy() - r.latents["z"]["mean"])
                  < 4.5 * sd / math.sqrt(2000) + 1e-6)   # iid draws from the weighted particles: SE sd / sqrt(n)
    ss = idata.sample_stats
    assert ss["ess_z"].dims == ("groups",) and np.allclose(ss["ess_z"].values, r.latents["z"]["ess"])
    assert idata.posterior.attrs["n_samples"] == r.n_samples >= 16
    # the pooled draws hold many distinct values of the global mu, not one sample's K = 10
    assert len(np.unique(idata.posterior["mu"].values)) > 5 * r.K


@pytest.mark.parametrize("name", list(FAMILIES))
def test_qem_moment_maps_round_trip(name):
    """moments -> parameters -> moments: the M-step inverts the sufficient statistics."""
    torch.manual_seed(0)
    cls = FAMILIES[name]
    params = {
        "Normal": dict(loc=torch.tensor([0.5, -2.0]), log_scale=torch.log(torch.tensor([0.3, 2.0]))),
        "LogNormal": dict(loc=torch.tensor([0.1, 1.0]), log_scale=torch.log(torch.tensor([0.5, 0.2]))),
        "Gamma": dict(log_concentration=torch.log(torch.tensor([0.7, 20.0])), log_rate=torch.log(torch.tensor([2.0, 0.5]))),
        "InverseGamma": dict(log_concentration=torch.log(torch.tensor([3.0, 8.0])), log_rate=torch.log(torch.tensor([2.0, 1.0]))),
        "Exponential": dict(log_rate=torch.log(torch.tensor([0.5, 4.0]))),
        "Beta": dict(log_c1=torch.log(torch.tensor([0.6, 5.0])), log_c0=torch.log(torch.tensor([2.0, 3.0]))),
        "Dirichlet": dict(log_concentration=torch.log(torch.tensor([[0.5, 2.0, 7.0], [3.0, 3.0, 1.0]]))),
        "Bernoulli": dict(logits=torch.tensor([-1.0, 2.0])),
        "Categorical": dict(logits=torch.log(torch.tensor([[0.2, 0.5, 0.3], [0.7, 0.1, 0.2]]))),
        "Poisson": dict(log_rate=torch.log(torch.tensor([0.4, 12.0]))),
        "MultivariateNormal": dict(loc=torch.tensor([[0.0, 1.0], [2.0, -1.0]]),
                                   tril=torch.tensor([[[0.1, 0.0], [0.5, -0.3]], [[-0.2, 0.0], [-0.4, 0.2]]])),
    }[name]
    event = (3,) if name == "Dirichlet" else (2,) if name == "MultivariateNormal" else ()
    f = cls({k: v.double() for k, v in params.items()}, event)
    x = f.sample(400_000, reparam=False)
    moments = [s.mean(0) for s in f.stats(x)]
    g = cls.from_moments(moments, event)
    g_moments = [s.mean(0) for s in g.stats(g.sample(400_000, reparam=False))]
    for a, b in zip(moments, g_moments):
        assert torch.allclose(a, b, rtol=0.02, atol=0.01), (name, a, b)
    for k, v in f.params().items():       # and the parameters themselves come back
        assert torch.allclose(v, g.params()[k], rtol=0.05, atol=0.02), (name, k, v, g.params()[k])
