"""Regenerate the example models in assets/models/ (run: python assets/make_models.py).

radon: Gelman & Hill's Minnesota radon survey (919 houses, 85 counties), read from the
copy that ships inside the arviz wheel (arviz/data/example_data/code/radon/radon.json);
houses are padded to the largest county with null, which the engine masks out.
hierarchical_gaussian: synthetic data with a closed-form posterior.
"""
import json
import os
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "models"


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


def hierarchical_gaussian(G=10, N=5, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 1)
    z = rng.normal(mu, 1, G)
    x = rng.normal(z[:, None], 1, (G, N))
    return {"format": "kn-model/1", "name": "hierarchical_gaussian",
            "description": "mu ~ N(0, 1); z_g ~ N(mu, 1) for 10 groups; x_gn ~ N(z_g, 1), 5 per group. "
                           "Conjugate: the posterior and the evidence have closed forms.",
            "plates": [{"name": "groups", "size": G}, {"name": "obs", "size": N, "in": "groups"}],
            "nodes": [
                {"name": "mu", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 1}},
                {"name": "z", "kind": "latent", "dist": "Normal", "args": {"loc": "mu", "scale": 1}, "plate": "groups"},
                {"name": "x", "kind": "observed", "dist": "Normal", "args": {"loc": "z", "scale": 1}, "plate": "obs"}],
            "data": {"x": np.round(x, 4).tolist()}}


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for doc in (radon(), hierarchical_gaussian()):
        (OUT / f"{doc['name']}.json").write_text(json.dumps(doc, indent=1 if doc["name"] != "radon" else None) + "\n")
        print("wrote", OUT / f"{doc['name']}.json")
