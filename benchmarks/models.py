"""The benchmark models, built with the engine's Model API on synthetic data.

Every builder is deterministic in its `seed` and takes its sizes as arguments, so the
same function makes both the full-size benchmark and the toy size the smoke test runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.model import Model


def hierarchical_gaussian(groups: int = 100, obs: int = 10, seed: int = 0) -> Model:
    """mu ~ N(0, 1); z_g ~ N(mu, 1); x_gn ~ N(z_g, 1)."""
    rng = np.random.default_rng(seed)
    mu = rng.normal()
    z = rng.normal(mu, 1.0, size=groups)
    x = rng.normal(z[:, None], 1.0, size=(groups, obs)).astype(np.float32)
    m = Model("bench_hierarchical_gaussian")
    m.add_plate("groups", groups).add_plate("obs", obs, parent="groups")
    m.add_node("mu", "latent", "Normal", {"loc": 0.0, "scale": 1.0})
    m.add_node("z", "latent", "Normal", {"loc": "mu", "scale": 1.0}, plate="groups")
    m.add_node("x", "observed", "Normal", {"loc": "z", "scale": 1.0}, plate="obs")
    m.set_data("x", x)
    return m


def radon_like(groups: int = 10, obs: int = 5, grouped: bool = False, seed: int = 0) -> Model:
    """Four latents per group, all parents of the observation:
    mu ~ N(0, 1); a1_g ~ N(mu, 1); a2_g, a3_g, a4_g ~ N(0, 1);
    y_gn ~ N(a1_g + a2_g * u1_gn + a3_g * u2_gn + a4_g * u3_gn, 1).
    Ungrouped, each a_j has its own K-dim and the observation's factor is K^4 x plates;
    grouped (`"group": "a"`), the four share one K-dim and it is K x plates."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(3, groups, obs)).astype(np.float32)
    a = rng.normal(size=(4, groups))
    y = a[0][:, None] + a[1][:, None] * u[0] + a[2][:, None] * u[1] + a[3][:, None] * u[2]
    y = (y + rng.normal(size=(groups, obs))).astype(np.float32)
    m = Model("bench_radon_like" + ("_grouped" if grouped else ""))
    m.add_plate("groups", groups).add_plate("obs", obs, parent="groups")
    g = "a" if grouped else None
    m.add_node("mu", "latent", "Normal", {"loc": 0.0, "scale": 1.0})
    m.add_node("a1", "latent", "Normal", {"loc": "mu", "scale": 1.0}, plate="groups", group=g)
    for j in (2, 3, 4):
        m.add_node(f"a{j}", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, plate="groups", group=g)
    m.add_node("y", "observed", "Normal", {"loc": "a1 + a2 * u1 + a3 * u2 + a4 * u3", "scale": 1.0},
               plate="obs")
    for j in range(3):
        m.set_data(f"u{j + 1}", u[j], plates=["groups", "obs"])
    m.set_data("y", y)
    return m


def movielens_like(users: int = 300, films: int = 5, features: int = 18, seed: int = 0) -> Model:
    """The MovieLens model of the MP papers on synthetic data:
    mu ~ N(0, I_18); psi ~ N(0, I_18); z_u ~ N(mu, exp(psi)) (shape [18]);
    y_uf ~ Bernoulli(logits = z_u @ x_uf), x_uf one-hot-ish film features."""
    rng = np.random.default_rng(seed)
    x = (rng.random((users, films, features)) < 0.2).astype(np.float32)
    z = rng.normal(size=(users, features))
    logits = np.einsum("ud,ufd->uf", z, x)
    y = (rng.random((users, films)) < 1 / (1 + np.exp(-logits))).astype(np.float32)
    m = Model("bench_movielens_like")
    m.add_plate("users", users).add_plate("films", films, parent="users")
    m.add_node("mu", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, shape=[features])
    m.add_node("psi", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, shape=[features])
    m.add_node("z", "latent", "Normal", {"loc": "mu", "scale": "exp(psi)"}, plate="users", shape=[features])
    m.add_node("y", "observed", "Bernoulli", {"logits": "z @ x"}, plate="films")
    m.set_data("x", x, plates=["users", "films"])
    m.set_data("y", y)
    return m


def chain_document(nodes: int, reverse: bool = False) -> dict:
    """A kn-model/1 document of nodes/2 latents in a chain, z_i ~ N(z_{i-1}, 1), each
    with one observation y_i ~ N(z_i, 1); listed parents first, or children first."""
    out, data = [], {}
    for i in range(nodes // 2):
        out.append({"name": f"z{i}", "kind": "latent", "dist": "Normal",
                    "args": {"loc": f"z{i - 1}" if i else 0, "scale": 1}})
        out.append({"name": f"y{i}", "kind": "observed", "dist": "Normal", "args": {"loc": f"z{i}", "scale": 1}})
        data[f"y{i}"] = 0.5
    return {"format": "kn-model/1", "name": "chain", "nodes": out[::-1] if reverse else out, "data": data}


def paper(name: str, **kwargs) -> Model:
    """One of the QEM paper's models (benchmarks/paper.py): bus_breakdown, radon, occupancy."""
    from .paper import MODELS
    return MODELS[name](**kwargs)


def asset(name: str) -> Model:
    """An example model shipped in assets/models (e.g. "radon")."""
    return Model.load(Path(__file__).resolve().parent.parent / "assets" / "models" / f"{name}.json")


__all__ = ["hierarchical_gaussian", "radon_like", "movielens_like", "paper", "asset"]
