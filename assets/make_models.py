"""Regenerate the example models in assets/models/ (run: python assets/make_models.py).

radon: Gelman & Hill's Minnesota radon survey (919 houses, 85 counties), read from the
copy that ships inside the arviz wheel (arviz/data/example_data/code/radon/radon.json);
houses are padded to the largest county with null, which the engine masks out.
hierarchical_gaussian: synthetic data with a closed-form posterior
  (engine.datasets.exact_posterior gives it).
eight_schools_centered / eight_schools_noncentered: Rubin (1981), BDA section 5.5; the 8
  estimates and standard errors are in the files (assets/data/eight_schools.csv).
seeds: Crowder (1978), the BUGS "Seeds" logistic random-effects model (assets/data/seeds.csv).
occupancy: a discrete latent (is site i occupied?), synthetic detection histories drawn
  here with a fixed seed.
nile: the Nile's annual flow at Aswan 1871-1970 (Cobb 1978, public domain; the copy in the
  statsmodels wheel, assets/data/nile.csv), a local level model with a time-series latent.
Reference posteriors for these models are in assets/reference/ (make_reference.py); where
they are exact (closed form, quadrature), the model files carry them in their "exact" field.
"""
import csv
import json
import os
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent
OUT = ASSETS / "models"


def _csv(name):
    with open(ASSETS / "data" / name) as f:
        return list(csv.DictReader(f))


def radon():
    import arviz
    src = os.path.join(os.path.dirname(arviz.__file__), "data/example_data/code/radon/radon.json")
    d = json.load(open(src))
    county = np.array(d["county"])
    J, n_max = d["J"], np.bincount(county).max()
    y = np.full((J, n_max), np.nan)
    basement = np.zeros((J, n_max), dtype=int)
    fill = np.zeros(J, dtype=int)
    for yi, xi, c in zip(d["y"], d["x"], county):
        y[c, fill[c]] = yi
        basement[c, fill[c]] = 1 - xi
        fill[c] += 1
    nodes = [
        {"name": "g0", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 10}},
        {"name": "g1", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 10}},
        {"name": "b", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 10}},
        {"name": "sigma_a", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 1}},
        {"name": "sigma_y", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 1}},
        {"name": "a", "kind": "latent", "dist": "Normal", "args": {"loc": "g0 + g1 * log_u", "scale": "sigma_a"},
         "plate": "counties"},
        {"name": "y", "kind": "observed", "dist": "Normal", "args": {"loc": "a + b * basement", "scale": "sigma_y"},
         "plate": "houses"}]
    y_list = [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in y]
    return {"format": "kn-model/1", "name": "radon",
            "description": "Minnesota radon (Gelman & Hill 2007): log radon in 919 houses of 85 counties; "
                           "varying county intercepts a with county log uranium log_u, and a basement "
                           "effect b. Counties are padded to 116 houses with null. Data: the copy in the "
                           "arviz wheel.",
            "plates": [{"name": "counties", "size": J}, {"name": "houses", "size": int(n_max), "in": "counties"}],
            "nodes": nodes,
            "data": {"y": y_list, "basement": basement.tolist(), "log_u": [round(u, 6) for u in d["u"]]}}


def hierarchical_gaussian():
    from engine import datasets
    return datasets.hierarchical_gaussian().to_dict()   # the engine's generator is the asset


def eight_schools(centered: bool):
    rows = _csv("eight_schools.csv")
    y = [float(r["y"]) for r in rows]
    sigma = [float(r["sigma"]) for r in rows]
    top = [{"name": "mu", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 5}},
           {"name": "tau", "kind": "latent", "dist": "HalfCauchy", "args": {"scale": 5}}]
    if centered:
        name, nodes = "eight_schools_centered", top + [
            {"name": "theta", "kind": "latent", "dist": "Normal", "args": {"loc": "mu", "scale": "tau"},
             "plate": "schools"},
            {"name": "y", "kind": "observed", "dist": "Normal", "args": {"loc": "theta", "scale": "sigma"},
             "plate": "schools"}]
        how = "theta_j ~ N(mu, tau)"
    else:
        name, nodes = "eight_schools_noncentered", top + [
            {"name": "eta", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 1}, "plate": "schools"},
            {"name": "y", "kind": "observed", "dist": "Normal", "args": {"loc": "mu + tau * eta", "scale": "sigma"},
             "plate": "schools"}]
        how = "theta_j = mu + tau * eta_j, eta_j ~ N(0, 1)"
    return {"format": "kn-model/1", "name": name,
            "description": f"Eight schools (Rubin 1981; Gelman et al., BDA 5.5): coaching effects y_j with known "
                           f"standard errors sigma_j in 8 schools ({', '.join(r['school'] for r in rows)}). "
                           f"mu ~ N(0, 5), tau ~ HalfCauchy(5), {how}, y_j ~ N(theta_j, sigma_j).",
            "plates": [{"name": "schools", "size": len(y)}],
            "nodes": nodes,
            "data": {"y": y, "sigma": sigma}}


def seeds():
    rows = _csv("seeds.csv")
    col = lambda k: [int(r[k]) for r in rows]
    X = [[1.0, float(r["x1"]), float(r["x2"]), float(r["x1"]) * float(r["x2"])] for r in rows]   # design matrix
    return {"format": "kn-model/1", "name": "seeds",
            "description": "Seeds (Crowder 1978; BUGS Vol. I): r_i of n_i Orobanche seeds germinated in each of "
                           "21 dishes; x1 seed type (1 = O. aegyptiaca 73), x2 root extract (1 = cucumber). "
                           "Logistic regression with an interaction, logit p_i = X_i @ alpha + b_i where the rows "
                           "of X are (1, x1, x2, x1*x2), and dish random effects b_i ~ N(0, sigma); "
                           "alpha ~ N(0, 2.5), the weakly informative prior of Gelman et al. (2008) for logistic "
                           "coefficients (BUGS's alpha0, alpha1, alpha2, alpha12; proposed jointly by a "
                           "full-covariance Normal), sigma ~ HalfNormal(1).",
            "plates": [{"name": "dishes", "size": len(rows)}],
            "nodes": [
                {"name": "alpha", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 2.5}, "shape": [4]},
                {"name": "sigma", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 1}},
                {"name": "b", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": "sigma"},
                 "plate": "dishes"},
                {"name": "r", "kind": "observed", "dist": "Binomial",
                 "args": {"total_count": "n", "logits": "X @ alpha + b"}, "plate": "dishes"}],
            "data": {"r": col("r"), "n": col("n"), "x1": col("x1"), "x2": col("x2"), "X": X},
            "data_plates": {"X": ["dishes"]},
            "proposal": {"alpha": {"dist": "MultivariateNormal"}}}


def occupancy(M=40, J=4, psi=0.6, p=0.4, seed=1):
    rng = np.random.default_rng(seed)
    z = rng.random(M) < psi
    y = (rng.random((M, J)) < p) & z[:, None]
    return {"format": "kn-model/1", "name": "occupancy",
            "description": f"Site occupancy with imperfect detection (MacKenzie et al. 2002), a discrete latent: "
                           f"site i is occupied (z_i = 1) with probability psi and an occupied site is detected "
                           f"on each of {J} visits with probability p. Synthetic data: {M} sites drawn with "
                           f"psi = {psi}, p = {p}, seed {seed} (assets/make_models.py).",
            "plates": [{"name": "sites", "size": M}, {"name": "visits", "size": J, "in": "sites"}],
            "nodes": [
                {"name": "psi", "kind": "latent", "dist": "Beta", "args": {"concentration1": 1, "concentration0": 1}},
                {"name": "p", "kind": "latent", "dist": "Beta", "args": {"concentration1": 1, "concentration0": 1}},
                {"name": "z", "kind": "latent", "dist": "Bernoulli", "args": {"probs": "psi"}, "plate": "sites"},
                {"name": "y", "kind": "observed", "dist": "Bernoulli", "args": {"probs": "z * p"},
                 "plate": "visits"}],
            "data": {"y": y.astype(int).tolist()}}


def nile():
    rows = _csv("nile.csv")
    return {"format": "kn-model/1", "name": "nile",
            "description": 'Annual flow of the Nile at Aswan, 1871-1970 (10^8 m^3; Cobb 1978; public domain, via statsmodels). A local level model (Durbin and Koopman 2012, ch. 2): the level is a random walk, level_t ~ N(level_{t-1}, sigma_level), starting from level0 ~ N(1000, 300); flow_t ~ N(level_t, sigma_obs). The level is a time-series latent: \'prev\' in its location is its own value the year before. The two scales share one K-dim ("group": "scales"): every year\'s K x K transition then comes in K versions, not K^2, which lets K be 30. The reference posterior is quadrature over the two scales with the Kalman filter and smoother for the levels (assets/reference/make_reference.py).',
            "plates": [{"name": "years", "size": len(rows)}],
            "nodes": [{"name": "sigma_obs", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 200}, "group": "scales"}, {"name": "sigma_level", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 100}, "group": "scales"}, {"name": "level0", "kind": "latent", "dist": "Normal", "args": {"loc": 1000, "scale": 300}}, {"name": "level", "kind": "latent", "dist": "Normal", "args": {"loc": "prev", "scale": "sigma_level"}, "plate": "years", "timeseries": {"init": "level0"}}, {"name": "flow", "kind": "observed", "dist": "Normal", "args": {"loc": "level", "scale": "sigma_obs"}, "plate": "years"}],
            "data": {"flow": [float(r["volume"]) for r in rows]}}


def with_exact(doc):
    """The document with its "exact" field: {latent or latent[i]: {"dist", "args"} or
    {"x", "pdf"}, "@log_evidence": float}, the form the workbench's views read. From the
    closed form (hierarchical_gaussian) or from quadrature (assets/reference/*.json)."""
    if doc["name"] == "hierarchical_gaussian":
        from engine import Model, datasets
        m = Model.from_dict(doc)
        exact = {k: {"dist": v["dist"], "args": {a: round(x, 6) for a, x in v["args"].items()}}
                 for k, v in datasets.exact_specs(m).items()}
        exact["@log_evidence"] = round(datasets.exact_posterior(m)["log_evidence"], 6)
    else:
        ref = ASSETS / "reference" / f"{doc['name']}.json"
        ref = json.loads(ref.read_text()) if ref.exists() else {}
        if "density" not in ref:
            return doc
        exact = {**ref["density"], "@log_evidence": round(ref["log_evidence"], 6)}
    return {**doc, "exact": exact}


MODELS = [radon, hierarchical_gaussian, lambda: eight_schools(True), lambda: eight_schools(False), seeds, occupancy,
          nile]
COMPACT = {"radon"}   # one line; the others are indented for reading

if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for make in MODELS:
        doc = with_exact(make())
        (OUT / f"{doc['name']}.json").write_text(
            json.dumps(doc, indent=None if doc["name"] in COMPACT else 1) + "\n")
        print("wrote", OUT / f"{doc['name']}.json")
