"""Reference posterior means and sds for the gallery models (assets/reference/<model>.json).

Computed once, by methods trusted independently of the engine:
  eight_schools_centered, eight_schools_noncentered: quadrature. theta integrates out in
      closed form (y_j | mu, tau ~ N(mu, sigma_j^2 + tau^2)); (mu, tau) on a 4001 x 4000
      grid, tau = 5 tan(pi u / 2) for u on a midpoint grid of (0, 1), under which the
      HalfCauchy(5) prior is uniform in u; theta_j and eta_j are Gaussian given (mu, tau).
      The log evidence comes with it.
  occupancy: quadrature. z integrates out per site; (psi, p) on a 2000 x 2000 midpoint grid
      of the unit square (uniform priors). P(z_i = 1 | y) and the log evidence come with it.
  For the quadrature models, "density" holds marginal posterior densities on plotting grids
  ({"x", "pdf"}), which assets/make_models.py copies into the models' "exact" field.
  nile: quadrature. Given the two scales the model is linear-Gaussian: the Kalman filter
      gives the likelihood with level0 integrated out, the Rauch-Tung-Striebel smoother each
      level's Gaussian posterior; (sigma_obs, sigma_level) on a 1000 x 1000 midpoint grid of
      their HalfNormal prior quantiles (under which the prior is uniform), grid points of
      negligible weight (below 1e-14 of the largest) dropped before smoothing.
  radon, seeds: NUTS (numpyro), 4 chains x 25,000 draws after 2,000 warm-up, non-centred;
      `mcse` is the Monte Carlo standard error of each mean (sd / sqrt(ESS), ArviZ-style ESS
      from numpyro's diagnostics).
Quadrature errors are far below the tests' tolerances (halving the grid moves no stored
digit by more than 1e-4 of a posterior sd).

numpyro and jax are not project dependencies; install them somewhere apart, e.g.
    pip install --target /tmp/nuts numpyro jax
    PYTHONPATH=/tmp/nuts python assets/reference/make_reference.py [model ...]
The script reads the model files (plain JSON) and imports nothing from the project.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"


def _load(name):
    return json.loads((MODELS / f"{name}.json").read_text())


def _logsumexp(a, axis=None):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.exp(a - m).sum(axis=axis))


def _stats(w, x):
    """Mean and sd under grid weights w (summing to 1) of x (grid shape + event)."""
    w = w.reshape(w.shape + (1,) * (x.ndim - w.ndim))
    m = (w * x).sum(axis=(0, 1))
    return m, np.sqrt(np.maximum((w * x * x).sum(axis=(0, 1)) - m * m, 0))


def eight_schools(n_mu=4001, n_u=4000):
    d = _load("eight_schools_centered")["data"]
    y, s = np.array(d["y"]), np.array(d["sigma"])
    mu = np.linspace(-40, 50, n_mu)                  # prior N(0, 5): +-8 sd
    u = (np.arange(n_u) + 0.5) / n_u
    tau = 5 * np.tan(np.pi * u / 2)
    M, T = np.meshgrid(mu, tau, indexing="ij")
    v = s ** 2 + T[..., None] ** 2
    loglik = -0.5 * (((y - M[..., None]) ** 2) / v + np.log(2 * np.pi * v)).sum(-1)
    logprior_mu = -0.5 * M ** 2 / 25 - 0.5 * np.log(2 * np.pi * 25)
    logj = logprior_mu + loglik                      # density in (mu, u); u's prior is uniform
    dmu, du = mu[1] - mu[0], 1.0 / n_u
    log_evidence = float(_logsumexp(logj) + np.log(dmu * du))
    w = np.exp(logj - logj.max())
    w /= w.sum()
    prec = 1 / s ** 2 + 1 / T[..., None] ** 2
    cm = (y / s ** 2 + M[..., None] / T[..., None] ** 2) / prec      # E[theta_j | mu, tau, y]
    out = {}
    m_mu, s_mu = _stats(w, M)
    m_tau, s_tau = _stats(w, T)
    Eth = (w[..., None] * cm).sum((0, 1))
    sd_th = np.sqrt((w[..., None] * (cm ** 2 + 1 / prec)).sum((0, 1)) - Eth ** 2)
    em = (cm - M[..., None]) / T[..., None]                          # E[eta_j | mu, tau, y]
    ev = 1 / (prec * T[..., None] ** 2)
    Eeta = (w[..., None] * em).sum((0, 1))
    sd_eta = np.sqrt((w[..., None] * (em ** 2 + ev)).sum((0, 1)) - Eeta ** 2)
    common = {"mu": (m_mu, s_mu), "tau": (m_tau, s_tau)}
    # marginal densities on plotting grids, from a second (mu, tau) grid uniform in tau
    mu_x, tau_x = np.linspace(-15, 25, 161), np.linspace(0, 20, 161)
    Mx, Tx = np.meshgrid(np.linspace(-40, 50, 1201), np.linspace(1e-6, 200, 4001), indexing="ij")
    vx = s ** 2 + Tx[..., None] ** 2
    lj = (-0.5 * Mx ** 2 / 25 - np.log1p((Tx / 5) ** 2)
          - 0.5 * (((y - Mx[..., None]) ** 2) / vx + np.log(vx)).sum(-1))
    px = np.exp(lj - lj.max())
    px /= px.sum() * (Mx[1, 0] - Mx[0, 0]) * (Tx[0, 1] - Tx[0, 0])
    pdf_mu = np.interp(mu_x, Mx[:, 0], px.sum(1) * (Tx[0, 1] - Tx[0, 0]))
    pdf_tau = np.interp(tau_x, Tx[0], px.sum(0) * (Mx[1, 0] - Mx[0, 0]))
    density = {"mu": {"x": _r(mu_x, 4), "pdf": _r(pdf_mu, 6)}, "tau": {"x": _r(tau_x, 4), "pdf": _r(pdf_tau, 6)}}
    method = (f"quadrature: (mu, u) grid {n_mu} x {n_u}, tau = 5 tan(pi u / 2); theta and eta Gaussian "
              f"given (mu, tau)")
    for name, extra in (("eight_schools_centered", {"theta": (Eth, sd_th)}),
                        ("eight_schools_noncentered", {"eta": (Eeta, sd_eta)})):
        out[name] = {"method": method, "log_evidence": log_evidence,
                     "latents": {k: {"mean": _r(m), "sd": _r(sd)} for k, (m, sd) in {**common, **extra}.items()},
                     "density": density}
    return out


def occupancy(n=2000):
    d = _load("occupancy")
    y = np.array(d["data"]["y"])
    J = y.shape[1]
    det = y.sum(1)
    g = (np.arange(n) + 0.5) / n
    PSI, P = np.meshgrid(g, g, indexing="ij")
    seen = det > 0
    # per site: P(y_i | psi, p) = psi p^d (1-p)^(J-d) + (1 - psi) [d = 0]
    log_occ = np.log(PSI[..., None]) + det * np.log(P[..., None]) + (J - det) * np.log1p(-P[..., None])
    log_site = np.where(seen, log_occ, np.logaddexp(log_occ, np.log1p(-PSI[..., None])))
    logj = log_site.sum(-1)
    log_evidence = float(_logsumexp(logj) + 2 * np.log(1.0 / n))
    w = np.exp(logj - logj.max())
    w /= w.sum()
    pz = np.exp(log_occ - log_site)                                 # P(z_i = 1 | psi, p, y_i)
    m_psi, s_psi = _stats(w, PSI)
    m_p, s_p = _stats(w, P)
    ez = (w[..., None] * pz).sum((0, 1))
    density = {k: {"x": _r(g[::10], 5), "pdf": _r((w.sum(ax) * n)[::10], 6)} for k, ax in (("psi", 1), ("p", 0))}
    return {"occupancy": {
        "method": f"quadrature: (psi, p) midpoint grid {n} x {n}; z summed out per site",
        "log_evidence": log_evidence,
        "latents": {"psi": {"mean": _r(m_psi), "sd": _r(s_psi)}, "p": {"mean": _r(m_p), "sd": _r(s_p)},
                    "z": {"mean": _r(ez), "sd": _r(np.sqrt(ez * (1 - ez)))}},
        "density": density}}


def nile(n=1000):
    from scipy.special import erfinv
    d = _load("nile")
    y = np.array(d["data"]["flow"], dtype=float)
    args = {nd["name"]: nd["args"] for nd in d["nodes"]}
    s_obs, s_lev = args["sigma_obs"]["scale"], args["sigma_level"]["scale"]
    m0, v0 = args["level0"]["loc"], args["level0"]["scale"] ** 2
    u = (np.arange(n) + 0.5) / n
    so, sl = np.meshgrid(s_obs * np.sqrt(2) * erfinv(u), s_lev * np.sqrt(2) * erfinv(u), indexing="ij")
    so, sl = so.ravel(), sl.ravel()

    def kalman(so, sl, keep=False):
        """log p(y | scales) with level0 ~ N(m0, v0) integrated out, and (if keep) the
        filtered and one-step predicted moments per year."""
        m, v = np.full(so.shape, float(m0)), np.full(so.shape, float(v0))
        ll = np.zeros(so.shape)
        out = []
        for t in range(len(y)):
            mp, vp = m, v + sl ** 2                     # level_t | y_<t
            f = vp + so ** 2
            ll += -0.5 * (np.log(2 * np.pi * f) + (y[t] - mp) ** 2 / f)
            gain = vp / f
            m, v = mp + gain * (y[t] - mp), vp * (1 - gain)
            if keep:
                out.append((mp, vp, m, v))
        return ll, out
    ll, _ = kalman(so, sl)
    lw = ll - ll.max()
    keep = lw > np.log(1e-14)
    so, sl, lw = so[keep], sl[keep], lw[keep]
    w = np.exp(lw)
    w /= w.sum()
    log_evidence = float(ll.max() + np.log(np.exp(ll - ll.max()).sum()) - np.log(len(ll)))
    _, out = kalman(so, sl, keep=True)
    T = len(y)
    ms, vs = np.empty((T, len(so))), np.empty((T, len(so)))   # RTS smoother
    ms[-1], vs[-1] = out[-1][2], out[-1][3]
    for t in range(T - 2, -1, -1):
        mp, vp = out[t + 1][0], out[t + 1][1]
        g = out[t][3] / vp
        ms[t] = out[t][2] + g * (ms[t + 1] - mp)
        vs[t] = out[t][3] + g * g * (vs[t + 1] - vp)
    g0 = v0 / out[0][1]                              # level0 given level_1871's smoothed moments
    m_init = m0 + g0 * (ms[0] - out[0][0])
    v_init = v0 + g0 * g0 * (vs[0] - out[0][1])

    def mix(mean, var):                              # moments of the grid's mixture of Gaussians
        mu = (w * mean).sum(-1)
        return mu, np.sqrt((w * (var + mean ** 2)).sum(-1) - mu ** 2)
    lev_m, lev_s = mix(ms, vs)
    l0_m, l0_s = mix(m_init, v_init)
    return {"nile": {"method": f"quadrature: (sigma_obs, sigma_level) on a {n} x {n} grid of prior quantiles; "
                               f"Kalman filter and RTS smoother for the levels",
                     "log_evidence": log_evidence,
                     "latents": {"sigma_obs": {"mean": _r((w * so).sum()), "sd": _r(np.sqrt((w * so ** 2).sum() - (w * so).sum() ** 2))},
                                 "sigma_level": {"mean": _r((w * sl).sum()), "sd": _r(np.sqrt((w * sl ** 2).sum() - (w * sl).sum() ** 2))},
                                 "level0": {"mean": _r(l0_m), "sd": _r(l0_s)},
                                 "level": {"mean": _r(lev_m), "sd": _r(lev_s)}}}}


def _nuts(model, data, draws=25000, warmup=2000, chains=4, seed=0):
    import jax
    from numpyro.diagnostics import effective_sample_size
    from numpyro.infer import MCMC, NUTS
    mcmc = MCMC(NUTS(model, target_accept_prob=0.95), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(seed), **data)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return samples, div, effective_sample_size


def _summ(x, ess_fn):
    """x: (chains, draws, ...) -> mean, sd, mcse of the mean, ESS."""
    flat = x.reshape(-1, *x.shape[2:])
    ess = np.asarray(ess_fn(x))
    sd = flat.std(0)
    return {"mean": _r(flat.mean(0)), "sd": _r(sd), "mcse": _r(sd / np.sqrt(ess), 6), "ess": _r(ess, 0)}


def radon():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    d = _load("radon")
    y = np.array([[np.nan if v is None else v for v in row] for row in d["data"]["y"]])
    obs = ~np.isnan(y)
    county = np.nonzero(obs)[0]
    yv, base = y[obs], np.array(d["data"]["basement"])[obs]
    log_u = np.array(d["data"]["log_u"])

    def model(county, base, log_u, yv):
        g0 = numpyro.sample("g0", dist.Normal(0, 10))
        g1 = numpyro.sample("g1", dist.Normal(0, 10))
        b = numpyro.sample("b", dist.Normal(0, 10))
        sigma_a = numpyro.sample("sigma_a", dist.HalfNormal(1))
        sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(1))
        eta = numpyro.sample("eta", dist.Normal(0, 1).expand([len(log_u)]))
        a = numpyro.deterministic("a", g0 + g1 * log_u + sigma_a * eta)
        numpyro.sample("y", dist.Normal(a[county] + b * base, sigma_y), obs=yv)

    samples, div, ess_fn = _nuts(model, dict(county=jnp.array(county), base=jnp.array(base),
                                             log_u=jnp.array(log_u), yv=jnp.array(yv)))
    lat = {k: _summ(samples[k], ess_fn) for k in ("g0", "g1", "b", "sigma_a", "sigma_y", "a")}
    return {"radon": {"method": "NUTS (numpyro), non-centred a, 4 chains x 25000 draws, 2000 warm-up",
                      "divergences": div, "latents": lat}}


def seeds():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    d = _load("seeds")
    X, n, r = (np.array(d["data"][k]) for k in ("X", "n", "r"))
    scale = next(nd for nd in d["nodes"] if nd["name"] == "alpha")["args"]["scale"]

    def model(X, n, r):
        alpha = numpyro.sample("alpha", dist.Normal(0, scale).expand([4]))
        sigma = numpyro.sample("sigma", dist.HalfNormal(1))
        eta = numpyro.sample("eta", dist.Normal(0, 1).expand([len(n)]))
        b = numpyro.deterministic("b", sigma * eta)
        numpyro.sample("r", dist.Binomial(n, logits=X @ alpha + b), obs=r)

    samples, div, ess_fn = _nuts(model, dict(X=jnp.array(X, dtype=float), n=jnp.array(n), r=jnp.array(r)))
    lat = {k: _summ(samples[k], ess_fn) for k in ("alpha", "sigma", "b")}
    return {"seeds": {"method": "NUTS (numpyro), non-centred b, 4 chains x 25000 draws, 2000 warm-up",
                      "divergences": div, "latents": lat}}


def _r(x, digits=5):
    x = np.asarray(x, dtype=float)
    return round(float(x), digits) if x.ndim == 0 else [round(float(v), digits) for v in x.ravel()]


MAKERS = {"eight_schools": eight_schools, "occupancy": occupancy, "radon": radon, "seeds": seeds, "nile": nile}

if __name__ == "__main__":
    todo = sys.argv[1:] or list(MAKERS)
    for key in todo:
        t = time.time()
        for name, doc in MAKERS[key]().items():
            doc = {"model": name, **doc, "script": "assets/reference/make_reference.py"}
            (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
            print(f"wrote {name}.json ({time.time() - t:.0f} s)")
