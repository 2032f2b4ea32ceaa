"""Exact posteriors for models with a closed form, to overlay on the Posterior view.

The closed form itself is engine.datasets' (the conjugate Gaussian hierarchy
mu ~ Normal(m0, s0); z[g] ~ Normal(mu, t) in plate G; x[g, n] ~ Normal(z[g], s) in a plate
inside G, whatever the names); here it is only put in the form the views take, with {}
or None for any other model.
"""
from __future__ import annotations

from engine import ModelError
from engine.datasets import exact_posterior, exact_specs


def gaussian_hierarchy(model) -> dict:
    """{"mu": {"dist": "Normal", "args": {"loc", "scale"}}, "z[0]": ..., ...}, or {}."""
    try:
        return exact_specs(model)
    except (ModelError, KeyError, ValueError):
        return {}


def log_evidence(model) -> float | None:
    """log P(data) for the conjugate Gaussian hierarchy (None for other models)."""
    try:
        return exact_posterior(model)["log_evidence"]
    except (ModelError, KeyError, ValueError):
        return None
