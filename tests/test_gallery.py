"""The example gallery: every model loads and runs, its data are the published numbers,
the closed-form posterior is right, and QEM recovers the stored reference posteriors."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import Model, ModelError, datasets
from engine.cli import main as kn
from engine.fit import Fitter
from exact import gaussian_network, hierarchy_net   # tests/exact.py: closed forms

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "assets"))
import make_models  # noqa: E402

GALLERY = ["radon", "hierarchical_gaussian", "eight_schools_centered", "eight_schools_noncentered", "seeds",
           "occupancy", "nile"]


def test_gallery_lists_the_models():
    assert set(GALLERY) <= set(datasets.gallery())


@pytest.mark.parametrize("name", GALLERY)
def test_model_loads_and_samples(name):
    m = Model.load(ROOT / "assets" / "models" / f"{name}.json")
    assert m.name == name and m.description
    s = m.sample(K=3, seed=0)
    assert np.isfinite(s.log_marginal())
    for latent in m.latents:
        w = s.marginal_weights(latent)
        assert np.allclose(w.sum(0).numpy(), 1, atol=1e-4)


@pytest.mark.parametrize("name", GALLERY)
def test_files_are_what_make_models_writes(name):
    made = {doc["name"]: doc for doc in (make_models.with_exact(make()) for make in make_models.MODELS)}
    on_disk = json.loads((ROOT / "assets" / "models" / f"{name}.json").read_text())
    assert made[name] == on_disk


def test_node_names_kept():
    assert Model.load(ROOT / "assets/models/radon.json").latents == ["g0", "g1", "b", "sigma_a", "sigma_y", "a"]
    assert Model.load(ROOT / "assets/models/hierarchical_gaussian.json").latents == ["mu", "z"]


def test_published_data():
    es = datasets.load("eight_schools_centered")
    assert es.data["y"].tolist() == [28, 8, -3, 7, -1, 1, 18, 12]            # BDA 5.5
    assert es.data["sigma"].tolist() == [15, 10, 16, 11, 9, 11, 10, 18]
    assert np.array_equal(datasets.load("eight_schools_noncentered").data["y"], es.data["y"])
    sd = datasets.load("seeds").data                                     # BUGS Vol. I "Seeds"
    assert sd["r"].tolist() == [10, 23, 23, 26, 17, 5, 53, 55, 32, 46, 10, 8, 10, 8, 23, 0, 3, 22, 15, 32, 3]
    assert sd["n"].tolist() == [39, 62, 81, 51, 39, 6, 74, 72, 51, 79, 13, 16, 30, 28, 45, 4, 12, 41, 30, 51, 7]
    assert sd["x1"].tolist() == [0] * 11 + [1] * 10
    assert sd["x2"].tolist() == [0] * 5 + [1] * 6 + [0] * 5 + [1] * 5
    assert np.array_equal(sd["X"], np.stack([np.ones(21), sd["x1"], sd["x2"], sd["x1"] * sd["x2"]], 1))
    rd = datasets.load("radon").data                                     # Gelman & Hill: 919 houses, 85 counties
    y = rd["y"]
    assert y.shape[0] == 85 and np.isfinite(y).sum() == 919 and np.isfinite(y).any(1).all()
    assert abs(np.nanmean(y) - 1.2246) < 1e-3


def test_gallery_models_fit_from_the_command_line(tmp_path, capsys):
    for name in GALLERY:
        out = tmp_path / f"{name}.json"
        K = "3" if name == "radon" else "5"
        assert kn(["fit", str(ROOT / "assets/models" / f"{name}.json"), "--method", "qem", "--K", K, "--iters", "2",
                   "--quiet", "--device", "cpu", "--out", str(out)]) == 0
        assert json.loads(out.read_text())["model"] == name


# ---- the closed-form posterior -------------------------------------------------------------------------
def test_exact_posterior_against_a_dense_gaussian_network():
    m = datasets.hierarchical_gaussian(groups=4, per_group=3, seed=5)
    m.data["x"][1, 2] = np.nan           # a missing observation
    m.update_node("mu", args={"loc": 0.5, "scale": 2.0})
    m.update_node("z", args={"loc": "mu", "scale": 0.7})
    m.update_node("x", args={"loc": "z", "scale": 1.3})
    net = hierarchy_net(m.data["x"], m0=0.5, s0=2.0, tau=0.7, sigma=1.3)
    want = gaussian_network(net)
    got = datasets.exact_posterior(m)
    assert got["latents"]["mu"]["mean"] == pytest.approx(want["mean"]["mu"], abs=1e-10)
    assert got["latents"]["mu"]["sd"] == pytest.approx(np.sqrt(want["var"]["mu"]), abs=1e-10)
    zm = [want["mean"][f"z{g}"] for g in range(4)]
    zs = [np.sqrt(want["var"][f"z{g}"]) for g in range(4)]
    assert np.allclose(got["latents"]["z"]["mean"], zm, atol=1e-10)
    assert np.allclose(got["latents"]["z"]["sd"], zs, atol=1e-10)
    assert got["log_evidence"] == pytest.approx(want["log_evidence"], abs=1e-9)
    # KL(N(m1, S1) || prior) by the textbook formula on the dense matrices
    prior = gaussian_network([v[:4] + (None,) for v in net if v[0][0] != "x"])
    S0, S1 = prior["cov"], want["cov"]
    d = np.array([want["mean"][n] - prior["mean"][n] for n in want["names"]])
    kl = 0.5 * (np.trace(np.linalg.solve(S0, S1)) + d @ np.linalg.solve(S0, d) - len(d)
                + np.linalg.slogdet(S0)[1] - np.linalg.slogdet(S1)[1])
    assert got["kl_prior"] == pytest.approx(kl, rel=1e-9)


def test_exact_specs_and_the_shipped_file():
    m = datasets.load("hierarchical_gaussian")
    assert np.array_equal(datasets.hierarchical_gaussian().data["x"], m.data["x"])
    specs = datasets.exact_specs(m)
    post = datasets.exact_posterior(m)["latents"]
    assert set(specs) == {"mu", *[f"z[{g}]" for g in range(10)]}
    assert specs["z[3]"]["args"]["loc"] == pytest.approx(post["z"]["mean"][3])
    assert specs["mu"]["dist"] == "Normal" and specs["mu"]["args"]["scale"] == pytest.approx(post["mu"]["sd"])


def test_exact_fields_of_the_model_files():
    for name in ("hierarchical_gaussian", "eight_schools_centered", "eight_schools_noncentered", "occupancy"):
        m = datasets.load(name)
        exact = m.extras["exact"]
        ref = datasets.reference(name)
        # the conjugate one against the dense network solution, not the code that wrote it
        want = gaussian_network(hierarchy_net(m.data["x"]))["log_evidence"] if ref is None else ref["log_evidence"]
        assert exact["@log_evidence"] == pytest.approx(want, abs=1e-5)
        for latent, spec in exact.items():
            if latent.startswith("@") or "x" not in spec:
                continue
            x, pdf = np.array(spec["x"]), np.array(spec["pdf"])
            mass = np.trapezoid(pdf, x)
            assert 0.99 < mass < 1.001                       # plotting grids hold nearly all the mass
            mean = np.trapezoid(pdf * x, x) / mass
            assert abs(mean - ref["latents"][latent]["mean"]) < 0.05 * ref["latents"][latent]["sd"]
    hg = datasets.load("hierarchical_gaussian")
    assert hg.extras["exact"]["z[4]"]["args"]["loc"] == pytest.approx(
        gaussian_network(hierarchy_net(hg.data["x"]))["mean"]["z4"], abs=1e-6)


def test_exact_posterior_refuses_other_models():
    with pytest.raises(ModelError, match="closed form"):
        datasets.exact_posterior(datasets.load("radon"))
    with pytest.raises(ModelError, match="closed form"):
        datasets.exact_posterior(datasets.load("eight_schools_centered"))


# ---- stored references -----------------------------------------------------------------------------
REFERENCED = ["eight_schools_centered", "eight_schools_noncentered", "radon", "seeds", "occupancy", "nile"]


@pytest.mark.parametrize("name", REFERENCED)
def test_reference_fits_its_model(name):
    m = datasets.load(name)
    ref = datasets.reference(name)
    assert ref["script"] == "assets/reference/make_reference.py" and ref["method"]
    assert set(ref["latents"]) == set(m.latents)
    for latent, d in ref["latents"].items():
        node = m.node(latent)
        shape = tuple(m.plates[p].size for p in m.chain(node.plate)) + tuple(node.shape or ())
        assert np.shape(d["mean"]) == shape and np.shape(d["sd"]) == shape
        assert np.all(np.asarray(d["sd"]) >= 0)
        if "mcse" in d:   # NUTS: Monte Carlo error far below the tolerances used below
            assert np.all(np.asarray(d["mcse"]) < 0.02 * np.maximum(np.asarray(d["sd"]), 1e-3))


def test_eight_schools_reference_matches_the_literature():
    # (make_reference.py writes the centred and non-centred files from one computation)
    c = datasets.reference("eight_schools_centered")
    # mu ~ N(0, 5), tau ~ HalfCauchy(5): E[mu | y] ~ 4.4, E[tau | y] ~ 3.6 (e.g. the ArviZ example posterior)
    assert abs(c["latents"]["mu"]["mean"] - 4.4) < 0.05 and abs(c["latents"]["tau"]["mean"] - 3.6) < 0.05


# ---- QEM against the references ------------------------------------------------------------------------
def qem_estimate(model, K, iters, K_result, n_results, seed=0):
    """QEM for `iters` iterations, then MP importance weighting with the learned Q at
    K_result particles, averaged over n_results fresh samples: {latent: (mean, sd)}."""
    f = Fitter(model, "qem", K=K, seed=seed, device="cpu")
    for _ in f.run(iters):
        pass
    acc = {}
    for r in range(n_results):
        res = f.result(K=K_result, seed=1000 * seed + r)
        for n, d in res.latents.items():
            acc.setdefault(n, []).append((d["mean"], d["sd"]))
    return {n: (np.mean([a for a, _ in v], 0), np.mean([b for _, b in v], 0)) for n, v in acc.items()}


# Tolerances, in posterior sds for means and relative for sds, come from the spread of
# these very estimates over fitting seeds 0-7 (measured once with this procedure): about
# the largest bias (the mean error over seeds: finite K, e.g. sds a little small where a
# funnel meets a mean-field Q) plus 3-3.5 times the largest seed-to-seed sd of the error.
# The references' own errors (NUTS MCSE < 1% of a posterior sd; quadrature far smaller)
# do not matter at this scale.
CASES = {
    # means: bias <= 0.07, seed sd <= 0.09 (max |error| 0.14); sds: bias <= 0.05, seed sd <= 0.07
    "eight_schools_noncentered": dict(K=10, iters=100, K_result=100, n_results=3, tol_mean=0.35, tol_sd=0.3),
    # K=10 is not enough for the centred funnel (errors of 2 sds and more at some seeds). K=30:
    # means: bias <= 0.09, seed sd <= 0.12 (max 0.26); sds: bias <= 0.13 (small), seed sd <= 0.11
    "eight_schools_centered": dict(K=30, iters=100, K_result=100, n_results=3, tol_mean=0.5, tol_sd=0.45),
    # K_result=300 (cheap here) matters: at 100 the seed sd of b's and sigma's means is 0.25.
    # means: bias <= 0.05, seed sd <= 0.11 (max 0.23); sds: bias <= 0.10, seed sd <= 0.11 (max 0.35)
    # (before the engine's QEM started its EMA at the initial Q; now 0.05, 0.09, 0.18 and 0.10, 0.10, 0.20)
    "seeds": dict(K=50, iters=100, K_result=300, n_results=4, tol_mean=0.45, tol_sd=0.45),
    # means: bias <= 0.04, seed sd <= 0.08 (max 0.15); sds: bias <= 0.01, seed sd <= 0.03;
    # P(z_i = 1): bias <= 0.02, seed sd <= 0.03 (max |error| 0.07)
    "occupancy": dict(K=10, iters=100, K_result=100, n_results=3, tol_mean=0.35, tol_sd=0.15, tol_prob=0.12),
}


@pytest.mark.parametrize("name", list(CASES))
def test_qem_matches_reference(name):
    c = CASES[name]
    m = datasets.load(name)
    ref = datasets.reference(name)["latents"]
    est = qem_estimate(m, c["K"], c["iters"], c["K_result"], c["n_results"])
    for latent, (mean, sd) in est.items():
        r_mean, r_sd = np.asarray(ref[latent]["mean"]), np.asarray(ref[latent]["sd"])
        if m.node(latent).dist == "Bernoulli":      # P(z = 1): absolute error (sd is 0 where certain)
            assert np.abs(mean - r_mean).max() < c["tol_prob"], (latent, mean, r_mean)
            continue
        err = np.abs(mean - r_mean) / r_sd
        assert err.max() < c["tol_mean"], f"{latent}: mean errors {np.round(err, 2)} posterior sds"
        rel = np.abs(sd / r_sd - 1)
        assert rel.max() < c["tol_sd"], f"{latent}: relative sd errors {np.round(rel, 2)}"


@pytest.mark.slow      # 8-20 s on a 2-core CPU; deselect with -m "not slow"
def test_qem_matches_reference_radon():
    """Radon (90 latent variables): QEM at K=10 settles within ~30 iterations; the final MP
    estimate is at K=10 too (K=30 would need a 2e9-element intermediate), which leaves a
    finite-K bias: sds of g0, b and sigma_a come out ~40% small. Measured over fitting seeds
    0-5 with these settings: mean errors of the 90 elements <= 0.32 sd on average per latent,
    worst 0.69 sd; biases <= 0.32 sd and seed-to-seed sds <= 0.36 sd; sd errors: bias <= 0.39,
    seed sd <= 0.20. Tolerances: bias + 3 seed sds for the worst element, and the averages
    over elements with a similar margin."""
    m = datasets.load("radon")
    ref = datasets.reference("radon")["latents"]
    est = qem_estimate(m, K=10, iters=60, K_result=10, n_results=3)
    for latent, (mean, sd) in est.items():
        err = np.abs(mean - ref[latent]["mean"]) / ref[latent]["sd"]
        rel = np.abs(sd / ref[latent]["sd"] - 1)
        assert err.max() < 1.25 and err.mean() < 0.5, f"{latent}: mean errors {np.round(err, 2)} posterior sds"
        assert rel.max() < 1.0 and rel.mean() < 0.55, f"{latent}: relative sd errors {np.round(rel, 2)}"
