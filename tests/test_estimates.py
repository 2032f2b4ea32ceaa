"""Final estimates: pooled MP samples with their Monte Carlo error, stable float32 moments,
warnings, the defaults, and a summary table that cannot contradict itself."""
import json
import math

import numpy as np
import pytest
import torch

from engine import Model, ModelError, datasets
from engine.cli import main as kn
from engine.diagnostics import converged, pareto_khat
from engine.fit import Fitter, choose_K
from engine.proposal import FAMILIES, NormalQ, Proposal


def fitted(model, seed, **kw):
    """What `kn fit MODEL` does: QEM at the default K until converged, then pooled estimates."""
    f = Fitter(model, "qem", seed=seed)
    for _ in f.run(1000, until_converged=True):
        pass
    return f.result(**kw)


def zscores(results, exact):
    """(mean - exact) / reported MCSE for every latent element of every result."""
    z = []
    for r in results:
        for name, d in r.latents.items():
            z.append(((d["mean"] - exact[name]["mean"]) / d["mcse_mean"]).ravel())
    return np.concatenate(z)


@pytest.mark.parametrize("name", ["hierarchical_gaussian", "eight_schools_centered"])
def test_pooled_means_are_within_their_reported_mcse(name):
    """Over 8 fitting seeds at default settings: |mean - exact| within 4 reported MCSE for
    at least 95% of the elements, and the reported MCSE within a factor 2 of the spread it
    claims (the z-scores' root mean square between 1/2 and 2: for 8 x 10 z-scores, most of
    them correlated within a seed, its own sampling error is well inside that)."""
    m = datasets.load(name)
    exact = datasets.exact_posterior(m)["latents"] if name == "hierarchical_gaussian" \
        else datasets.reference(name)["latents"]
    results = [fitted(m, seed) for seed in range(8)]
    z = zscores(results, exact)
    assert np.mean(np.abs(z) < 4) >= 0.95, np.round(z, 1)
    rms = float(np.sqrt(np.mean(z ** 2)))
    assert 0.5 < rms < 2, rms
    for r in results:
        assert r.n_samples >= 16 and r.worst_mcse_ratio() <= 0.1 or r.n_samples == 64


# ---- numerically stable moments ------------------------------------------------------------
def big_mean_model(ratio=1000.0, n=100):
    """mu ~ N(0, 1e3); x_i ~ N(mu, 1): the posterior mean is `ratio` times its sd 1/sqrt(n)."""
    rng = np.random.default_rng(3)
    x = ratio / math.sqrt(n) + rng.normal(0, 1, n)
    m = Model("big_mean").add_plate("obs", n)
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1e3})
    m.add_node("x", "observed", "Normal", {"loc": "mu", "scale": 1}, plate="obs")
    m.set_data("x", x)
    prior_prec = 1e-6
    post_sd = 1 / math.sqrt(n + prior_prec)
    return m, float(x.sum() / (n + prior_prec)), post_sd


def test_float32_sd_of_a_latent_whose_mean_is_1000_sds():
    """A Q near the posterior, K=2000 in float32: the sd to a few percent (its MC error with
    ESS ~ 1500 is about 1 / sqrt(2 ESS) = 2%; 4.5 of those). E[x^2] - E[x]^2 with float32
    weights summing to 1 only to ~1e-5 would give 0 or several times the truth here."""
    m, mean, sd = big_mean_model()
    q = NormalQ({"loc": torch.tensor(mean + 0.3 * sd), "log_scale": torch.tensor(math.log(1.3 * sd))}, ())
    s = m.sample(K=2000, seed=0, proposal=Proposal({"mu": q}))
    ess = float(s.ess("mu"))
    assert ess > 1000
    assert float(s.sd("mu")) == pytest.approx(sd, rel=4.5 / math.sqrt(2 * ess))
    assert float(s.mean("mu")) == pytest.approx(mean, abs=4.5 * sd / math.sqrt(ess))


def test_qem_gets_the_scale_of_a_latent_whose_mean_is_1000_sds():
    """From a prior 10 000 times wider than the posterior: QEM's average forgets its start
    (weight about exp(-2.5 t^0.4) after t iterations) by iteration ~150."""
    m, mean, sd = big_mean_model()
    f = Fitter(m, "qem", K=10, seed=0)
    list(f.run(300))
    p = f.proposal["mu"].params()
    assert float(p["scale"]) == pytest.approx(sd, rel=0.3)
    assert abs(float(p["loc"]) - mean) < 0.5 * sd


def test_qem_gamma_q_of_a_narrow_scale():
    """sigma's posterior mean is ~50 times its sd (10 000 observations): QEM's Gamma Q
    lands on that sd (it shrank to a tenth of it when float32 weights did not sum to 1)."""
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.0, 10_000)
    m = Model("scale").add_plate("obs", len(x))
    m.add_node("sigma", "latent", "HalfNormal", {"scale": 5})
    m.add_node("x", "observed", "Normal", {"loc": 0, "scale": "sigma"}, plate="obs")
    m.set_data("x", x)
    # the posterior of sigma: sqrt(sum x^2 / n) with sd ~ sigma / sqrt(2n)
    post_mean, post_sd = math.sqrt((x ** 2).mean()), math.sqrt((x ** 2).mean()) / math.sqrt(2 * len(x))
    f = Fitter(m, "qem", K=10, seed=0)
    list(f.run(300))
    q = f.proposal["sigma"]
    assert q.name == "Gamma"
    p = q.params()
    qsd = float(torch.sqrt(p["concentration"]) / p["rate"])
    assert qsd == pytest.approx(post_sd, rel=0.35)
    assert abs(float(p["concentration"] / p["rate"]) - post_mean) < 0.5 * post_sd


def test_weights_sum_to_one_when_log_p_is_minus_1e5_in_float32():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (50, 400)) * 0.1 + rng.normal(0, 1, (50, 1))
    m = Model("huge").add_plate("g", 50).add_plate("n", 400, "g")
    m.add_node("z", "latent", "Normal", {"loc": 0, "scale": 1}, plate="g")
    m.add_node("x", "observed", "Normal", {"loc": "z", "scale": 0.01}, plate="n")
    m.set_data("x", x)
    s = m.sample(K=10, seed=0)
    assert s.log_marginal() < -1e5
    w = s.marginal_weights("z")
    assert w.dtype == torch.float64
    assert torch.allclose(w.sum(0), torch.ones(50, dtype=torch.float64), atol=1e-12)
    assert bool((s.ess("z") >= 1 - 1e-9).all())


# ---- the starting Q --------------------------------------------------------------------------
def test_model_file_sets_the_starting_q(tmp_path):
    doc = datasets.load("hierarchical_gaussian").to_dict()
    doc["proposal"] = {"z": {"dist": "Normal", "init": {"loc": 0.5, "scale": 2}}, "mu": {"init": {"loc": 1.0}}}
    with pytest.raises(ModelError, match="proposal for 'mu', field 'init': Normal needs 'scale'"):
        Fitter(Model.from_dict(doc), "qem", K=5)
    doc["proposal"]["mu"] = {"init": {"loc": [1.0, 2.0], "scale": 1}}
    with pytest.raises(ModelError, match="'loc' must be a number or a list that broadcasts to the latent's shape"):
        Fitter(Model.from_dict(doc), "qem", K=5)
    doc["proposal"]["mu"] = {"init": {"loc": 1.0, "scale": -1}}
    with pytest.raises(ModelError, match="'scale' must be positive"):
        Fitter(Model.from_dict(doc), "qem", K=5)
    doc["proposal"]["mu"] = {"init": {"loc": 1.0, "rate": 1}}
    with pytest.raises(ModelError, match="Normal has no parameter 'rate'"):
        Fitter(Model.from_dict(doc), "qem", K=5)
    del doc["proposal"]["mu"]
    m = Model.from_dict(doc)
    assert Model.from_dict(m.to_dict()).proposal == doc["proposal"]   # round-trips
    f = Fitter(m, "qem", K=5)
    p = f.proposal["z"].params()
    assert torch.allclose(p["loc"], torch.full((10,), 0.5)) and torch.allclose(p["scale"], torch.full((10,), 2.0))
    assert torch.allclose(f.proposal["z"].initial_moments[1], torch.full((10,), 4.25, dtype=torch.float64))


def test_heavy_tailed_prior_gets_a_starting_q_of_usable_scale():
    """A Cauchy prior: moment-matching raw prior draws gives a Q sd in the hundreds (one
    draw in a thousand lies past 300); winsorised draws give one of the prior's own
    scale, and QEM goes on to the quadrature posterior."""
    y = np.array([2.1, 1.4, 2.8, 1.9, 2.4])
    m = Model("cauchy").add_plate("obs", len(y))
    m.add_node("z", "latent", "StudentT", {"df": 1, "loc": 0, "scale": 1})
    m.add_node("y", "observed", "Normal", {"loc": "z", "scale": 1}, plate="obs")
    m.set_data("y", y)
    f = Fitter(m, "qem", K=10, seed=0)
    assert float(f.proposal["z"].params()["scale"]) < 10
    r = fitted(m, 0)
    grid = np.linspace(-20, 20, 40001)
    logp = -np.log1p(grid ** 2) - 0.5 * ((y[:, None] - grid) ** 2).sum(0)
    p = np.exp(logp - logp.max())
    mean = (grid * p).sum() / p.sum()
    assert abs(float(r.latents["z"]["mean"]) - mean) < 4 * float(r.latents["z"]["mcse_mean"])


def test_vector_normal_latents_get_a_multivariate_normal_q():
    doc = datasets.load("seeds").to_dict()
    doc.pop("proposal")
    f = Fitter(Model.from_dict(doc), "qem", K=5)
    assert f.proposal["alpha"].name == "MultivariateNormal"
    assert f.proposal["b"].name == "Normal"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_expected_stats_match_the_family(name):
    """The moments a model file's "init" starts QEM from are the family's own: E[stats]
    computed in closed form against 200 000 draws."""
    torch.manual_seed(0)
    cls = FAMILIES[name]
    params = {"Normal": {"loc": 0.5, "scale": 2.0}, "LogNormal": {"loc": 0.1, "scale": 0.5},
              "Gamma": {"concentration": 3.0, "rate": 2.0}, "InverseGamma": {"concentration": 4.0, "rate": 2.0},
              "Exponential": {"rate": 0.5}, "Beta": {"concentration1": 2.0, "concentration0": 5.0},
              "Dirichlet": {"concentration": [1.0, 2.0, 4.0]}, "Bernoulli": {"probs": 0.3},
              "Categorical": {"probs": [0.2, 0.5, 0.3]}, "Poisson": {"rate": 4.0},
              "MultivariateNormal": {"loc": [0.0, 1.0], "covariance_matrix": [[1.0, 0.5], [0.5, 2.0]]}}[name]
    p = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    event = (3,) if name == "Dirichlet" else (2,) if name == "MultivariateNormal" else ()
    f = cls({}, event)
    exact = f.expected_stats(p)
    import torch.distributions as D
    dist = {"Normal": D.Normal, "LogNormal": D.LogNormal, "Gamma": D.Gamma, "InverseGamma": D.InverseGamma,
            "Exponential": D.Exponential, "Beta": D.Beta, "Dirichlet": D.Dirichlet, "Bernoulli": D.Bernoulli,
            "Categorical": D.Categorical, "Poisson": D.Poisson, "MultivariateNormal": D.MultivariateNormal}[name](**p)
    if name == "Categorical":
        f.raw = {"logits": torch.zeros(3, dtype=torch.float64)}
    x = dist.sample((200_000,))
    for e, s in zip(exact, f.stats(x)):
        se = s.std(0) / math.sqrt(len(x))
        assert torch.all((s.mean(0) - e).abs() < 5 * se + 1e-9), (name, e, s.mean(0))


# ---- warnings and the table --------------------------------------------------------------------
def test_importance_sampling_on_radon_warns_where_the_user_looks(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert kn(["fit", str(datasets.gallery()["radon"]), "--method", "is", "--K", "10", "--max-samples", "16",
               "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    doc = json.loads(out.read_text())
    kinds = {w["kind"]: w for w in doc["warnings"]}
    assert "low_ess" in kinds and set(kinds["low_ess"]["latents"]) >= {"g0", "g1", "b", "sigma_a", "sigma_y"}
    assert "QEM" in kinds["low_ess"]["message"] and "warning (low_ess)" in printed
    assert doc["n_samples"] == 16 and doc["latents"]["a"]["mcse_mean"] is not None


def test_the_summary_table_never_contradicts_itself():
    """Degenerate runs (IS on radon: one particle per sample; global IS on eight schools)
    and a healthy one: no element's interval excludes its mean, and no zero-width interval
    stands beside a positive sd (where weights are that degenerate, no interval is given)."""
    runs = [Fitter(datasets.load("radon"), "is", K=10, seed=0).result(max_samples=16),
            Fitter(datasets.load("eight_schools_centered"), "global", K=300, seed=0).result(max_samples=8),
            fitted(datasets.load("eight_schools_noncentered"), 0)]
    for r in runs:
        rows = r.summary()
        assert len(rows) == sum(max(1, d["mean"].size) for d in r.latents.values())
        with_hdi = [row for row in rows if row["hdi_3%"] is not None]
        for row in with_hdi:
            assert row["hdi_3%"] <= row["mean"] <= row["hdi_97%"], row
            assert row["hdi_97%"] > row["hdi_3%"] or row["sd"] == 0, row
            assert row["ess"] >= 10
        if r.method == "qem":
            assert len(with_hdi) == len(rows)
    assert any(row["hdi_3%"] is None for row in runs[0].summary())   # radon's IS is degenerate
    assert "pareto_k" in {w["kind"] for w in runs[1].warnings}
    assert runs[1].to_arviz(draws=100).posterior.attrs["method"] == "global"


def test_discrete_draws_are_integers_and_global_latents_have_many_values():
    r = fitted(datasets.load("occupancy"), 0)
    post = r.posterior_samples(500)
    assert post["z"].dtype == np.int64 and set(np.unique(post["z"])) <= {0, 1}
    assert len(np.unique(post["psi"])) > 3 * r.K       # pooled: not one sample's K values


def test_pareto_khat_against_arviz_and_known_tails():
    import arviz as az
    rng = np.random.default_rng(0)
    for k in (0.2, 0.5, 0.9):
        lw = np.log(rng.pareto(1 / k, 4000) + 1)      # tail index 1/k: the shape is k
        _, az_k = az.psislw(lw.copy())
        assert pareto_khat(lw) == pytest.approx(float(az_k), abs=0.02)
        assert pareto_khat(lw) == pytest.approx(k, abs=0.15)


def test_samples_tail_is_judged_only_where_their_weights_differ():
    """Near-equal P_MP (log sd 0.05, 64 samples) sometimes fit a k-hat above 0.7 (ArviZ's
    too): no heavy-tail verdict there. A real tail of shape 0.9 spreads log P_MP by more
    than KHAT_MIN_SPREAD and is judged."""
    from engine.result import KHAT_LIMIT, KHAT_MIN_SPREAD, Result
    rng = np.random.default_rng(3)

    def judged(log_p):
        r = Result.__new__(Result)
        r.n_samples, r.samples_khat, r.samples_log_sd = len(log_p), pareto_khat(log_p), float(np.std(log_p, ddof=1))
        return r.samples_khat > KHAT_LIMIT, r._heavy_tailed()
    flat = [judged(rng.normal(0, 0.05, 64)) for _ in range(300)]
    assert any(k for k, _ in flat) and not any(h for _, h in flat)
    tails = [judged(np.log(rng.pareto(1 / 0.9, 64) + 1)) for _ in range(300)]
    assert all(h for k, h in tails if k)              # every high k-hat of a real tail still counts
    assert np.mean([np.std(np.log(rng.pareto(1 / 0.9, 64) + 1), ddof=1) >= KHAT_MIN_SPREAD
                    for _ in range(300)]) > 0.99


def test_convergence_criterion():
    rng = np.random.default_rng(0)
    flat = rng.normal(-100, 1, 200)
    rising = flat + np.linspace(0, 10, 200)
    assert converged(flat) and not converged(rising)
    assert not converged(flat[:40])                  # too short to judge
    ar = np.zeros(200)                               # an autocorrelated flat series is still flat
    for t in range(1, 200):
        ar[t] = 0.5 * ar[t - 1] + rng.normal()
    assert converged(ar - 100)
    slow = flat + np.linspace(0, 3, 200)             # a rise of 0.4 sd per window: still going
    assert not converged(slow)


def test_fitting_stops_when_converged_and_caps_at_iters():
    m = datasets.load("hierarchical_gaussian")
    f = Fitter(m, "qem", K=10, seed=0)
    steps = list(f.run(1000, until_converged=True))
    assert 50 <= len(steps) < 1000 and steps[-1].converged and not steps[-2].converged
    vi = Fitter(m, "vi", K=10, seed=0, lr=0.03)     # VI's windows are 100 iterations: too few to judge at 60
    steps = list(vi.run(60, until_converged=True))
    assert len(steps) == 60 and not steps[-1].converged
    assert "not_converged" in {w["kind"] for w in vi.result(max_samples=4).warnings}


def test_qem_schedule_from_the_model_file_and_the_cli(tmp_path, capsys):
    doc = datasets.load("hierarchical_gaussian").to_dict()
    doc["qem"] = {"power": 1.5}
    with pytest.raises(ModelError, match="'power' must be a number in"):
        Model.from_dict(doc)
    doc["qem"] = {"power": 1.0, "offset": 1}
    m = Model.from_dict(doc)
    assert Model.from_dict(m.to_dict()).qem == {"power": 1.0, "offset": 1}
    f = Fitter(m, "qem", K=10, seed=0)
    assert f.schedule == {"power": 1.0, "offset": 1.0}
    list(f.run(1))    # power 1, offset 1: the first step's weight is (0 + 1)^-1 = 1, a plain replacement
    s = f.last_sample
    w, x = s.marginal_weights("z"), s.particles("z")
    assert torch.allclose(f.moments["z"][0], (w * x).sum(0))
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    assert kn(["fit", str(path), "--iters", "60", "--qem-power", "0.7", "--max-samples", "4", "--quiet"]) == 0
    assert "mcse_mean" in capsys.readouterr().out


def test_cli_defaults_and_auto_K(tmp_path):
    assert choose_K(datasets.load("eight_schools_centered")) == 30
    assert choose_K(datasets.load("radon")) == 10          # its county factor holds six K-dims
    out = tmp_path / "r.json"
    assert kn(["fit", str(datasets.gallery()["hierarchical_gaussian"]), "--out", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["method"] == "qem" and doc["K"] == 30 and len(doc["history"]["elbo"]) < 1000
    z = doc["latents"]["z"]
    assert set(z) >= {"mean", "sd", "mcse_mean", "mcse_sd", "ess", "n_samples"} and len(z["mcse_mean"]) == 10


# ---- defaults land the gallery on its references --------------------------------------------
REFERENCED = ["hierarchical_gaussian", "eight_schools_centered", "eight_schools_noncentered", "radon", "seeds",
              "occupancy", "nile"]


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCED)
def test_default_settings_land_the_gallery_on_its_references(name, tmp_path):
    """`kn fit MODEL` with no flags: every mean within 0.2 posterior sd of the reference
    and every sd within 20%, each allowing for two of the estimate's own reported MCSE."""
    assert set(REFERENCED) == set(datasets.gallery())
    out = tmp_path / "r.json"
    assert kn(["fit", str(datasets.gallery()[name]), "--out", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    m = datasets.load(name)
    ref = datasets.exact_posterior(m)["latents"] if name == "hierarchical_gaussian" \
        else datasets.reference(name)["latents"]
    for latent, d in doc["latents"].items():
        mean, sd = np.asarray(d["mean"]), np.asarray(d["sd"])
        r_mean, r_sd = np.asarray(ref[latent]["mean"]), np.asarray(ref[latent]["sd"])
        if m.node(latent).dist == "Bernoulli":       # P(z = 1): sd 0 where certain
            assert np.all(np.abs(mean - r_mean) < 0.05 + 2 * np.asarray(d["mcse_mean"])), latent
            continue
        err = np.abs(mean - r_mean) - 2 * np.asarray(d["mcse_mean"])
        assert np.all(err < 0.2 * r_sd), f"{latent}: mean errors {np.round(np.abs(mean - r_mean) / r_sd, 2)} sd"
        rel = np.abs(sd - r_sd) - 2 * np.asarray(d["mcse_sd"])
        assert np.all(rel < 0.2 * r_sd), f"{latent}: sd errors {np.round(np.abs(sd / r_sd - 1), 2)}"
