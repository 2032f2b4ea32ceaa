"""The hierarchical Gaussian's MP computation written directly in torch (no engine).

    mu ~ N(0, 1);  z_g ~ N(mu, 1), g = 1..G;  x_gn ~ N(z_g, 1), n = 1..N

K particles per latent from an independent Normal proposal Q (one for mu, one per group
for z), the factors

    f_mu[k]         = log N(mu_k; 0, 1)   - log Q_mu(mu_k)
    f_z[k, j, g]    = log N(z_jg; mu_k, 1) - log Q_z(z_jg)
    f_x[j, g]       = sum_n log N(x_gn; z_jg, 1)

and the MP estimate

    log P_MP = logsumexp_k (f_mu[k] + sum_g [logsumexp_j (f_z[k, j, g] + f_x[j, g]) - log K]) - log K.

Marginal importance weights are the gradients of log P_MP with respect to zero "source"
tensors added to f_mu and f_z (one backward pass). QEM maps an exponential moving
average of the weighted moments E[z], E[z^2] to Q; VI takes an Adam step on -log P_MP
with reparameterised samples. Both report the ELBO and the ESS per latent, as
`engine.fit.Fitter.step` does, so the two do the same work per iteration.
"""
from __future__ import annotations

import math

import torch

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_lp(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - _HALF_LOG_2PI


def _unit_normal_lp(x, loc):
    return -0.5 * (x - loc) ** 2 - _HALF_LOG_2PI


def log_p_mp(x, mu, z, q, sources=None):
    """log P_MP for particles mu (K,) and z (K, G) under proposal parameters q
    (mu_loc, mu_scale: scalars; z_loc, z_scale: (G,)); x is (G, N)."""
    K = mu.shape[0]
    f_mu = _unit_normal_lp(mu, 0.0) - _normal_lp(mu, q["mu_loc"], q["mu_scale"])          # (K,)
    f_z = _unit_normal_lp(z[None, :, :], mu[:, None, None]) \
        - _normal_lp(z, q["z_loc"], q["z_scale"])[None]                                    # (K, K, G)
    f_x = _unit_normal_lp(x[None, :, :], z[:, :, None]).sum(-1)                             # (K, G)
    if sources is not None:
        f_mu = f_mu + sources[0]
        f_z = f_z + sources[1][None]
    inner = torch.logsumexp(f_z + f_x[None], dim=1) - math.log(K)                           # (K, G)
    return torch.logsumexp(f_mu + inner.sum(-1), dim=0) - math.log(K)


def mp_weights(x, mu, z, q, retain_graph=False):
    """log P_MP and the marginal weights of mu and z, from zero source terms' gradients."""
    j_mu = torch.zeros_like(mu, requires_grad=True)
    j_z = torch.zeros_like(z, requires_grad=True)
    lp = log_p_mp(x, mu, z, q, (j_mu, j_z))
    w_mu, w_z = torch.autograd.grad(lp, [j_mu, j_z], retain_graph=retain_graph)
    return lp, w_mu, w_z


class HandQEM:
    """QEM on the hierarchical Gaussian, by hand."""

    def __init__(self, x: torch.Tensor, K: int, q: dict, seed: int = 0, ema_power: float = 0.6):
        self.x, self.K, self.ema_power = x, K, ema_power
        self.q = {k: v.detach().clone() for k, v in q.items()}
        self.gen = torch.Generator(device=x.device).manual_seed(seed)
        self.t = 0
        self.moments = None

    def sample(self):
        G = self.x.shape[0]
        eps_mu = torch.randn(self.K, generator=self.gen, device=self.x.device, dtype=self.x.dtype)
        eps_z = torch.randn(self.K, G, generator=self.gen, device=self.x.device, dtype=self.x.dtype)
        return self.q["mu_loc"] + self.q["mu_scale"] * eps_mu, self.q["z_loc"] + self.q["z_scale"] * eps_z

    def step(self):
        mu, z = self.sample()
        lp, w_mu, w_z = mp_weights(self.x, mu, z, self.q)
        ess = {"mu": (1 / (w_mu * w_mu).sum(0)).cpu().numpy(), "z": (1 / (w_z * w_z).sum(0)).cpu().numpy()}
        eta = (self.t + 1) ** -self.ema_power
        with torch.no_grad():
            new = {"mu": [(w_mu.double() * mu.double()).sum(0), (w_mu.double() * mu.double() ** 2).sum(0)],
                   "z": [(w_z.double() * z.double()).sum(0), (w_z.double() * z.double() ** 2).sum(0)]}
            if self.moments is None:
                self.moments = new
            else:
                self.moments = {k: [(1 - eta) * o + eta * n for o, n in zip(self.moments[k], new[k])] for k in new}
            for k in ("mu", "z"):
                m1, m2 = self.moments[k]
                var = (m2 - m1 ** 2).clamp_min(1e-6 * (1 + m1 ** 2))
                self.q[f"{k}_loc"] = m1.to(self.x.dtype)
                self.q[f"{k}_scale"] = var.sqrt().to(self.x.dtype)
        self.t += 1
        return float(lp.detach()), ess


class HandVI:
    """MP VI on the hierarchical Gaussian, by hand: reparameterised samples, Adam."""

    def __init__(self, x: torch.Tensor, K: int, q: dict, seed: int = 0, lr: float = 0.03):
        self.x, self.K = x, K
        self.params = {"mu_loc": q["mu_loc"].detach().clone().requires_grad_(),
                       "mu_log_scale": q["mu_scale"].detach().log().requires_grad_(),
                       "z_loc": q["z_loc"].detach().clone().requires_grad_(),
                       "z_log_scale": q["z_scale"].detach().log().requires_grad_()}
        self.opt = torch.optim.Adam(list(self.params.values()), lr=lr)
        self.gen = torch.Generator(device=x.device).manual_seed(seed)

    def step(self):
        p = self.params
        G = self.x.shape[0]
        q = {"mu_loc": p["mu_loc"], "mu_scale": p["mu_log_scale"].exp(),
             "z_loc": p["z_loc"], "z_scale": p["z_log_scale"].exp()}
        mu = q["mu_loc"] + q["mu_scale"] * torch.randn(self.K, generator=self.gen, device=self.x.device,
                                                       dtype=self.x.dtype)
        z = q["z_loc"] + q["z_scale"] * torch.randn(self.K, G, generator=self.gen, device=self.x.device,
                                                    dtype=self.x.dtype)
        lp, w_mu, w_z = mp_weights(self.x, mu, z, q, retain_graph=True)
        ess = {"mu": (1 / (w_mu * w_mu).sum(0)).cpu().numpy(), "z": (1 / (w_z * w_z).sum(0)).cpu().numpy()}
        self.opt.zero_grad()
        (-lp).backward()
        self.opt.step()
        return float(lp.detach()), ess


def engine_q(program) -> dict:
    """The engine program's current Normal proposal for mu and z, as plain tensors."""
    out = {}
    for name in ("mu", "z"):
        raw = program.proposal[name].raw
        out[f"{name}_loc"] = raw["loc"].detach().clone()
        out[f"{name}_scale"] = raw["log_scale"].detach().exp()
    return out


def engine_agreement(fitter, seed: int = 123) -> dict:
    """The engine's and the hand-written log P_MP on the very same particles and Q."""
    prog = fitter.program
    s = prog.sample(seed)
    x = prog._observed["x"][0].t
    mu = s.values["mu"].t.detach()
    z = s.values["z"].t.detach()
    with torch.no_grad():
        hand = float(log_p_mp(x, mu, z, engine_q(prog)))
    eng = s.log_marginal()
    return {"engine": eng, "handwritten": hand, "abs_diff": abs(eng - hand)}
