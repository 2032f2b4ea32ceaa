"""Estimates from a run, the `kn-result/1` document, predictive log-likelihood, ArviZ."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from .errors import ModelError
from .named import Named
from .program import Program
from .safeio import atomic_write_text

FORMAT = "kn-result/1"


class Result:
    def __init__(self, model, sample, method: str = "is", seed: int = 0, history: dict | None = None,
                 test_data: dict | None = None):
        self.model, self.sample, self.method, self.seed = model, sample, method, seed
        self.K = sample.K
        self.history = history or {"elbo": [], "seconds": []}
        self.log_marginal = sample.log_marginal()
        self.latents = {n: {"mean": _np(sample.mean(n)), "sd": _np(sample.sd(n)), "ess": _np(sample.ess(n))}
                        for n in sample.program.latents}
        self.predictive_log_likelihood = (
            predictive_log_likelihood(model, sample, test_data) if test_data is not None else None)

    @property
    def seconds_per_iter(self) -> float | None:
        s = self.history["seconds"]
        return float(np.median(s)) if s else None

    def to_dict(self) -> dict:
        prog = self.sample.program
        q = {}
        for name, f in prog.proposal.families.items():
            q[name] = {"family": "prior"} if f is None else \
                {"family": f.name, **{k: _np(v).tolist() for k, v in f.params().items()}}
        doc = {"format": FORMAT, "model": self.model.name, "method": self.method, "K": self.K,
               "seed": self.seed, "device": str(prog.device), "dtype": str(prog.dtype).replace("torch.", ""),
               "log_marginal": self.log_marginal,
               "latents": {n: {"plates": list(prog.chain[n]), **{k: v.tolist() for k, v in d.items()}}
                           for n, d in self.latents.items()},
               "history": {k: list(v) for k, v in self.history.items()},
               "seconds_per_iter": self.seconds_per_iter,
               "proposal": q}
        if prog.params:
            doc["params"] = {f"{n}.{a}": _np(v).tolist() for (n, a), v in prog.params.items()}
        if self.predictive_log_likelihood is not None:
            doc["predictive_log_likelihood"] = self.predictive_log_likelihood
        return doc

    def save(self, path) -> None:
        """Write the kn-result/1 document atomically: a full disk or a kill leaves the old file whole."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def to_arviz(self, draws: int = 1000, seed: int = 0):
        """Posterior draws resampled from the MP index posterior, as ArviZ InferenceData.

        sample_stats holds, per latent, the log marginal weights of the K particles
        (dims particle, plates) and the ESS per plate element, and the log marginal."""
        import arviz as az
        import xarray as xr
        prog = self.sample.program
        post = self.sample.posterior_samples(draws, seed)
        coords = {p: np.arange(prog.plate_sizes[p]) for p in self.model.plates}
        dims, data = {}, {}
        for name, x in post.items():
            x = _np(x)
            event = [f"{name}_dim_{j}" for j in range(x.ndim - 1 - len(prog.chain[name]))]
            dims[name] = [*prog.chain[name], *event]
            data[name] = x[None]
        posterior = az.dict_to_dataset(data, coords=coords, dims=dims, library=None,
                                       attrs={"method": self.method, "K": self.K})
        stats = {"log_marginal": xr.DataArray(self.log_marginal)}
        for name in prog.latents:
            w = _np(self.sample.marginal_weights(name))
            with np.errstate(divide="ignore"):
                stats[f"log_weight_{name}"] = xr.DataArray(np.log(w), dims=["particle", *prog.chain[name]])
            stats[f"ess_{name}"] = xr.DataArray(self.latents[name]["ess"], dims=list(prog.chain[name]))
        sample_stats = xr.Dataset(stats, coords={k: v for k, v in coords.items()})
        return az.InferenceData(posterior=posterior, sample_stats=sample_stats)


def predictive_log_likelihood(model, sample, test_data: dict, draws: int = 1000, seed: int = 0) -> float:
    """log of the average, over posterior draws, of the density of held-out observations.

    `test_data` replaces observed values (and covariates). A plate may change size only if
    no latent lives in it or inside it, since the draws are of the training latents."""
    test = model.copy()
    holds_latent = {p for n in model.latents for p in model.chain(model.node(n).plate)}
    for name, value in test_data.items():
        if name not in model.data:
            raise ModelError(f"test data {name!r}: the model has no data of that name")
        test.set_data(name, value)
    for name in model.observed:
        chain = model.chain(model.node(name).plate)
        shape = np.asarray(test.data[name]).shape
        for p, n in zip(chain, shape):
            if n != test.plates[p].size:
                if p in holds_latent:
                    raise ModelError(f"test data {name!r}: plate {p!r} holds latents, so its size must stay "
                                     f"{test.plates[p].size} (got {n})")
                test.resize_plate(p, int(n))
    post = sample.posterior_samples(draws, seed)
    prog = Program(test, draws, mode="global", device=sample.program.device, dtype=sample.program.dtype,
                   params=sample.program.params)
    values = {n: Named(post[n], ("K", *prog.chain[n])) for n in prog.latents}
    total = torch.zeros(draws, dtype=prog.dtype, device=prog.device)
    with torch.no_grad():
        for node in prog.nodes:
            if node.kind == "observed":
                lp = prog._log_prob(node, values)
                lp = lp.expand_to(("K", *[d for d in lp.dims if d != "K"]), {**prog.sizes, "K": draws})
                total = total + lp.reshape(draws, -1).sum(-1)
    return float(torch.logsumexp(total, 0) - math.log(draws))


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
