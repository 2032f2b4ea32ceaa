"""The example gallery, reference posteriors, a closed-form posterior, and MovieLens.

    gallery()                   {name: path} of the models in assets/models/
    load(name)                  a gallery Model
    reference(name)             stored reference posterior (assets/reference/<name>.json) or None
    hierarchical_gaussian(groups, per_group, seed)
                                the conjugate Gaussian hierarchy with synthetic data, any size
    exact_posterior(model)      its closed-form posterior, log evidence and KL(posterior || prior)
    exact_specs(model)          the same as {name or name[i]: {"dist": "Normal", "args": ...}},
                                the form the workbench's posterior view draws
    movielens_model(n_users, n_films, seed)
                                the MovieLens-100K hierarchical logistic model (data fetched on
                                first use, never stored in the repository: see below)
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from .errors import ModelError
from .model import Model

ASSETS = Path(__file__).resolve().parent.parent / "assets"


# ---- gallery ---------------------------------------------------------------------------------
def gallery() -> dict[str, Path]:
    return {p.stem: p for p in sorted((ASSETS / "models").glob("*.json"))}


def load(name: str) -> Model:
    models = gallery()
    if name not in models:
        raise ModelError(f"no gallery model {name!r} (have: {', '.join(models)})")
    return Model.load(models[name])


def reference(name: str) -> dict | None:
    """{"method", "latents": {latent: {"mean", "sd"[, "mcse"]}}[, "log_evidence"]}, values as
    numpy arrays shaped like the latent's plates; None where no reference is stored."""
    if isinstance(name, Model):
        name = name.name
    p = ASSETS / "reference" / f"{name}.json"
    if not p.exists():
        return None
    doc = json.loads(p.read_text())
    for d in doc["latents"].values():
        for k in ("mean", "sd", "mcse", "ess"):
            if k in d:
                d[k] = np.asarray(d[k], dtype=float)
    return doc


# ---- the conjugate Gaussian hierarchy ------------------------------------------------------------
def hierarchical_gaussian(groups: int = 10, per_group: int = 5, seed: int = 0) -> Model:
    """mu ~ N(0, 1); z_g ~ N(mu, 1); x_gn ~ N(z_g, 1) with data drawn from the model.
    groups=10, per_group=5, seed=0 is assets/models/hierarchical_gaussian.json."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 1)
    z = rng.normal(mu, 1, groups)
    x = rng.normal(z[:, None], 1, (groups, per_group))
    m = Model("hierarchical_gaussian")
    m.description = (f"mu ~ N(0, 1); z_g ~ N(mu, 1) for {groups} groups; x_gn ~ N(z_g, 1), {per_group} per group. "
                     f"Conjugate: the posterior and the evidence have closed forms.")
    m.add_plate("groups", groups).add_plate("obs", per_group, "groups")
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("z", "latent", "Normal", {"loc": "mu", "scale": 1}, plate="groups")
    m.add_node("x", "observed", "Normal", {"loc": "z", "scale": 1}, plate="obs")
    m.set_data("x", np.round(x, 4))
    m.validate()
    return m


def _number(v, where):
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    raise ModelError(f"{where} must be a number for the closed form, got {v!r}")


def _gaussian_hierarchy(model: Model):
    """(root, group latent, observed, m0, s0, tau, sigma) if `model` is
    root ~ N(m0, s0); z ~ N(root, tau) in plate G; x ~ N(z, sigma) in a plate inside G."""
    lat, obs = model.latents, model.observed
    shape_msg = ("a closed form is known only for mu ~ Normal(m0, s0); z ~ Normal(mu, tau) in a plate; "
                 "x ~ Normal(z, sigma) observed in a plate inside it, all scales numbers")
    if len(lat) != 2 or len(obs) != 1:
        raise ModelError(shape_msg)
    root, z = (lat if model.node(lat[0]).plate is None else lat[::-1])
    nr, nz, nx = model.node(root), model.node(z), model.node(obs[0])
    if not (nr.dist == nz.dist == nx.dist == "Normal") or nr.plate is not None or nz.plate is None \
            or nz.args.get("loc") != root or nx.args.get("loc") != z or nr.shape or nz.shape or nx.shape \
            or model.chain(nx.plate)[:-1] != model.chain(nz.plate) or model.chain(nz.plate) != (nz.plate,):
        raise ModelError(shape_msg)
    return (root, z, nx.name, _number(nr.args["loc"], nr.where("loc")), _number(nr.args["scale"], nr.where("scale")),
            _number(nz.args["scale"], nz.where("scale")), _number(nx.args["scale"], nx.where("scale")))


def exact_posterior(model: Model) -> dict:
    """Closed-form posterior of the conjugate Gaussian hierarchy (see `hierarchical_gaussian`;
    any numbers for the prior mean and the three scales; missing observations allowed):
    {"latents": {mu: {"mean", "sd"}, z: {"mean": (G,), "sd": (G,)}}, "log_evidence",
     "kl_prior": KL(posterior || prior) over all G + 1 latents, "mean", "cov" (joint, mu first)}.
    KL(posterior || prior) is what Chatterjee and Diaconis's bound puts in the exponent for
    importance sampling with the prior as proposal."""
    root, z, x, m0, s0, tau, sigma = _gaussian_hierarchy(model)
    data = np.asarray(model.data[x], dtype=float)
    data = data.reshape(data.shape[0], -1)
    G = data.shape[0]
    n = (~np.isnan(data)).sum(1)
    S = np.nansum(data, 1)
    d = G + 1
    prior_mean = np.full(d, m0)
    lam0 = np.zeros((d, d))                          # prior precision of (mu, z_1..z_G)
    lam0[0, 0] = 1 / s0 ** 2 + G / tau ** 2
    lam0[0, 1:] = lam0[1:, 0] = -1 / tau ** 2
    lam0[1:, 1:] = np.eye(G) / tau ** 2
    lam = lam0.copy()
    lam[1:, 1:] += np.diag(n / sigma ** 2)
    eta = lam0 @ prior_mean
    eta[1:] += S / sigma ** 2
    cov = np.linalg.inv(lam)
    cov = 0.5 * (cov + cov.T)
    mean = cov @ eta
    _, logdet_lam0 = np.linalg.slogdet(lam0)
    _, logdet_lam = np.linalg.slogdet(lam)
    # log p(x) = log p(x | m) + log p(m) - log p(m | x) at the posterior mean m
    resid = np.where(np.isnan(data), 0.0, data - mean[1:, None])
    loglik = -0.5 * ((resid ** 2).sum() / sigma ** 2 + n.sum() * math.log(2 * math.pi * sigma ** 2))
    dm = mean - prior_mean
    logprior = -0.5 * (dm @ lam0 @ dm + d * math.log(2 * math.pi) - logdet_lam0)
    logpost = -0.5 * (d * math.log(2 * math.pi) - logdet_lam)
    kl = 0.5 * (np.trace(lam0 @ cov) + dm @ lam0 @ dm - d + logdet_lam - logdet_lam0)
    sd = np.sqrt(np.diag(cov))
    return {"latents": {root: {"mean": float(mean[0]), "sd": float(sd[0])}, z: {"mean": mean[1:], "sd": sd[1:]}},
            "log_evidence": float(loglik + logprior - logpost), "kl_prior": float(kl), "mean": mean, "cov": cov}


def exact_specs(model: Model) -> dict:
    """{"mu": {"dist": "Normal", "args": {...}}, "z[0]": ..., ...}: exact marginal posteriors in
    the form `Workbench(..., exact=exact_specs)` and `workbench.views.posterior_view` take."""
    post = exact_posterior(model)["latents"]
    out = {}
    for name, d in post.items():
        mean, sd = np.atleast_1d(d["mean"]), np.atleast_1d(d["sd"])
        if np.ndim(d["mean"]) == 0:
            out[name] = {"dist": "Normal", "args": {"loc": float(mean[0]), "scale": float(sd[0])}}
        else:
            for i, (m, s) in enumerate(zip(mean, sd)):
                out[f"{name}[{i}]"] = {"dist": "Normal", "args": {"loc": float(m), "scale": float(s)}}
    return out


# ---- MovieLens-100K ---------------------------------------------------------------------------------
# GroupLens's terms forbid redistributing MovieLens, so nothing of it is stored here. The
# recbole 1.2.1 wheel (MIT) ships ML-100K as plain text in its "atomic" format; pip fetches
# the wheel (no dependencies, nothing installed) into a cache outside the repository.
MOVIELENS_WHEEL = ("recbole", "1.2.1")
_INTER = "recbole/dataset_example/ml-100k/ml-100k.inter"
_ITEM = "recbole/dataset_example/ml-100k/ml-100k.item"
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")   # u.item's 19 flags less "unknown": the 18 features of Bowyer et al.


class DataUnavailable(ModelError):
    """A dataset could not be found or fetched; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("KN_CACHE", Path.home() / ".cache" / "kn-workbench"))


def _movielens_wheel(download: bool = True) -> Path:
    name, version = MOVIELENS_WHEEL
    cache = cache_dir()
    found = sorted(cache.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    how = (f"MovieLens-100K is not stored in this repository (its licence forbids redistribution). "
           f"It is read from the {name}=={version} wheel, which ships it. Fetch the wheel with\n"
           f"    {sys.executable} -m pip download --no-deps {name}=={version} -d {cache}\n"
           f"(or put {name}-{version}-py3-none-any.whl there by hand, or set KN_CACHE to a folder holding it).")
    if not download:
        raise DataUnavailable(how)
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--retries", "1", "--timeout", "15",
                        f"{name}=={version}",
                        "-d", str(cache)], check=True, capture_output=True, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        err = getattr(e, "stderr", b"") or b""
        raise DataUnavailable(f"could not download the {name} wheel ({err.decode(errors='replace').strip()[-300:] or e}).\n"
                              + how) from None
    found = sorted(cache.glob(f"{name}-{version}-*.whl"))
    if not found:
        raise DataUnavailable(how)
    return found[0]


def movielens_raw(download: bool = True):
    """(ratings (100000, 3) int array of user, film, rating (1..5), both ids 1-based;
    genres (1682, 18) 0/1 array, row f - 1 for film id f)."""
    whl = _movielens_wheel(download)
    try:
        with zipfile.ZipFile(whl) as z:
            with z.open(_INTER) as f:
                text = io.TextIOWrapper(f, "utf-8")
                head = text.readline().rstrip("\n").split("\t")
                cols = [head.index(c) for c in ("user_id:token", "item_id:token", "rating:float")]
                ratings = np.loadtxt(text, delimiter="\t", usecols=cols).astype(np.int64)
            with z.open(_ITEM) as f:
                items = list(csv.reader(io.TextIOWrapper(f, "utf-8"), delimiter="\t"))
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataUnavailable(f"{whl} is not a usable {MOVIELENS_WHEEL[0]} wheel ({e}); delete it and retry") from None
    ih = items[0]
    iid, icl = ih.index("item_id:token"), ih.index("class:token_seq")
    n_films = max(int(r[iid]) for r in items[1:])
    genres = np.zeros((n_films, len(GENRES)), dtype=np.int64)
    for r in items[1:]:
        for g in r[icl].split(" "):
            if g in GENRES:
                genres[int(r[iid]) - 1, GENRES.index(g)] = 1
            elif g not in ("", "unknown"):
                raise DataUnavailable(f"unexpected genre {g!r} in {whl.name}")
    if ratings.shape != (100000, 3) or n_films != 1682:
        raise DataUnavailable(f"{whl.name}: expected ML-100K's 100000 ratings of 1682 films, "
                              f"got {ratings.shape[0]} of {n_films}")
    return ratings, genres


def movielens_selection(ratings, genres, n_users: int = 300, n_films: int = 5, seed: int = 0):
    """(users, train_films, test_films), 0-based ids: `2 * n_films` random films among the 300
    most rated, with distinct non-empty genre vectors, split in two; `n_users` random users
    who rated at least one film of each half."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(ratings[:, 1], minlength=genres.shape[0] + 1)[1:]
    popular = np.argsort(-counts, kind="stable")[:300]
    films, seen = [], set()
    for f in rng.permutation(popular):
        key = genres[f].tobytes()
        if genres[f].any() and key not in seen:
            films.append(int(f))
            seen.add(key)
        if len(films) == 2 * n_films:
            break
    if len(films) < 2 * n_films:
        raise ModelError(f"n_films={n_films}: not enough popular films with distinct genres")
    train, test = films[:n_films], films[n_films:]
    rated = np.zeros((int(ratings[:, 0].max()), genres.shape[0]), dtype=bool)
    rated[ratings[:, 0] - 1, ratings[:, 1] - 1] = True
    pool = np.flatnonzero(rated[:, train].any(1) & rated[:, test].any(1))
    if n_users > len(pool):
        raise ModelError(f"n_users={n_users}: only {len(pool)} users rated films of both halves")
    return np.sort(rng.choice(pool, n_users, replace=False)), train, test


def movielens(n_users: int = 300, n_films: int = 5, seed: int = 0, download: bool = True):
    """(Model, test_data): the hierarchical logistic model of Bowyer et al. (2024) on
    `n_users` users and `n_films` films (see `movielens_selection`); ratings 4-5 -> 1,
    1-3 -> 0, unrated -> missing (masked). test_data holds the same users' binarised
    ratings of `n_films` other films, for `Fitter.result(test_data=...)`'s predictive
    log-likelihood.
      mu ~ N(0, 0.5 I_18); psi ~ N(0, 0.5 I_18); z_u ~ N(mu, exp(psi)); y_uf ~ Bernoulli(sigmoid(z_u . x_f))"""
    ratings, genres = movielens_raw(download)
    users, train, test = movielens_selection(ratings, genres, n_users, n_films, seed)
    table = np.full((int(ratings[:, 0].max()), genres.shape[0]), np.nan)
    table[ratings[:, 0] - 1, ratings[:, 1] - 1] = (ratings[:, 2] >= 4).astype(float)
    y, y_test = table[np.ix_(users, train)], table[np.ix_(users, test)]
    x, x_test = genres[train].astype(float), genres[test].astype(float)
    for name, v, feats in (("training", y, x), ("test", y_test, x_test)):
        vals = v[~np.isnan(v)]
        if not (vals == 0).any() or not (vals == 1).any():
            raise ModelError(f"MovieLens {name} ratings hold one class only; choose another seed")
        if len({row.tobytes() for row in feats}) != len(feats):
            raise ModelError(f"MovieLens {name} films share a genre vector")
    m = Model("movielens")
    m.description = (f"MovieLens-100K (Harper & Konstan 2015), {n_users} users x {n_films} films (seed {seed}); "
                     f"binarised ratings (4-5 -> 1), unrated missing; film features are the 18 genre flags. "
                     f"Built by engine.datasets.movielens; not redistributable, not stored.")
    m.add_plate("users", n_users).add_plate("films", n_films, "users")
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 0.5}, shape=[len(GENRES)])
    m.add_node("psi", "latent", "Normal", {"loc": 0, "scale": 0.5}, shape=[len(GENRES)])
    m.add_node("z", "latent", "Normal", {"loc": "mu", "scale": "exp(psi)"}, plate="users")
    m.add_node("y", "observed", "Bernoulli", {"logits": "z @ x"}, plate="films")
    m.set_data("y", y)
    m.set_data("x", x, plates=["films"])
    m.validate()
    return m, {"y": y_test, "x": x_test}


def movielens_model(n_users: int = 300, n_films: int = 5, seed: int = 0, download: bool = True) -> Model:
    return movielens(n_users, n_films, seed, download)[0]


__all__ = ["gallery", "load", "reference", "hierarchical_gaussian", "exact_posterior", "exact_specs",
           "movielens", "movielens_model", "movielens_raw", "movielens_selection", "DataUnavailable", "GENRES"]
