"""Closed-form answers for linear-Gaussian networks, to test estimators against.

A network is a list of scalar variables in topological order, each
`(name, {parent: coefficient}, constant, sd, observed_value_or_None)`, meaning
`v ~ Normal(constant + sum coef * parent, sd)`.
"""
import numpy as np


def gaussian_network(variables):
    names = [v[0] for v in variables]
    idx = {n: i for i, n in enumerate(names)}
    n = len(names)
    mean, cov = np.zeros(n), np.zeros((n, n))
    for i, (_, coefs, const, sd, _) in enumerate(variables):
        c = np.zeros(n)
        for p, w in coefs.items():
            c[idx[p]] = w
        mean[i] = const + c @ mean
        cov[i, :i] = c[:i] @ cov[:i, :i]
        cov[:i, i] = cov[i, :i]
        cov[i, i] = c[:i] @ cov[:i, :i] @ c[:i] + sd ** 2
    obs = [i for i, v in enumerate(variables) if v[4] is not None]
    lat = [i for i, v in enumerate(variables) if v[4] is None]
    x = np.array([variables[i][4] for i in obs], dtype=float)
    Soo, Slo = cov[np.ix_(obs, obs)], cov[np.ix_(lat, obs)]
    gain = Slo @ np.linalg.inv(Soo)
    post_mean = mean[lat] + gain @ (x - mean[obs])
    post_cov = cov[np.ix_(lat, lat)] - gain @ Slo.T
    d = x - mean[obs]
    _, logdet = np.linalg.slogdet(Soo)
    log_evidence = -0.5 * (d @ np.linalg.solve(Soo, d) + logdet + len(obs) * np.log(2 * np.pi))
    lat_names = [names[i] for i in lat]
    return {"mean": dict(zip(lat_names, post_mean)), "var": dict(zip(lat_names, np.diag(post_cov))),
            "cov": post_cov, "names": lat_names, "log_evidence": float(log_evidence)}


def hierarchy_net(x, m0=0.0, s0=1.0, tau=1.0, sigma=1.0, z="z{}"):
    """The network of mu ~ N(m0, s0); z_g ~ N(mu, tau); x_gn ~ N(z_g, sigma) for data x
    (groups x observations; NaN observations left out); latent z_g is named z.format(g)."""
    x = np.asarray(x, dtype=float)
    net = [("mu", {}, m0, s0, None)] + [(z.format(g), {"mu": 1.0}, 0.0, tau, None) for g in range(len(x))]
    net += [(f"x{g}_{n}", {z.format(g): 1.0}, 0.0, sigma, float(v))
            for g, row in enumerate(x) for n, v in enumerate(row) if np.isfinite(v)]
    return net
