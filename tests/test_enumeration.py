"""Discrete latents summed over their support: exact against brute-force enumeration."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.special import betaln, logsumexp

from engine import Model, ModelError, datasets
from engine.fit import Fitter


def mixture(x=(1.4, -0.8, 0.2, 2.1, -1.5, 0.9)):
    """p ~ Beta(2, 2); z_i ~ Bernoulli(p); x_i ~ N(2 z_i - 1, 1), and its exact posterior
    and evidence by summing the 2^n indicator settings with p integrated out."""
    x = np.asarray(x)
    n = len(x)
    m = Model("mix").add_plate("n", n)
    m.add_node("p", "latent", "Beta", {"concentration1": 2, "concentration0": 2})
    m.add_node("z", "latent", "Bernoulli", {"probs": "p"}, plate="n")
    m.add_node("x", "observed", "Normal", {"loc": "2 * z - 1", "scale": 1}, plate="n")
    m.set_data("x", x)
    logw, zs = [], []
    for z in itertools.product([0, 1], repeat=n):
        z = np.array(z)
        s = z.sum()
        logw.append(betaln(2 + s, 2 + n - s) - betaln(2, 2) - 0.5 * ((x - (2 * z - 1)) ** 2).sum()
                    - 0.5 * n * math.log(2 * math.pi))
        zs.append(z)
    logw = np.array(logw)
    w = np.exp(logw - logw.max())
    w /= w.sum()
    return m, (w[:, None] * np.array(zs)).sum(0), float(logsumexp(logw))


def test_bernoulli_latents_are_enumerated_by_default():
    m, _, _ = mixture()
    prog = m.compile(10)
    assert prog.enum == {"z": 2} and prog.sizes["K:z"] == 2 and prog.proposal["z"] is None
    s = prog.sample(0)
    assert torch.equal(s.values["z"].t, torch.tensor([[0.0] * 6, [1.0] * 6]))
    assert m.compile(10, enumeration=False).enum == {}


def test_enumerated_estimator_is_unbiased_and_its_posterior_exact():
    """E[P_MP] over seeds is the evidence (p sampled, z summed); pooled P(z_i = 1) within
    4 MCSE of the exact posterior; and the pooled draws' frequencies agree with it."""
    m, post, log_z = mixture()
    prog = m.compile(5, dtype="float64")
    w = np.exp([prog.sample(i).log_marginal() - log_z for i in range(2000)])
    assert abs(w.mean() - 1) < 4 * w.std() / math.sqrt(len(w))
    f = Fitter(m, "qem", seed=0)
    list(f.run(1000, until_converged=True))
    r = f.result()
    d = r.latents["z"]
    assert np.all(np.abs(d["mean"] - post) < 4 * d["mcse_mean"] + 1e-9)
    draws = r.posterior_samples(4000)["z"]
    assert draws.dtype == np.int64
    se = np.sqrt(post * (1 - post) / 4000)
    assert np.all(np.abs(draws.mean(0) - post) < 4 * se + 4 * d["mcse_mean"])
    assert "low_ess" not in {w["kind"] for w in r.warnings}   # a certain z is no degeneracy


def test_a_hidden_markov_chain_is_exact():
    """A two-state hidden Markov model with every parameter fixed: all latents enumerated,
    so log P_MP is the forward algorithm's log-likelihood exactly, and the weights are
    the smoothed state probabilities of forward-backward."""
    rng = np.random.default_rng(0)
    T = 40
    stay, leave, start = 0.9, 0.2, 0.5      # P(z_t = 1 | z_{t-1} = 1), P(z_t = 1 | z_{t-1} = 0), P(z_0 = 1)
    z = [rng.random() < start]
    for _ in range(T - 1):
        z.append(rng.random() < (stay if z[-1] else leave))
    y = 2.0 * np.array(z) - 1 + rng.normal(0, 1, T)
    m = Model("hmm").add_plate("t", T)
    m.add_node("z", "latent", "Bernoulli", {"probs": f"{stay} * prev + {leave} * (1 - prev)"}, plate="t",
               timeseries={"init": 0.5 / (stay - leave) - leave / (stay - leave)})   # prev at t = 0 gives P = 0.5
    m.add_node("y", "observed", "Normal", {"loc": "2 * z - 1", "scale": 1}, plate="t")
    m.set_data("y", y)
    s = m.sample(K=7, seed=3, dtype="float64")
    A = np.array([[1 - leave, leave], [1 - stay, stay]])     # A[from, to]
    lik = np.exp(-0.5 * (y[:, None] - np.array([-1.0, 1.0])) ** 2) / math.sqrt(2 * math.pi)
    alpha, log_lik, alphas = np.array([0.5, 0.5]) * lik[0], 0.0, []
    for t in range(T):
        if t:
            alpha = (alpha @ A) * lik[t]
        c = alpha.sum()
        log_lik += math.log(c)
        alpha /= c
        alphas.append(alpha)
    beta, smoothed = np.ones(2), [None] * T
    for t in range(T - 1, -1, -1):
        g = alphas[t] * beta
        smoothed[t] = g / g.sum()
        beta = A @ (lik[t] * beta)
        beta /= beta.sum()
    assert s.log_marginal() == pytest.approx(log_lik, abs=1e-9)
    w = s.marginal_weights("z").numpy()
    assert np.allclose(w[1], np.array(smoothed)[:, 1], atol=1e-9)


def test_occupancy_runs_vi_once_its_indicator_is_enumerated():
    f = Fitter(datasets.load("occupancy"), "vi", K=10, seed=0, lr=0.05)
    list(f.run(5))
    assert np.isfinite(f.history["elbo"]).all()


def test_the_enumerate_field():
    m, _, _ = mixture()
    m.update_node("z", enumerate=False)
    assert m.compile(5).enum == {}
    assert Model.from_dict(m.to_dict()).node("z").enumerate is False
    with pytest.raises(ModelError, match="only a scalar Bernoulli, Categorical, Binomial latent can be enumerated"):
        m.update_node("p", enumerate=True)
    with pytest.raises(ModelError, match="field 'enumerate' must be true or false"):
        m.update_node("z", enumerate="yes")
    big = Model("big").add_plate("n", 3)
    big.add_node("k", "latent", "Binomial", {"total_count": 40, "probs": 0.3}, plate="n")
    assert big.compile(5).enum == {}                      # 41 values: sampled by default ...
    big.update_node("k", enumerate=True)
    assert big.compile(5).enum == {"k": 41}               # ... and summed when asked
    cat = Model("cat").add_plate("n", 2)
    cat.add_node("w", "latent", "Dirichlet", {"concentration": [1.0, 1.0, 1.0]})
    cat.add_node("c", "latent", "Categorical", {"probs": "w"}, plate="n")
    assert cat.compile(5).enum == {"c": 3}                # its number of categories from a dry run


def test_a_site_step_summed_as_it_goes_matches_the_step_held_whole(monkeypatch):
    """Occupancy's z (enumerated) summed per site with its detections, the sites summed as
    it goes (log_matmul, never holding the (alpha, beta, year) x sites result) against the
    same plan with that step held whole: the same log P_MP and every latent's weights."""
    from benchmarks.paper import occupancy
    from engine import contract
    model = occupancy(species=2, years=3, sites=40, replicates=3, seed=1)

    def run():
        prog = model.compile(5, dtype="float64", device="cpu")
        s = prog.sample(0)
        return prog, s.log_marginal(), {n: s.marginal_weights(n) for n in prog.latents}
    prog, log_p, weights = run()
    summed = [st["summed_over"] for d in prog.plan.describe() for st in d["steps"] if st["summed_over"]]
    assert summed == ["sites"]
    monkeypatch.setattr(contract, "summed_step_layout", lambda *a: None)
    whole, log_p_whole, weights_whole = run()
    assert not any(st["summed_over"] for d in whole.plan.describe() for st in d["steps"])
    assert whole.memory_estimate() > prog.memory_estimate()
    assert log_p == pytest.approx(log_p_whole, rel=0, abs=1e-9)
    for n in weights:
        torch.testing.assert_close(weights[n], weights_whole[n], rtol=1e-9, atol=1e-12)
