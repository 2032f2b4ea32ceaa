"""Diagnostics of a run: convergence of the ELBO, Pareto k-hat, highest-density intervals.

Plain numpy, so the CLI, the result file and the views all judge a run the same way.
"""
from __future__ import annotations

import math

import numpy as np

# A run has converged when, over its last two windows of a quarter of the run each (at least
# `min_window` iterations: MIN_WINDOW for QEM, SLOW_WINDOW for the gradient methods, whose ELBO
# moves slowly under a great deal of noise), the mean ELBO has risen by less than one iteration's own spread, with
# RISE_SE standard errors to spare: going on would gain less than the noise of one estimate.
# (The standard errors allow for the iterations' autocorrelation.)
MIN_WINDOW = 25
SLOW_WINDOW = 100
RISE_SE = 2.0


def elbo_rise(elbo, min_window: int = MIN_WINDOW) -> tuple[float, float, float] | None:
    """(rise, its standard error, one iteration's sd): the last window's mean ELBO less the
    previous window's; None if the run is too short or not finite there."""
    y = np.asarray(elbo, dtype=float)
    w = max(min_window, len(y) // 4)
    if len(y) < 2 * w or not np.all(np.isfinite(y[-2 * w:])):
        return None
    a, b = y[-2 * w:-w], y[-w:]
    sd = math.sqrt(0.5 * (a.var(ddof=1) + b.var(ddof=1)))
    return float(b.mean() - a.mean()), math.sqrt(_var_of_mean(a) + _var_of_mean(b)), sd


def window_for(method: str) -> int:
    return MIN_WINDOW if method == "qem" else SLOW_WINDOW


def _var_of_mean(y: np.ndarray) -> float:
    """Variance of the mean of a stationary series, with the lag-1 autocorrelation's
    inflation (1 + r) / (1 - r) of an AR(1) process."""
    v = y.var(ddof=1)
    if v == 0:
        return 0.0
    d = y - y.mean()
    r = float(np.clip((d[1:] * d[:-1]).sum() / (d * d).sum(), 0.0, 0.95))
    return v / len(y) * (1 + r) / (1 - r)


def converged(elbo, min_window: int = MIN_WINDOW) -> bool:
    """Whether the ELBO has stopped rising (see RISE_SE)."""
    r = elbo_rise(elbo, min_window)
    return r is not None and r[0] + RISE_SE * r[1] < r[2]


def pareto_khat(log_weights) -> float:
    """Shape k of a generalised Pareto fitted to the largest importance weights (Zhang and
    Stephens 2009, with the weakly informative prior of Vehtari et al.'s PSIS): above 0.7
    importance-sampling estimates are unreliable. NaN with fewer than 20 weights."""
    lw = np.asarray(log_weights, dtype=float).ravel()
    lw = lw[np.isfinite(lw)]
    n = len(lw)
    if n < 20:
        return float("nan")
    m = int(math.ceil(min(0.2 * n, 3 * math.sqrt(n))))
    lw = np.sort(lw)
    x = np.exp(lw[-m:] - lw[-1])                      # the tail, scaled by the largest weight
    u = np.exp(lw[-m - 1] - lw[-1])                   # the threshold
    x = x - u
    if not np.any(x > 0):
        return 0.0
    k, _ = _gpd_fit(np.sort(x))
    return float((m * k + 10 * 0.5) / (m + 10))      # PSIS's weakly informative prior, towards 0.5


def _gpd_fit(x: np.ndarray) -> tuple[float, float]:
    """Zhang and Stephens' estimate of a generalised Pareto's (k, sigma) from sorted x > 0,
    k in the usual sign (heavier tails, larger k: the negative of Zhang and Stephens')."""
    n = len(x)
    grid = 30 + int(math.sqrt(n))
    j = np.arange(1, grid + 1)
    q = x[max(int(n / 4 + 0.5) - 1, 0)]
    theta = 1 / x[-1] + (1 - np.sqrt(grid / (j - 0.5))) / (3 * q)
    k = np.log1p(-theta[:, None] * x).mean(1)
    ll = n * (np.log(-theta / k) - k - 1)
    w = 1 / np.exp(ll - ll[:, None]).sum(1)
    theta = (theta * w).sum()
    k = np.log1p(-theta * x).mean()
    return k, -k / theta


def hdi(draws: np.ndarray, prob: float = 0.94) -> tuple[np.ndarray, np.ndarray]:
    """The shortest interval holding `prob` of the draws, per element: draws first."""
    x = np.sort(np.asarray(draws), axis=0)
    n = x.shape[0]
    width = max(1, min(n - 1, int(math.floor(prob * n))))
    lo, hi = x[:n - width], x[width:]
    i = np.argmin(hi - lo, axis=0)
    take = lambda a: np.take_along_axis(a, i[None], 0)[0]
    return take(lo), take(hi)
