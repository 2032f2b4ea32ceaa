"""Final estimates of a run: S independent MP samples pooled, with their Monte Carlo error.

One MP sample holds K particles per latent: a global latent's "posterior" from it is K
weighted values, and its moments carry an error of about sd / sqrt(ESS). The final
estimates therefore pool S independent samples with the same proposal. Sample s gives an
unbiased estimate P_s of P(data) (its P_MP) and, for any f, (1/K^n) sum_k r_k f(z^k) =
P_s * m_s, where m_s is its self-normalised moment (the MP paper's eq. 27 and its
appendix A: the same argument that makes m_MP a valid moment estimator). So
    E[f] ~ sum_s P_s m_s / sum_s P_s = sum_s alpha_s m_s,   alpha_s = P_s / sum_t P_t,
a ratio of two unbiased averages: consistent as S grows at any K, and its bias falls as
1/S, where averaging m_s alone would keep each sample's O(1/K) bias for ever. Its
Monte Carlo standard error is the ratio estimator's, sqrt(S/(S-1) sum_s alpha_s^2 (m_s -
E)^2); S grows (doubling, from MIN_SAMPLES) until every mean's error is below
`mcse_target` posterior sds, or MAX_SAMPLES. Posterior draws pick a sample by alpha and
then a joint draw from that sample's MP index posterior (samples are regenerated from
their seeds, so nothing of their contraction is kept).
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch

from .diagnostics import converged, elbo_rise, hdi, pareto_khat, window_for
from .dists import DISTRIBUTIONS
from .errors import ModelError
from .program import Program
from .safeio import atomic_write_text

FORMAT = "kn-result/1"
MCSE_TARGET = 0.1      # every mean's MCSE below this many posterior sds ...
MIN_SAMPLES = 16       # ... from at least this many pooled samples (fewer make the MCSE itself unreliable)
MAX_SAMPLES = 64       # ... or at most this many
LOW_ESS = 0.2          # warn where a sample's ESS per element is below this fraction of K
HDI_MIN_ESS = 10       # an interval needs at least this many effective particles
KHAT_LIMIT = 0.7       # Pareto k-hat above this: global importance sampling is unreliable
KHAT_MIN_SPREAD = 0.5  # nats (sd of the pooled samples' log P_MP) below which their k-hat is not judged
DEFENSIVE = 0.1        # the final estimate draws this share of a Q-proposed latent's particles from its prior


def sample_seed(seed: int, j: int) -> int:
    """Seed of the j-th pooled sample of a run with seed `seed`: apart from its iterations'."""
    return (seed * 1_000_003 + 999_983 * (j + 1) + 54_321) % (2 ** 62)


class Result:
    """Pooled estimates from `program` (a model compiled with the final proposal).

    latents[name]: mean, sd, mcse_mean, mcse_sd (plates then event dims), ess (pooled
    over all S*K particles) and ess_per_sample (a sample's ESS, averaged), per plate element.
    `sample` is the first of the pooled samples, kept for views of one sample's particles."""

    def __init__(self, model, program: Program, method: str = "is", seed: int = 0, history: dict | None = None,
                 test_data: dict | None = None, mcse_target: float = MCSE_TARGET, max_samples: int = MAX_SAMPLES,
                 min_samples: int = MIN_SAMPLES):
        if not (isinstance(max_samples, int) and max_samples >= 2):
            raise ModelError(f"max_samples must be an integer of at least 2, got {max_samples!r}")
        if not (isinstance(mcse_target, (int, float)) and mcse_target > 0):
            raise ModelError(f"mcse_target must be a positive number, got {mcse_target!r}")
        self.model, self.program, self.method, self.seed = model, program, method, seed
        self.K = program.K
        self.history = history or {"elbo": [], "seconds": []}
        self.mcse_target = float(mcse_target)
        self._stats: list[dict] = []
        self.sample = None
        n = max(2, min(min_samples, max_samples))
        while True:
            while len(self._stats) < n:
                self._add(program.sample(sample_seed(seed, len(self._stats))))
            self._pool()
            if n >= max_samples or (self.worst_mcse_ratio() <= self.mcse_target and self._samples_agree()):
                break
            n = min(max_samples, 2 * n)
        self.warnings = self._warnings()
        self._draws = None
        self.prediction = None   # the last Prediction made (predict): its groups join to_dict and to_arviz
        self.predictive_log_likelihood = None
        if test_data is not None:
            self.predict(test_data)

    # ---- pooling ---------------------------------------------------------------------
    def _add(self, s) -> None:
        """One sample's log P_MP and, per latent, its mean, central second moment and sum of
        squared weights (float64, on the CPU); the sample itself is dropped."""
        if self.sample is None:
            self.sample = s
        latents = {}
        for name in self.program.latents:
            w, x = s.marginal_weights(name), s.particles(name)
            m = _weighted(w, x)
            latents[name] = (_np(m), _np(_weighted(w, (x - m).square())), _np((w * w).sum(0)))
        st = {"log_p": s.log_marginal(), "latents": latents}
        if self.program.mode == "global":
            st["log_weights"] = global_log_weights(s)
        self._stats.append(st)

    def _pool(self) -> None:
        S = len(self._stats)
        log_p = np.array([st["log_p"] for st in self._stats])
        w = np.exp(log_p - log_p.max())
        alpha = w / w.sum()
        self.n_samples, self.alpha = S, alpha
        self.log_marginal = float(log_p.max() + math.log(w.sum()) - math.log(S))
        self.log_marginal_mcse = float(math.sqrt(((S * alpha - 1) ** 2).sum() / (S * (S - 1))))
        self.samples_log_sd = float(log_p.std(ddof=1)) if S > 1 else float("nan")   # nats: how far the samples disagree
        self.elbo, self.elbo_mcse = float(log_p.mean()), self.samples_log_sd / math.sqrt(S)
        self.effective_samples = float(1 / (alpha ** 2).sum())
        self.samples_khat = pareto_khat(log_p) if S >= 20 else float("nan")
        c = S / (S - 1)
        self.latents = {}
        for name in self.program.latents:
            M, C, Q = (np.stack([st["latents"][name][j] for st in self._stats]) for j in range(3))
            a = alpha.reshape(-1, *[1] * (M.ndim - 1))
            aq = alpha.reshape(-1, *[1] * (Q.ndim - 1))
            mean = (a * M).sum(0)
            V = C + (M - mean) ** 2            # each sample's second moment about the pooled mean
            var = (a * V).sum(0)
            sd = np.sqrt(var)
            mcse_var = np.sqrt(c * (a * a * (V - var) ** 2).sum(0))
            self.latents[name] = {
                "mean": mean, "sd": sd,
                "mcse_mean": np.sqrt(c * (a * a * (M - mean) ** 2).sum(0)),
                "mcse_sd": np.divide(mcse_var, 2 * sd, out=np.zeros_like(sd), where=sd > 0),
                "ess": 1 / (aq * aq * Q).sum(0),
                "ess_per_sample": (1 / Q).mean(0)}

    def _samples_agree(self) -> bool:
        """Whether the MCSEs can be believed: the pooled estimate rests on a quarter of the
        samples at least (when one sample takes all the weight every MCSE is about 0), and
        their P_MP are not heavy-tailed (Pareto k-hat of log P_MP at most KHAT_LIMIT, from 20
        samples on)."""
        return self.effective_samples >= max(2.0, 0.25 * self.n_samples) and not self._heavy_tailed()

    def _heavy_tailed(self) -> bool:
        """k-hat above KHAT_LIMIT, from 20 samples on, where log P_MP spreads by at least
        KHAT_MIN_SPREAD nats (sd). Log-weights of a generalised Pareto tail of shape k have
        sd about k, so a real tail past 0.7 shows that spread; below it the weights are
        nearly equal and the tail fit is noise (ArviZ's k-hat tops 0.7 in about 1 in 100
        sets of 64 weights of sd 0.05)."""
        return self.n_samples >= 20 and self.samples_khat > KHAT_LIMIT and self.samples_log_sd >= KHAT_MIN_SPREAD

    def worst_mcse_ratio(self) -> float:
        """The largest MCSE of a mean, in posterior sds, over every latent element."""
        worst = 0.0
        for d in self.latents.values():
            ok = d["sd"] > 1e-12 * (1 + np.abs(d["mean"]))
            if ok.any():
                worst = max(worst, float((d["mcse_mean"][ok] / d["sd"][ok]).max()))
        return worst

    # ---- warnings ---------------------------------------------------------------------
    def _warnings(self) -> list[dict]:
        out = []
        K, S = self.K, self.n_samples
        low = {n: d for n, d in self.latents.items()   # (an enumerated latent's weights are its exact posterior)
               if n not in self.program.enum and (d["ess_per_sample"] < LOW_ESS * K).any()}
        if low:
            parts = [f"{n} ({_share(d['ess_per_sample'] < LOW_ESS * K)}median ESS "
                     f"{np.median(d['ess_per_sample']):.1f})" for n, d in low.items()]
            fix = "use QEM instead of IS, or " if self.method == "is" else "run more iterations, "
            out.append(_warning("low_ess", list(low),
                                f"degenerate weights: ESS below {LOW_ESS:g} K (K={K}) for {', '.join(parts)}; "
                                f"one particle dominates, so the moments rest on it. Try: {fix}a larger K"
                                f"{', or a better proposal' if self.method != 'is' else ''}."))
        if S >= 4 and not self._samples_agree():
            tail = f" and their Pareto k-hat is {self.samples_khat:.2f}" if self._heavy_tailed() else ""
            out.append(_warning("mcse", list(self.latents),
                                f"the {S} pooled samples' log P_MP spread by {self.samples_log_sd:.2f} nats{tail}, so the estimates "
                                f"rest on about {self.effective_samples:.1f} of them and their MCSEs are unreliable. "
                                f"Try: a larger K, more iterations, or QEM for a proposal closer to the posterior."))
        big = {}
        for n, d in self.latents.items():
            ok = d["sd"] > 1e-12 * (1 + np.abs(d["mean"]))
            bad = ok & (d["mcse_mean"] > self.mcse_target * np.where(ok, d["sd"], 1))
            if bad.any():
                big[n] = bad
        if big:
            parts = [f"{n} ({int(b.sum())} of {b.size} elements)" if b.size > 1 else n for n, b in big.items()]
            out.append(_warning("mcse", list(big),
                                f"Monte Carlo error of the mean above {self.mcse_target:g} posterior sd for "
                                f"{', '.join(parts)} after {S} pooled samples of K={K}. Try: a larger K, more "
                                f"samples (max_samples), or a better proposal."))
        if self.program.mode == "global":
            k = pareto_khat(np.concatenate([st["log_weights"] for st in self._stats]))
            self.khat = k
            if k > KHAT_LIMIT:
                out.append(_warning("pareto_k", list(self.latents),
                                    f"Pareto k-hat of the {S * K} global importance weights is {k:.2f} (above "
                                    f"{KHAT_LIMIT}): global importance sampling is unreliable here. Try: MP "
                                    f"(qem or rws) instead of global, or a far larger K."))
        elbo = self.history.get("elbo") or []
        window = window_for(self.method)
        if self.method != "is" and elbo and not converged(elbo, window):
            r = elbo_rise(elbo, window)
            how = (f"over its last {max(window, len(elbo) // 4)} iterations the ELBO rose by {r[0]:.3g} "
                   f"nats (SE {r[1]:.2g}; one iteration's sd {r[2]:.2g})" if r else
                   f"{len(elbo)} iterations are too few to judge")
            out.append(_warning("not_converged", [], f"fitting has not converged: {how}. Try: more iterations."))
        if self.program.dtype == torch.float32 and abs(self.log_marginal) * 2 ** -24 > 0.05:
            out.append(_warning("precision", [],
                                f"log P(data) is about {self.log_marginal:.3g}: float32 resolves it only to "
                                f"{abs(self.log_marginal) * 2 ** -24:.2g} nats, so the weights are imprecise. "
                                f"Try: dtype float64."))
        return out

    # ---- draws and tables -------------------------------------------------------------------
    def posterior_samples(self, n: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
        """n joint posterior draws pooled over the samples: {latent: (n, *plates, *event)}.
        Each draw picks sample s with probability alpha_s, then a joint draw from its MP
        index posterior. Discrete latents come as integers."""
        return self.pooled_draws(n, seed)[0]

    def pooled_draws(self, n: int = 1000, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """posterior_samples(n, seed), and for each draw the pooled sample it came from
        (draws of one sample are correlated: Monte Carlo errors group them by it)."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ModelError(f"the number of posterior samples must be a positive integer, got {n!r}")
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, self.alpha)
        parts = {i: [] for i in self.program.latents}
        for s, c in enumerate(counts):
            if c == 0:
                continue
            with torch.no_grad():
                smp = self.sample if s == 0 else self.program.sample(sample_seed(self.seed, s))
                draws = smp.posterior_samples(int(c), seed=seed * 7919 + s)
            for i in parts:
                parts[i].append(_np(draws[i]))
        order = rng.permutation(n)
        out = {}
        for i, ps in parts.items():
            x = np.concatenate(ps)[order]
            out[i] = np.rint(x).astype(np.int64) if DISTRIBUTIONS[self.model.node(i).dist].discrete else x
        return out, np.repeat(np.arange(len(counts)), counts)[order]

    def draws(self, n: int = 2000) -> dict[str, np.ndarray]:
        """posterior_samples(n), computed once (for the summary and the views)."""
        if self._draws is None or len(next(iter(self._draws.values()))) != n:
            self._draws = self.posterior_samples(n)
        return self._draws

    def summary(self, draws: int = 2000) -> list[dict]:
        """One row per latent element: mean, sd and their MCSEs, the 94% HDI of the pooled
        draws (None where fewer than HDI_MIN_ESS effective particles stand behind it), ESS."""
        post = self.draws(draws)
        rows = []
        for name, d in self.latents.items():
            chain = self.program.chain[name]
            lo, hi = hdi(post[name])
            shape = d["mean"].shape
            for idx in np.ndindex(*shape) if shape else [()]:
                ess = float(d["ess"][idx[:len(chain)]])
                ok = ess >= HDI_MIN_ESS
                rows.append({"name": name + (f"[{', '.join(map(str, idx))}]" if idx else ""), "latent": name,
                             "index": idx, "mean": float(d["mean"][idx]), "sd": float(d["sd"][idx]),
                             "mcse_mean": float(d["mcse_mean"][idx]), "mcse_sd": float(d["mcse_sd"][idx]),
                             "hdi_3%": float(lo[idx]) if ok else None, "hdi_97%": float(hi[idx]) if ok else None,
                             "ess": ess, "ess_per_sample": float(d["ess_per_sample"][idx[:len(chain)]])})
        return rows

    # ---- documents -----------------------------------------------------------------------------
    @property
    def seconds_per_iter(self) -> float | None:
        s = self.history["seconds"]
        return float(np.median(s)) if s else None

    def to_dict(self) -> dict:
        prog = self.program
        q = {}
        for name, f in prog.proposal.families.items():   # "raw" and "event_shape" rebuild it exactly (load)
            q[name] = {"family": "prior"} if f is None else \
                {"family": f.name, **{k: _np(v).tolist() for k, v in f.params().items()},
                 "event_shape": list(f.event_shape), "raw": {k: _np(v).tolist() for k, v in f.raw.items()}}
        doc = {"format": FORMAT, "model": self.model.name, "method": self.method, "K": self.K,
               "seed": self.seed, "device": str(prog.device), "dtype": str(prog.dtype).replace("torch.", ""),
               "n_samples": self.n_samples, "log_marginal": self.log_marginal,
               "log_marginal_mcse": self.log_marginal_mcse, "elbo": self.elbo, "elbo_mcse": self.elbo_mcse,
               "effective_samples": self.effective_samples,
               "samples_khat": None if math.isnan(self.samples_khat) else self.samples_khat,
               "latents": {n: {"plates": list(prog.chain[n]), "n_samples": self.n_samples,
                               **{k: v.tolist() for k, v in d.items()}}
                           for n, d in self.latents.items()},
               "warnings": self.warnings,
               "history": {k: list(v) for k, v in self.history.items()},
               "seconds_per_iter": self.seconds_per_iter,
               "proposal": q}
        if prog.mode == "global":
            doc["pareto_khat"] = self.khat
        if prog.params:
            doc["params"] = {f"{n}.{a}": _np(v).tolist() for (n, a), v in prog.params.items()}
        if self.prediction is not None:
            doc.update(self.prediction.to_dict())
        return doc

    @classmethod
    def from_dict(cls, model, doc: dict, device=None, memory_budget=None) -> "Result":
        """The Result a kn-result/1 document describes, rebuilt from its learned Q and model
        parameters (no refitting): the same K, method, dtype and seeded pooled samples, so
        the same estimates (bit for bit on the device it was made on; `device` None: that
        one where it is available, else auto). `model` is the model it was fitted to."""
        from .proposal import FAMILIES, Proposal
        from .program import resolve_dtype
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ModelError(f"a result document must be a JSON object with format {FORMAT!r}")
        try:
            K, method, seed, n = int(doc["K"]), str(doc["method"]), int(doc["seed"]), int(doc["n_samples"])
            q, dtype = doc["proposal"], resolve_dtype(doc.get("dtype", "float32"))
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"result document: field {str(e)!r} is missing or not a number") from None
        if not isinstance(q, dict) or set(q) != set(model.latents):
            raise ModelError(f"result document: its Q is for latents {sorted(q) if isinstance(q, dict) else q}, "
                             f"but model {model.name!r} has latents {sorted(model.latents)}: it was fitted to "
                             f"another model")
        if device is None:
            device = doc.get("device", "auto")
            device = device if not str(device).startswith("cuda") or torch.cuda.is_available() else "auto"
        fams = {}
        for name, e in q.items():
            where = f"result document, proposal for {name!r}"
            if not isinstance(e, dict) or e.get("family") not in ("prior", *FAMILIES):
                raise ModelError(f"{where}: not a Q family")
            if e["family"] == "prior":
                fams[name] = None
                continue
            cls_q = FAMILIES[e["family"]]
            try:
                if "raw" in e:
                    raw = {k: torch.as_tensor(v, dtype=dtype) for k, v in e["raw"].items()}
                    fams[name] = cls_q(raw, tuple(e["event_shape"]))
                else:   # a document without Q's raw parameters: from the constrained ones
                    params = {k: torch.as_tensor(e[k], dtype=torch.float64) for k in cls_q.shown}
                    event = tuple(params[cls_q.shown[0]].shape[len(model.chain(model.node(name).plate)):])
                    f = cls_q({}, event[:-1] if cls_q.name == "Categorical" else event)
                    f.set_moments(f.expected_stats(params))
                    fams[name] = f.cast(dtype)
            except (KeyError, TypeError, ValueError, RuntimeError) as err:
                raise ModelError(f"{where}: cannot rebuild it ({str(err)[:100]})") from None
        params = {}
        for key, v in (doc.get("params") or {}).items():
            node, _, arg = str(key).partition(".")
            params[(node, arg)] = torch.as_tensor(v, dtype=dtype)
        prog = Program(model, K, mode="global" if method == "global" else "mp", device=device, dtype=dtype,
                       proposal=Proposal(fams), params=params, memory_budget=memory_budget,
                       defensive=DEFENSIVE if method != "is" else 0.0)
        prog.params = {k: v.to(prog.device) for k, v in prog.params.items()}
        for f in fams.values():
            if f is not None:
                f.raw = {k: v.to(prog.device) for k, v in f.raw.items()}
        history = doc.get("history") if isinstance(doc.get("history"), dict) else None
        return cls(model, prog, method=method, seed=seed, history=history, max_samples=max(n, 2), min_samples=n)

    @classmethod
    def load(cls, model, path, device=None, memory_budget=None) -> "Result":
        """The Result of a kn-result/1 file (see from_dict)."""
        from .safeio import MODEL_LIMIT, read_bounded
        raw = read_bounded(path, MODEL_LIMIT, "result file")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ModelError(f"result file {str(path)!r}: not a JSON document ({str(e)[:100]})") from None
        return cls.from_dict(model, doc, device=device, memory_budget=memory_budget)

    def predict(self, data: dict | None = None, draws: int = 1000, seed: int = 0, particles: int = 100,
                memory_budget=None):
        """Posterior predictive draws and the predictive log-likelihood of `data` (observed
        values and covariates by name; None: the training data), whose plates may be larger
        than in training: see engine.predict. The Prediction is kept (self.prediction) for
        to_dict and to_arviz."""
        from .predict import predict
        self.prediction = predict(self, data, draws=draws, seed=seed, particles=particles,
                                  memory_budget=memory_budget)
        self.predictive_log_likelihood = self.prediction.log_likelihood
        return self.prediction

    def save(self, path) -> None:
        """Write the kn-result/1 document atomically: a full disk or a kill leaves the old file whole."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def to_arviz(self, draws: int | None = None, seed: int | None = None):
        """Pooled posterior draws as ArviZ InferenceData (one chain). sample_stats holds the
        pooled ESS per latent element; attrs the method, K, the number of pooled samples and
        log P(data) with its MCSE. After predict(), draws and seed default to the
        prediction's, and then the posterior is the draws it used and the groups
        posterior_predictive, log_likelihood (pointwise, per draw) and observed_data of its
        data join (with other draws or seed they would not match the posterior: left out)."""
        import arviz as az
        import xarray as xr
        prog = self.program
        pred = self.prediction
        draws = draws if draws is not None else (pred.draws if pred is not None else 1000)
        seed = seed if seed is not None else (pred.seed if pred is not None else 0)
        post = self.posterior_samples(draws, seed)
        coords = {p: np.arange(prog.plate_sizes[p]) for p in self.model.plates}
        dims, data = {}, {}
        for name, x in post.items():
            event = [f"{name}_dim_{j}" for j in range(x.ndim - 1 - len(prog.chain[name]))]
            dims[name] = [*prog.chain[name], *event]
            data[name] = x[None]
        attrs = {"method": self.method, "K": self.K, "n_samples": self.n_samples,
                 "log_marginal": self.log_marginal, "log_marginal_mcse": self.log_marginal_mcse}
        posterior = az.dict_to_dataset(data, coords=coords, dims=dims, library=None, attrs=attrs)
        stats = {f"ess_{name}": xr.DataArray(d["ess"], dims=list(prog.chain[name])) for name, d in self.latents.items()}
        sample_stats = xr.Dataset(stats, coords=coords, attrs=attrs)
        groups = {"posterior": posterior, "sample_stats": sample_stats}
        if pred is not None and (pred.draws, pred.seed) == (draws, seed):
            groups.update(pred.arviz_groups())
        return az.InferenceData(**groups)


def _warning(kind: str, latents: list[str], message: str) -> dict:
    return {"kind": kind, "latents": latents, "message": message}


def _share(mask: np.ndarray) -> str:
    return "" if mask.size == 1 else f"{int(mask.sum())} of {mask.size} elements, "


def _weighted(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (w.reshape(*w.shape, *[1] * (x.dim() - w.dim())) * x).sum(0)


def global_log_weights(sample) -> np.ndarray:
    """The K joint log importance weights of a global sample: every factor summed over
    its plates (float64)."""
    prog = sample.program
    lw = torch.zeros(prog.K, dtype=torch.float64, device=prog.device)
    for f in sample.factors.values():
        t = f.t.detach().double()
        lw = lw + (t.movedim(f.dims.index("K"), 0).reshape(prog.K, -1).sum(1) if "K" in f.dims else t.sum())
    return _np(lw)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
