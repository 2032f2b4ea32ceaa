"""The hierarchical Gaussian in Pyro, fitted by MP VI through TraceTMC_ELBO.

Pyro is a benchmark-only extra (`pip install --no-deps pyro-ppl pyro-api`, so that it
cannot replace the project's torch). The guide is the same independent Normal Q as the
engine's (K particles per latent via `config_enumerate(num_samples=K)`), so the TMC
estimate is the same MP estimator as the engine's log P_MP.
"""
from __future__ import annotations

import torch


def available() -> tuple[bool, str]:
    try:
        import pyro  # noqa: F401
        from pyro.infer import TraceTMC_ELBO  # noqa: F401
    except Exception as e:   # ImportError, or a Pyro built for another torch
        return False, f"pyro-ppl is not importable ({type(e).__name__}: {e}); " \
                      f"install it with `pip install --no-deps pyro-ppl pyro-api`"
    import pyro
    return True, pyro.__version__


class PyroTMC:
    """One `step()` = TMC loss, backward, Adam step (lr as the engine's VI)."""

    def __init__(self, x: torch.Tensor, K: int, q: dict, seed: int = 0, lr: float = 0.03):
        import pyro
        import pyro.distributions as dist
        from pyro.infer import TraceTMC_ELBO, config_enumerate

        pyro.set_rng_seed(seed)
        pyro.clear_param_store()
        self.pyro, self.x, self.K, self.model_args = pyro, x, K, (x,)
        G, N = x.shape
        self.params = {"mu_loc": q["mu_loc"].detach().clone().requires_grad_(),
                       "mu_log_scale": q["mu_scale"].detach().log().requires_grad_(),
                       "z_loc": q["z_loc"].detach().clone().reshape(G, 1).requires_grad_(),
                       "z_log_scale": q["z_scale"].detach().log().reshape(G, 1).requires_grad_()}
        p = self.params
        one = torch.ones((), dtype=x.dtype, device=x.device)

        def model(x):
            mu = pyro.sample("mu", dist.Normal(0 * one, one))
            with pyro.plate("groups", G, dim=-2):
                z = pyro.sample("z", dist.Normal(mu, one))
                with pyro.plate("obs", N, dim=-1):
                    pyro.sample("x", dist.Normal(z, one), obs=x)

        @config_enumerate(default="parallel", num_samples=K, expand=False)
        def guide(x):
            pyro.sample("mu", dist.Normal(p["mu_loc"], p["mu_log_scale"].exp()))
            with pyro.plate("groups", G, dim=-2):
                pyro.sample("z", dist.Normal(p["z_loc"], p["z_log_scale"].exp()))

        self.model, self.guide = model, guide
        self.elbo = TraceTMC_ELBO(max_plate_nesting=2)
        self.opt = torch.optim.Adam(list(p.values()), lr=lr)

    def log_p(self) -> torch.Tensor:
        """The TMC estimate of log P(data) (Pyro's differentiable loss is its negative)."""
        return -self.elbo.differentiable_loss(self.model, self.guide, *self.model_args)

    def step(self) -> float:
        lp = self.log_p()
        self.opt.zero_grad()
        (-lp).backward()
        self.opt.step()
        return float(lp.detach())
