"""Time-series latents: the chain of K x K transition factors, contracted by a log-space
tree, against brute force, the Kalman filter and RTS smoother, and quadrature."""
import itertools
import math

import numpy as np
import pytest
from scipy.stats import norm

from engine import Model, ModelError
from engine.fit import Fitter
from exact import gaussian_network


def ssm(y, a=1.0, q=1.0, r=0.5, init=0.0, x0=None):
    """x_t ~ N(a x_{t-1}, q), x_{-1} = init (or the latent x0 ~ N(x0[0], x0[1])); y_t ~ N(x_t, r)."""
    m = Model("ssm").add_plate("t", len(y))
    if x0 is not None:
        m.add_node("x0", "latent", "Normal", {"loc": x0[0], "scale": x0[1]})
    m.add_node("x", "latent", "Normal", {"loc": f"prev * {a}", "scale": q}, plate="t",
               timeseries={"init": "x0" if x0 is not None else init})
    m.add_node("y", "observed", "Normal", {"loc": "x", "scale": r}, plate="t")
    m.set_data("y", np.asarray(y, dtype=float))
    return m


def ssm_net(y, a=1.0, q=1.0, r=0.5, init=0.0, x0=None):
    """The same model as a linear-Gaussian network: the Kalman filter's and RTS smoother's answers."""
    net = [("x0", {}, x0[0], x0[1], None)] if x0 is not None else []
    for t in range(len(y)):
        parent = f"x{t}" if (t or x0 is not None) else None
        const = 0.0 if parent else a * init
        net.append((f"x{t + 1}", {parent: a} if parent else {}, const, q, None))
        net.append((f"y{t}", {f"x{t + 1}": 1.0}, 0.0, r, float(y[t])))
    return gaussian_network(net)


def brute_force(s, y, a, q, r, init_values):
    """log P_MP of one prior-proposal sample by summing over every index path."""
    x = s.values["x"].t.double().numpy()            # (K, T)
    K, T = x.shape
    starts = np.atleast_1d(init_values)
    total = []
    for k0 in range(len(starts)):
        for ks in itertools.product(range(K), repeat=T):
            lw = 0.0
            for t, k in enumerate(ks):
                prevs = starts if t == 0 else x[:, t - 1]
                p = starts[k0] if t == 0 else x[ks[t - 1], t - 1]
                lq = np.log(np.mean(norm.pdf(x[k, t], a * prevs, q)))
                lw += norm.logpdf(x[k, t], a * p, q) - lq + norm.logpdf(y[t], x[k, t], r)
            total.append(lw)
    return np.logaddexp.reduce(total) - T * np.log(K) - (np.log(len(starts)) if len(starts) > 1 else 0)


@pytest.mark.parametrize("init", ["constant", "latent"])
def test_chain_contraction_is_the_sum_over_every_path(init):
    y = np.array([0.3, -0.5, 1.1, 0.7])
    m = ssm(y, a=0.9, init=0.5) if init == "constant" else ssm(y, a=0.9, x0=(0.3, 1.0))
    s = m.sample(K=3, seed=0, dtype="float64")
    starts = 0.5 if init == "constant" else s.values["x0"].t.double().numpy()
    assert s.log_marginal() == pytest.approx(brute_force(s, y, 0.9, 1.0, 0.5, starts), abs=1e-10)
    chain = [c for c in s.einsum_path() if "chain" in c]
    assert len(chain) == 1 and chain[0]["chain"]["dims"] == [["K:x", "K:x~prev"]]
    if init == "latent":   # the init latent's particles run on the previous index: no extra K-dim
        assert s.program.factor_dims["x"] == ("K:x", "K:x~prev", "t")


def test_chain_estimator_is_unbiased():
    """E[P_MP] = P(y) for the prior proposal over 4000 seeds (the bias a biased scan shows,
    e.g. summing the first element's dummy previous index, is log K = 1.1 nats)."""
    rng = np.random.default_rng(1)
    y = rng.normal(0, 1, 6)
    m = ssm(y, a=0.9, x0=(0.3, 1.0))
    prog = m.compile(K=3, dtype="float64")
    w = np.exp(np.array([prog.sample(i).log_marginal() for i in range(4000)]) -
               ssm_net(y, a=0.9, x0=(0.3, 1.0))["log_evidence"])
    assert abs(w.mean() - 1) < 4 * w.std() / math.sqrt(len(w))


def test_two_series_in_one_plate_and_a_shared_scale_against_brute_force():
    """A bivariate state (two chains whose K-dims the scan flattens into one) with a global
    scale latent as a batch dim of every matrix: the contraction equals the path sum."""
    y = np.array([0.2, 0.9, -0.4])
    m = Model("two").add_plate("t", 3)
    m.add_node("s", "latent", "HalfNormal", {"scale": 1.0})
    m.add_node("u", "latent", "Normal", {"loc": "prev", "scale": "s"}, plate="t", timeseries={"init": 0})
    m.add_node("v", "latent", "Normal", {"loc": "0.5 * prev + u", "scale": 1.0}, plate="t", timeseries={"init": 0})
    m.add_node("y", "observed", "Normal", {"loc": "v", "scale": 0.5}, plate="t")
    m.set_data("y", y)
    s = m.sample(K=2, seed=3, dtype="float64")
    u, v, sc = (s.values[n].t.double().numpy() for n in ("u", "v", "s"))
    K, T = u.shape
    total = []
    for ks in itertools.product(range(K), repeat=1 + 2 * T):     # s, then (u_t, v_t) per element
        k_s, path = ks[0], ks[1:]
        lw = 0.0                                               # s from its prior: its factor is 0
        for t in range(T):
            ku, kv = path[2 * t], path[2 * t + 1]
            pu = 0.0 if t == 0 else u[path[2 * t - 2], t - 1]
            pv = 0.0 if t == 0 else v[path[2 * t - 1], t - 1]
            prev_u = np.array([0.0]) if t == 0 else u[:, t - 1]
            prev_v = np.array([0.0]) if t == 0 else v[:, t - 1]
            # u's prior proposal mixes over s's particles and its own previous ones; v's over
            # its previous ones and u's (its parents on other K-dims)
            lq_u = np.log(np.mean(norm.pdf(u[ku, t], prev_u[:, None], sc[None, :])))
            lq_v = np.log(np.mean(norm.pdf(v[kv, t], 0.5 * prev_v[:, None] + u[None, :, t], 1.0)))
            lw += norm.logpdf(u[ku, t], pu, sc[k_s]) - lq_u
            lw += norm.logpdf(v[kv, t], 0.5 * pv + u[ku, t], 1.0) - lq_v + norm.logpdf(y[t], v[kv, t], 0.5)
        total.append(lw)
    bf = np.logaddexp.reduce(total) - (1 + 2 * T) * np.log(K)
    assert s.log_marginal() == pytest.approx(bf, abs=1e-10)


def test_kalman_smoother_at_T_1000():
    """A linear-Gaussian state-space model over 1000 steps at default settings: the log
    evidence within 4 reported MCSE of the Kalman filter's; smoothed means within 4 MCSE
    for 95% of the steps and within 0.25 posterior sd everywhere; smoothed sds within 20%;
    the posterior draws' correlation of neighbouring steps within 4 of its standard errors."""
    rng = np.random.default_rng(0)
    T = 1000
    y = np.cumsum(rng.normal(0, 1, T)) + rng.normal(0, 0.5, T)
    m = ssm(y)
    ex = ssm_net(y)
    f = Fitter(m, "qem", seed=0)
    list(f.run(1000, until_converged=True))
    r = f.result()
    assert abs(r.log_marginal - ex["log_evidence"]) < 4 * r.log_marginal_mcse + 0.05
    mean = np.array([ex["mean"][f"x{t + 1}"] for t in range(T)])
    sd = np.sqrt([ex["var"][f"x{t + 1}"] for t in range(T)])
    d = r.latents["x"]
    z = (d["mean"] - mean) / d["mcse_mean"]
    assert np.mean(np.abs(z) < 4) >= 0.95
    assert np.abs(d["mean"] - mean).max() < 0.25 * sd.min()
    assert np.abs(d["sd"] / sd - 1).max() < 0.2
    post = r.posterior_samples(4000)["x"]
    cov = ex["cov"]
    exact = cov[0, 1] / math.sqrt(cov[0, 0] * cov[1, 1])
    assert abs(np.corrcoef(post[:, 0], post[:, 1])[0, 1] - exact) < 4 * (1 - exact ** 2) / math.sqrt(r.n_samples * r.K)


def test_several_series_in_a_plate_share_global_effects():
    """The covid structure in miniature: regions each with a random walk of log infections
    that shares a global drift; linear-Gaussian, so the network solution is exact."""
    rng = np.random.default_rng(2)
    R, T = 4, 12
    y = np.cumsum(rng.normal(0.3, 1, (R, T)), 1) + rng.normal(0, 0.5, (R, T))
    m = Model("regions").add_plate("regions", R).add_plate("days", T, "regions")
    m.add_node("drift", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("x", "latent", "Normal", {"loc": "prev + drift", "scale": 1.0}, plate="days", timeseries={"init": 0})
    m.add_node("y", "observed", "Normal", {"loc": "x", "scale": 0.5}, plate="days")
    m.set_data("y", y)
    net = [("drift", {}, 0.0, 1.0, None)]
    for g in range(R):
        for t in range(T):
            net.append((f"x{g}_{t}", {"drift": 1.0, **({f"x{g}_{t - 1}": 1.0} if t else {})}, 0.0, 1.0, None))
            net.append((f"y{g}_{t}", {f"x{g}_{t}": 1.0}, 0.0, 0.5, float(y[g, t])))
    ex = gaussian_network(net)
    f = Fitter(m, "qem", seed=0)
    list(f.run(1000, until_converged=True))
    r = f.result()
    assert abs(r.log_marginal - ex["log_evidence"]) < 4 * r.log_marginal_mcse + 0.05
    d = r.latents["drift"]
    assert abs(float(d["mean"]) - ex["mean"]["drift"]) < 4 * float(d["mcse_mean"])
    x = np.array([[ex["mean"][f"x{g}_{t}"] for t in range(T)] for g in range(R)])
    z = (r.latents["x"]["mean"] - x) / r.latents["x"]["mcse_mean"]
    assert np.mean(np.abs(z) < 4) >= 0.95


def test_covid_like_counts_run_and_recover_the_effect():
    """Regions x days, a log-infection random walk per region, a shared intervention
    effect after day 10 and NegativeBinomial counts: QEM fits it and the effect's
    posterior covers the value that made the data."""
    rng = np.random.default_rng(4)
    R, T, effect = 6, 30, -0.08
    after = (np.arange(T) >= 10).astype(float)
    logi = np.zeros((R, T))
    for t in range(T):
        logi[:, t] = (logi[:, t - 1] if t else 3.0) + 0.05 + effect * after[t] + rng.normal(0, 0.05, R)
    counts = rng.negative_binomial(20, 20 / (20 + np.exp(logi)))
    m = Model("covid_like").add_plate("regions", R).add_plate("days", T, "regions")
    m.add_node("growth", "latent", "Normal", {"loc": 0, "scale": 0.2})
    m.add_node("effect", "latent", "Normal", {"loc": 0, "scale": 0.2})
    m.add_node("start", "latent", "Normal", {"loc": 3, "scale": 1}, plate="regions")
    m.add_node("log_inf", "latent", "Normal", {"loc": "prev + growth + effect * after", "scale": 0.05},
               plate="days", timeseries={"init": "start"})
    m.add_node("cases", "observed", "NegativeBinomial", {"total_count": 20, "logits": "log_inf - log(20)"},
               plate="days")
    m.set_data("cases", counts)
    m.set_data("after", np.tile(after, (R, 1)), plates=["regions", "days"])
    f = Fitter(m, "qem", seed=0)
    list(f.run(1000, until_converged=True))
    r = f.result()
    e = r.latents["effect"]
    assert abs(float(e["mean"]) - effect) < 4 * float(e["sd"]) + 4 * float(e["mcse_mean"])
    assert r.posterior_samples(200)["log_inf"].shape == (200, R, T)


def test_time_series_fields_are_checked():
    def doc(**ts):
        m = ssm([1.0, 2.0])
        d = m.to_dict()
        d["nodes"][0]["timeseries"] = ts
        return d
    with pytest.raises(ModelError, match="field 'timeseries' needs 'init'"):
        Model.from_dict(doc(plate="t"))
    with pytest.raises(ModelError, match="must be the node's own plate 't'"):
        Model.from_dict(doc(plate="s", init=0))
    with pytest.raises(ModelError, match="field 'timeseries': unknown field 'lag'"):
        Model.from_dict(doc(init=0, lag=2))
    m = ssm([1.0, 2.0])
    with pytest.raises(ModelError, match="'prev' names no node or data"):
        m.add_node("z", "latent", "Normal", {"loc": "prev", "scale": 1}, plate="t")
        m.validate()
    m.remove_node("z")
    with pytest.raises(ModelError, match="only a latent can be a time series"):
        bad = m.to_dict()
        bad["nodes"][1]["timeseries"] = {"init": 0}
        Model.from_dict(bad)
    m = Model("w").add_plate("t", 3)
    m.set_data("u", [1.0, 2.0, 3.0])
    with pytest.raises(ModelError, match="'u' lives in plate 't', the plate the series runs along"):
        m.add_node("x", "latent", "Normal", {"loc": "prev", "scale": 1}, plate="t", timeseries={"init": "u"})
        m.validate()
    again = Model.from_dict(ssm([1.0, 2.0], x0=(0, 1)).to_dict())
    assert again.node("x").timeseries == {"init": "x0"} and again.parents("x") == ["x0"]


def test_a_series_plate_is_never_split_to_fit_memory():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 1, (50, 20))
    m = Model("split").add_plate("g", 50).add_plate("t", 20, "g")
    m.add_node("x", "latent", "Normal", {"loc": "prev", "scale": 1.0}, plate="t", timeseries={"init": 0})
    m.add_node("y", "observed", "Normal", {"loc": "x", "scale": 1.0}, plate="t")
    m.set_data("y", y)
    whole = m.compile(10, dtype="float64")
    budget = whole.memory_estimate({"g": 10})
    split = m.compile(10, dtype="float64", memory_budget=budget)
    assert split.split is not None and split.split[0] == "g"
    assert split.sample(0).log_marginal() == pytest.approx(whole.sample(0).log_marginal(), abs=1e-9)


def test_a_series_continued_past_its_end_predicts_like_the_kalman_filter():
    """Trained on 30 steps, scored on the next 10 (the training steps given as null): the
    predictive log-likelihood within 4 of its reported MCSE of the Kalman filter's
    p(y_31..40 | y_1..30); the first new step's prev is the last training step's draw."""
    rng = np.random.default_rng(5)
    T, H = 30, 10
    y = np.cumsum(rng.normal(0, 1, T + H)) + rng.normal(0, 0.5, T + H)
    f = Fitter(ssm(y[:T]), "qem", seed=0)
    list(f.run(1000, until_converged=True))
    future = y.copy()
    future[:T] = np.nan
    p = f.result().predict({"y": future}, draws=400, particles=30)
    exact = ssm_net(y)["log_evidence"] - ssm_net(y[:T])["log_evidence"]
    assert abs(p.log_likelihood - exact) < 4 * p.log_likelihood_mcse
    assert p.posterior_predictive["y"].shape == (400, T + H) and not p.warnings
