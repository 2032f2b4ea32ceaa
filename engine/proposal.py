"""Independent approximate posteriors Q, one exponential-family factor per latent and
plate element.

Each family keeps unconstrained parameters (so RWS and VI can take gradient steps) and
knows its sufficient statistics and the map from their expectations back to parameters
(the QEM M-step). A `Proposal` holds one family per latent; latents without one keep
the prior as proposal.
"""
from __future__ import annotations

import torch
import torch.distributions as D
from torch.distributions import constraints

from .dists import HALF_LOG_2PI, event_sum
from .errors import ModelError

_EPS = 1e-6


def _inv_digamma(y: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """x with digamma(x) = y, by Newton from Minka's initialisation."""
    x = torch.where(y >= -2.22, torch.exp(y) + 0.5, -1.0 / (y - torch.digamma(torch.ones_like(y))))
    for _ in range(iters):
        x = x - (torch.digamma(x) - y) / torch.polygamma(1, x)
        x = x.clamp_min(_EPS)
    return x


def _dirichlet_from_mean_log(mlog: torch.Tensor, iters: int = 50) -> torch.Tensor:
    """Concentration alpha with E[log x_j] = mlog_j (Minka's fixed point)."""
    p = torch.exp(mlog)
    p = p / p.sum(-1, keepdim=True)
    alpha = p * 2.0
    for _ in range(iters):
        alpha = _inv_digamma(torch.digamma(alpha.sum(-1, keepdim=True)) + mlog)
    return alpha


def _gamma_shape(s: torch.Tensor, iters: int = 8) -> torch.Tensor:
    """Shape a with log a - digamma(a) = s (s = log E x - E log x > 0), by Newton. s is
    about cv^2 / 2, so a scale whose sd is a thousandth of its mean has s ~ 5e-7: the floor
    is far below that (moments come in float64)."""
    s = s.clamp_min(1e-12)
    a = (3 - s + torch.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s)
    for _ in range(iters):
        a = a - (torch.log(a) - torch.digamma(a) - s) / (1 / a - torch.polygamma(1, a))
        a = a.clamp_min(_EPS)
    return a


class Family:
    """One Q family. `raw` holds unconstrained parameter tensors shaped (*plates, *event)."""
    name = ""
    value_rank = 0      # native event rank of a value
    discrete = False
    initial_moments = None   # expected statistics Q was built from (QEM's average starts there)

    def __init__(self, raw: dict[str, torch.Tensor], event_shape: tuple[int, ...]):
        self.raw = raw
        self.event_shape = tuple(event_shape)   # full event shape of the latent's value

    def narrow(self, axis: int, start: int, stop: int) -> "Family":
        """The same Q for plate elements start..stop-1 of batch axis `axis` (a view: its
        gradients reach this Q's parameters)."""
        return type(self)({k: v.narrow(axis, start, stop - start) for k, v in self.raw.items()}, self.event_shape)

    @property
    def n_extra(self):
        return len(self.event_shape) - self.value_rank

    def cast(self, dtype: torch.dtype) -> "Family":
        """The parameters in `dtype`: QEM's M-step maps float64 moments, then casts."""
        self.raw = {k: v.to(dtype) for k, v in self.raw.items()}
        return self

    def expected_stats(self, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """E[stats(x)] under this family with constrained parameters `params` (a model
        file's starting Q, `"init"`): the moments QEM's average starts from."""
        raise NotImplementedError

    def dist(self) -> D.Distribution:
        raise NotImplementedError

    def stats(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def set_moments(self, m: list[torch.Tensor]) -> None:
        raise NotImplementedError

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        lp = self.dist().log_prob(x)
        return event_sum(lp, self.n_extra)

    def sample(self, K: int, reparam: bool) -> torch.Tensor:
        d = self.dist()
        return d.rsample((K,)) if reparam else d.sample((K,))

    def params(self) -> dict[str, torch.Tensor]:
        """Constrained parameters, for people."""
        d = self.dist()
        return {k: getattr(d, k).detach() for k in self.shown}

    @classmethod
    def from_moments(cls, m, event_shape):
        f = cls({}, event_shape)
        f.set_moments(m)
        return f


class NormalQ(Family):
    name, shown = "Normal", ("loc", "scale")

    def dist(self):
        return D.Normal(self.raw["loc"], torch.exp(self.raw["log_scale"]), validate_args=False)

    # log_prob and sample by hand: the same values as dist()'s, without building a
    # torch Distribution (and its argument broadcasting) twice per iteration
    def log_prob(self, x):
        loc, log_scale = self.raw["loc"], self.raw["log_scale"]
        z = (x - loc) * torch.exp(-log_scale)
        lp = torch.addcmul(-(log_scale + HALF_LOG_2PI), z, z, value=-0.5)
        return event_sum(lp, self.n_extra)

    def sample(self, K, reparam):
        loc = self.raw["loc"]
        eps = torch.randn((K, *loc.shape), dtype=loc.dtype, device=loc.device)
        x = torch.addcmul(loc, torch.exp(self.raw["log_scale"]), eps)
        return x if reparam else x.detach()

    def stats(self, x):
        return [x, x * x]

    def set_moments(self, m):
        sq = m[0] * m[0]
        var = (m[1] - sq).clamp_min(16 * torch.finfo(sq.dtype).eps * (1 + sq))   # rounding, not a prior
        self.raw = {"loc": m[0].clone(), "log_scale": 0.5 * torch.log(var)}

    def expected_stats(self, p):
        return [p["loc"], p["loc"] ** 2 + p["scale"] ** 2]


class LogNormalQ(Family):
    name, shown = "LogNormal", ("loc", "scale")

    def dist(self):
        return D.LogNormal(self.raw["loc"], torch.exp(self.raw["log_scale"]), validate_args=False)

    def stats(self, x):
        lx = torch.log(x)
        return [lx, lx * lx]

    set_moments = NormalQ.set_moments
    expected_stats = NormalQ.expected_stats


class GammaQ(Family):
    name, shown = "Gamma", ("concentration", "rate")

    def dist(self):
        return D.Gamma(torch.exp(self.raw["log_concentration"]), torch.exp(self.raw["log_rate"]), validate_args=False)

    def stats(self, x):
        return [x, torch.log(x)]

    def set_moments(self, m):
        mean = m[0].clamp_min(1e-30)
        a = _gamma_shape(torch.log(mean) - m[1])
        self.raw = {"log_concentration": torch.log(a), "log_rate": torch.log(a / mean)}

    def expected_stats(self, p):
        a, b = p["concentration"], p["rate"]
        return [a / b, torch.digamma(a) - torch.log(b)]


class InverseGammaQ(Family):
    name, shown = "InverseGamma", ("concentration", "rate")

    def dist(self):
        return D.InverseGamma(torch.exp(self.raw["log_concentration"]), torch.exp(self.raw["log_rate"]),
                              validate_args=False)

    def stats(self, x):
        return [1 / x, torch.log(x)]

    def set_moments(self, m):   # 1/x ~ Gamma(a, b)
        mean = m[0].clamp_min(1e-30)
        a = _gamma_shape(torch.log(mean) + m[1])
        self.raw = {"log_concentration": torch.log(a), "log_rate": torch.log(a / mean)}

    def expected_stats(self, p):
        a, b = p["concentration"], p["rate"]
        return [a / b, torch.log(b) - torch.digamma(a)]


class ExponentialQ(Family):
    name, shown = "Exponential", ("rate",)

    def dist(self):
        return D.Exponential(torch.exp(self.raw["log_rate"]), validate_args=False)

    def stats(self, x):
        return [x]

    def set_moments(self, m):
        self.raw = {"log_rate": -torch.log(m[0].clamp_min(1e-30))}

    def expected_stats(self, p):
        return [1 / p["rate"]]


class BetaQ(Family):
    name, shown = "Beta", ("concentration1", "concentration0")

    def dist(self):
        return D.Beta(torch.exp(self.raw["log_c1"]), torch.exp(self.raw["log_c0"]), validate_args=False)

    def stats(self, x):
        x = x.clamp(1e-12, 1 - 1e-7)
        return [torch.log(x), torch.log1p(-x)]

    def set_moments(self, m):
        alpha = _dirichlet_from_mean_log(torch.stack([m[0], m[1]], -1))
        self.raw = {"log_c1": torch.log(alpha[..., 0]), "log_c0": torch.log(alpha[..., 1])}

    def expected_stats(self, p):
        a, b = p["concentration1"], p["concentration0"]
        return [torch.digamma(a) - torch.digamma(a + b), torch.digamma(b) - torch.digamma(a + b)]


class DirichletQ(Family):
    name, shown, value_rank = "Dirichlet", ("concentration",), 1

    def dist(self):
        return D.Dirichlet(torch.exp(self.raw["log_concentration"]), validate_args=False)

    def stats(self, x):
        return [torch.log(x.clamp_min(1e-12))]

    def set_moments(self, m):
        self.raw = {"log_concentration": torch.log(_dirichlet_from_mean_log(m[0]))}

    def expected_stats(self, p):
        a = p["concentration"]
        return [torch.digamma(a) - torch.digamma(a.sum(-1, keepdim=True))]

    def sample(self, K, reparam):
        x = super().sample(K, reparam)
        return x.clamp_min(torch.finfo(x.dtype).tiny)


# Discrete Q families sample from a defensive mixture, (1 - DEFENSIVE) Q + DEFENSIVE
# uniform, so that a value Q has learned to think impossible still turns up among the
# K particles now and then: with a bare Q(0) of 1e-6 a QEM run that once overshoots
# never sees z = 0 again and its moment estimates stick at 1.
DEFENSIVE = 0.05


class BernoulliQ(Family):
    name, shown, discrete = "Bernoulli", ("probs",), True

    def dist(self):
        p = (1 - DEFENSIVE) * torch.sigmoid(self.raw["logits"]) + DEFENSIVE / 2
        return D.Bernoulli(probs=p, validate_args=False)

    def params(self):
        return {"probs": torch.sigmoid(self.raw["logits"]).detach()}

    def stats(self, x):
        return [x]

    def set_moments(self, m):
        p = m[0].clamp(1e-6, 1 - 1e-6)
        self.raw = {"logits": torch.log(p) - torch.log1p(-p)}

    def expected_stats(self, p):
        return [p["probs"]]


class CategoricalQ(Family):
    name, shown, discrete = "Categorical", ("probs",), True

    def dist(self):
        p = torch.softmax(self.raw["logits"], -1)
        return D.Categorical(probs=(1 - DEFENSIVE) * p + DEFENSIVE / p.shape[-1], validate_args=False)

    def params(self):
        return {"probs": torch.softmax(self.raw["logits"], -1).detach()}

    def stats(self, x):
        n = self.raw["logits"].shape[-1]
        return [torch.nn.functional.one_hot(x.long(), n).to(self.raw["logits"].dtype)]

    def set_moments(self, m):
        p = m[0].clamp_min(1e-6)
        self.raw = {"logits": torch.log(p / p.sum(-1, keepdim=True))}

    def expected_stats(self, p):
        return [p["probs"] / p["probs"].sum(-1, keepdim=True)]


class PoissonQ(Family):
    name, shown, discrete = "Poisson", ("rate",), True

    def dist(self):
        return D.Poisson(torch.exp(self.raw["log_rate"]), validate_args=False)

    def stats(self, x):
        return [x]

    def set_moments(self, m):
        self.raw = {"log_rate": torch.log(m[0].clamp_min(1e-6))}

    def expected_stats(self, p):
        return [p["rate"]]


class MultivariateNormalQ(Family):
    name, shown, value_rank = "MultivariateNormal", ("loc", "covariance_matrix"), 1

    def dist(self):
        L = torch.tril(self.raw["tril"], -1) + torch.diag_embed(torch.exp(torch.diagonal(self.raw["tril"], 0, -2, -1)))
        return D.MultivariateNormal(self.raw["loc"], scale_tril=L, validate_args=False)

    def stats(self, x):
        return [x, x.unsqueeze(-1) * x.unsqueeze(-2)]

    def set_moments(self, m):
        mu = m[0]
        cov = m[1] - mu.unsqueeze(-1) * mu.unsqueeze(-2)
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        n = mu.shape[-1]
        eye = torch.eye(n, dtype=mu.dtype, device=mu.device)
        jitter = _EPS * (1 + torch.diagonal(cov, 0, -2, -1).abs().mean(-1))[..., None, None]
        L, info = torch.linalg.cholesky_ex(cov + jitter * eye)
        bad = info != 0
        if bad.any():   # not positive definite: keep the diagonal
            diag = torch.diag_embed(torch.sqrt(torch.diagonal(cov, 0, -2, -1).clamp_min(_EPS)))
            L = torch.where(bad[..., None, None], diag, L)
        raw = torch.tril(L, -1) + torch.diag_embed(torch.log(torch.diagonal(L, 0, -2, -1)))
        self.raw = {"loc": mu.clone(), "tril": raw}

    def expected_stats(self, p):
        mu, cov = p["loc"], p["covariance_matrix"]
        return [mu, cov + mu.unsqueeze(-1) * mu.unsqueeze(-2)]


FAMILIES: dict[str, type[Family]] = {c.name: c for c in [
    NormalQ, LogNormalQ, GammaQ, InverseGammaQ, ExponentialQ, BetaQ, DirichletQ, BernoulliQ,
    CategoricalQ, PoissonQ, MultivariateNormalQ]}


# A Normal latent with a vector event of up to this many entries gets a MultivariateNormal Q
# by default: regression coefficients are correlated a posteriori, and an independent Q per
# entry then misses the posterior badly (its cost is d^2 statistics per plate element).
MVN_MAX_SIZE = 32


def default_family(prior_dist: str, support, event_size: int = 1) -> str | None:
    """The Q family for a latent whose prior is `prior_dist` with `support` and `event_size`
    entries per plate element, or None (the prior as proposal)."""
    if prior_dist in ("MultivariateNormal", "Dirichlet", "Categorical", "Bernoulli", "Poisson"):
        return prior_dist
    if prior_dist == "Normal" and 1 < event_size <= MVN_MAX_SIZE:
        return "MultivariateNormal"
    if prior_dist == "NegativeBinomial":
        return "Poisson"
    if support is constraints.real:
        return "Normal"
    if isinstance(support, (constraints.greater_than, constraints.greater_than_eq)) and support.lower_bound == 0:
        return "Gamma"
    if isinstance(support, constraints.interval) and (support.lower_bound, support.upper_bound) == (0.0, 1.0):
        return "Beta"
    return None


class Proposal:
    """Q for every latent that has a family; `families[name]` is None for prior proposal."""

    def __init__(self, families: dict[str, Family | None]):
        self.families = families

    def __getitem__(self, name) -> Family | None:
        return self.families.get(name)

    def state_dict(self) -> dict:
        return {n: None if f is None else {"family": f.name, "event_shape": list(f.event_shape),
                                           "raw": {k: v.detach().clone() for k, v in f.raw.items()}}
                for n, f in self.families.items()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Proposal":
        fams = {}
        for n, s in state.items():
            if s is None:
                fams[n] = None
                continue
            fams[n] = FAMILIES[s["family"]]({k: v.clone() for k, v in s["raw"].items()}, tuple(s["event_shape"]))
        return cls(fams)

    def parameters(self) -> list[torch.Tensor]:
        return [t for f in self.families.values() if f is not None for t in f.raw.values()]

    def describe(self) -> dict:
        return {n: ("prior" if f is None else f.name) for n, f in self.families.items()}


def check_family(name: str, where: str) -> type[Family]:
    if name not in FAMILIES:
        raise ModelError(f"{where}: unknown proposal family {name!r} (known: prior, {', '.join(FAMILIES)})")
    return FAMILIES[name]

