"""The QEM paper's bus breakdown and radon models in Pyro, fitted by MP VI through
TraceTMC_ELBO (pyro-ppl is the `bench` extra: `pip install --no-deps pyro-ppl pyro-api`).

The guide is the engine's starting Q, independent Normals per latent and plate element,
K samples each (`config_enumerate(num_samples=K, expand=False)`): the TMC estimate is
then the engine's log P_MP. Occupancy is left out: its z is discrete, and TraceTMC's
gradient needs reparameterised guide sites.
"""
from __future__ import annotations

import torch

from . import paper, pyro_tmc

# plates of each model, outermost first, as Pyro plate dims from the right
PLATES = {"bus_breakdown": ("years", "boroughs", "ids"), "radon": ("states", "zips")}


def engine_model(name: str, **kwargs):
    """The paper model with an independent Normal Q for every latent (a vector latent
    would get a MultivariateNormal by default), so that Pyro's guide can be the same."""
    m = paper.MODELS[name](**kwargs)
    for latent in m.latents:
        m.proposal[latent] = {"dist": "Normal"}
    return m


class PyroTMC(pyro_tmc.PyroTMC):
    """One `step()` = TMC loss, backward, Adam step, with the engine's data and starting Q
    (the data live in the model's closure: no model arguments)."""
    model_args = ()

    def __init__(self, name: str, fitter, K: int, seed: int = 0, lr: float = 0.03, **kwargs):
        import pyro
        import pyro.distributions as dist
        from pyro.infer import TraceTMC_ELBO, config_enumerate

        pyro.set_rng_seed(seed)
        pyro.clear_param_store()
        prog = fitter.program
        plates = PLATES[name]
        n = len(plates)
        self.pyro = pyro
        data = {k: torch.as_tensor(v, dtype=prog.dtype) for k, v in prog.model.data.items()}
        self.params = {}
        for latent in prog.latents:   # guide parameters shaped for Pyro's plate dims
            q = prog.proposal[latent]
            chain = prog.chain[latent]
            event = q.event_shape
            shape = [prog.plate_sizes[p] if p in chain else 1 for p in plates[:len(chain) or 0]]
            shape = shape + [1] * (n - len(shape)) if chain else []
            self.params[latent] = (q.raw["loc"].detach().clone().reshape(tuple(shape) + event).requires_grad_(),
                                   q.raw["log_scale"].detach().clone().reshape(tuple(shape) + event).requires_grad_())
        p = self.params

        def normal(latent, loc, scale, event=0):
            d = dist.Normal(loc, scale)
            return pyro.sample(latent, d.to_event(event) if event else d)

        if name == "radon":
            def model():
                gm = normal("global_mean", torch.zeros(()), torch.ones(()))
                gls = normal("global_log_sigma", torch.zeros(()), torch.ones(()))
                with pyro.plate("states", prog.plate_sizes["states"], dim=-2):
                    sm = normal("state_mean", gm, gls.exp())
                    ss = normal("state_log_sigma", torch.zeros(()), torch.ones(()))
                    bu = normal("beta_u", torch.zeros(()), torch.ones(()))
                    bb = normal("beta_basement", torch.zeros(()), torch.ones(()))
                    with pyro.plate("zips", prog.plate_sizes["zips"], dim=-1):
                        pyro.sample("log_radon", dist.Normal(sm + data["basement"] * bb + data["log_u"] * bu, ss.exp()),
                                    obs=data["log_radon"])

            def guide():
                for g in ("global_mean", "global_log_sigma"):
                    normal(g, p[g][0], p[g][1].exp())
                with pyro.plate("states", prog.plate_sizes["states"], dim=-2):
                    for g in ("state_mean", "state_log_sigma", "beta_u", "beta_basement"):
                        normal(g, p[g][0], p[g][1].exp())
        else:
            def model():
                zero, one = torch.zeros(()), torch.ones(())
                normal("log_sigma_phi_psi", zero, one)
                psi = normal("psi", torch.zeros(data["run_type"].shape[-1]), one, 1)
                phi = normal("phi", torch.zeros(data["company"].shape[-1]), one, 1)
                sb, mb = normal("sigma_beta", zero, one), normal("mu_beta", zero, one)
                with pyro.plate("years", prog.plate_sizes["years"], dim=-3):
                    beta = normal("beta", mb, sb.exp())
                    sa = normal("sigma_alpha", zero, one)
                    with pyro.plate("boroughs", prog.plate_sizes["boroughs"], dim=-2):
                        alpha = normal("alpha", beta, sa.exp())
                        with pyro.plate("ids", prog.plate_sizes["ids"], dim=-1):
                            # an enumerated phi is (K, 1, 1, 1, 40): its plate dims line up with the data's
                            logits = alpha + (phi * data["company"]).sum(-1) + (psi * data["run_type"]).sum(-1)
                            pyro.sample("delay", dist.Binomial(131, logits=logits), obs=data["delay"])

            def guide():
                for g in ("log_sigma_phi_psi", "sigma_beta", "mu_beta"):
                    normal(g, p[g][0], p[g][1].exp())
                for g in ("psi", "phi"):
                    normal(g, p[g][0], p[g][1].exp(), 1)
                with pyro.plate("years", prog.plate_sizes["years"], dim=-3):
                    normal("beta", p["beta"][0], p["beta"][1].exp())
                    normal("sigma_alpha", p["sigma_alpha"][0], p["sigma_alpha"][1].exp())
                    with pyro.plate("boroughs", prog.plate_sizes["boroughs"], dim=-2):
                        normal("alpha", p["alpha"][0], p["alpha"][1].exp())

        self.model = model
        self.guide = config_enumerate(guide, default="parallel", num_samples=K, expand=False)
        self.elbo = TraceTMC_ELBO(max_plate_nesting=n)
        self.opt = torch.optim.Adam([t for pair in self.params.values() for t in pair], lr=lr)
