"""Prediction: posterior predictive draws and the predictive log-likelihood of new data.

The new data may have larger plates than the training data (new counties, new bus
routes): the first n elements of a plate that holds latents are its training elements,
the rest are new. A latent's training elements take the pooled posterior draws; its new
elements are drawn from their prior given their parents' draws. The predictive
log-likelihood

    log p(y_new | y_train) = log E_post[ p(y_new | theta) ],
    p(y_new | theta) = E_prior(theta_new | theta)[ p(y_new | theta, theta_new) ],

is estimated with D pooled posterior draws theta_d and, for each, an MP importance sample
of the new latents with P particles each from their prior: log (1/D) sum_d P_MP(y_new |
theta_d). The inner MP average factorises over the new groups, so it stays precise where
one joint prior draw per posterior draw would not. Its Monte Carlo error is the ratio
estimator's over the pooled samples the draws came from (draws of one sample share its
particles, so they are grouped), as for the posterior moments (engine.result).

How: a conditional model. Its outermost plate `_draws` holds the D draws; a latent with
no new elements becomes data over it (its draws); a latent with new elements stays a
latent (prior as proposal, P particles), and every expression that mentions it reads
`where(new, it, its draws)`, so its training elements take their draws and contribute a
factor of exactly 1. The plan keeps `_draws` as a batch dim that nothing sums, so
log P_MP comes out per draw. Runs are split over the draws to fit the memory budget.

Continuing a time series past its end is the same construction for a latent whose
chain runs along a plate that grew: its first new step's `prev` is the last training
step's draw (`_conditional_doc` is where that rewrite goes).
"""
from __future__ import annotations

import ast
import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .contract import Plan
from .diagnostics import pareto_khat
from .dists import DISTRIBUTIONS
from .errors import ModelError
from .model import PREV, Model, _data_array, _nan_to_nulls
from .named import Named
from .program import Program, default_budget, human_bytes
from .result import KHAT_LIMIT, _warning

DRAWS = "_draws"   # the conditional model's plate of posterior draws (renamed where the model uses the name)


@dataclass
class Prediction:
    """What `Result.predict` returns.

    log_likelihood, log_likelihood_mcse: log p(y_new | y_train) and its Monte Carlo error;
    n_observed: the observed values it scores; per_draw: log P_MP(y_new | theta_d);
    posterior_predictive[y]: (draws, *plates, *event) draws of every entry of observed
    node y (missing ones too: their imputation); pointwise[y]: (draws, *plates)
    log p(y_element | draw d, its new latents' first particle), NaN where nothing is
    observed; observed[y]: the data (NaN missing); plates: sizes in the new data;
    new: {plate: (training size, new size)} for the plates of latents that grew;
    khat: Pareto k-hat of the draws' densities exp(per_draw), and warnings (like
    Result.warnings) where it is above 0.7: a few draws then carry the estimate, and its
    MCSE is unreliable (new observations of many training groups, whose joint density is
    averaged over joint posterior draws, do that; new groups' inner MP average does not)."""
    log_likelihood: float
    log_likelihood_mcse: float
    n_observed: int
    draws: int
    particles: int
    seed: int
    plates: dict
    new: dict
    chains: dict
    posterior_predictive: dict
    pointwise: dict
    observed: dict
    per_draw: np.ndarray = field(repr=False)
    khat: float = math.nan
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The fields a kn-result/1 document gains: the predictive log-likelihood, and per
        observed node the posterior predictive mean and sd and the pointwise log predictive
        density log mean_d p(y_element | draw d) (null where nothing is observed)."""
        pp, ll = {}, {}
        for y, x in self.posterior_predictive.items():
            x = x.astype(np.float64)
            pp[y] = {"plates": list(self.chains[y]), "mean": x.mean(0).tolist(), "sd": x.std(0).tolist()}
            pw = self.pointwise[y]
            with np.errstate(invalid="ignore"):
                top = pw.max(0)
                lppd = top + np.log(np.exp(pw - top).mean(0))
            ll[y] = {"plates": list(self.chains[y]), "lppd": _nan_to_nulls(lppd)}
        return {"predictive_log_likelihood": self.log_likelihood,
                "predictive_log_likelihood_mcse": self.log_likelihood_mcse,
                "prediction": {"draws": self.draws, "particles": self.particles, "seed": self.seed,
                               "n_observed": self.n_observed, "plates": dict(self.plates),
                               "new": {p: list(v) for p, v in self.new.items()},
                               "pareto_khat": self.khat if math.isfinite(self.khat) else None,
                               "warnings": list(self.warnings)},
                "posterior_predictive": pp, "log_likelihood": ll}

    def arviz_groups(self) -> dict:
        """posterior_predictive, log_likelihood and observed_data as ArviZ datasets."""
        import arviz as az
        coords = {p: np.arange(n) for p, n in self.plates.items()}

        def dims(y, x, lead):
            return [*self.chains[y], *[f"{y}_dim_{j}" for j in range(x.ndim - lead - len(self.chains[y]))]]
        pp = {y: x[None] for y, x in self.posterior_predictive.items()}
        ll = {y: x[None] for y, x in self.pointwise.items()}
        obs = dict(self.observed)
        return {"posterior_predictive": az.dict_to_dataset(pp, coords=coords, library=None,
                                                           dims={y: dims(y, x, 2) for y, x in pp.items()}),
                "log_likelihood": az.dict_to_dataset(ll, coords=coords, library=None,
                                                     dims={y: dims(y, x, 2) for y, x in ll.items()}),
                "observed_data": az.dict_to_dataset(obs, coords=coords, library=None, default_dims=[],
                                                    dims={y: dims(y, x, 0) for y, x in obs.items()})}


def predict(result, data: dict | None = None, draws: int = 1000, seed: int = 0, particles: int = 100,
            memory_budget=None) -> Prediction:
    """See the module docstring and Result.predict."""
    for name, v, low in (("draws", draws, 1), ("particles", particles, 1), ("seed", seed, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ModelError(f"{name} must be an integer of at least {low}, got {v!r}")
    model, prog = result.model, result.program
    if data is None:   # the training data: in-sample posterior predictive checks
        data = {y: model.data[y] for y in model.observed}
    if not isinstance(data, dict):
        raise ModelError("the new data must be an object of arrays by name")
    layout = _Layout(model, prog, data)
    post, sample_of = result.pooled_draws(int(draws), int(seed))
    budget = default_budget(prog.device) if memory_budget in (None, "auto") else int(memory_budget)
    probe = _program(layout, post, slice(0, 1), particles, prog)
    per_draw = probe.memory_estimate()
    if per_draw > budget:
        raise ModelError(f"prediction needs about {human_bytes(per_draw)} per posterior draw at particles="
                         f"{particles}, more than the memory budget of {human_bytes(budget)}: use fewer particles")
    chunk = int(max(1, min(draws, budget // max(per_draw, 1))))
    log_p, pp, pw = [], {y: [] for y in layout.observed}, {y: [] for y in layout.observed}
    with torch.no_grad():
        for c, lo in enumerate(range(0, draws, chunk)):
            hi = min(draws, lo + chunk)
            p = probe if (lo, hi) == (0, 1) else _program(layout, post, slice(lo, hi), particles, prog)
            chunk_seed = (seed * 1_000_003 + 7_919 * (c + 1) + 4_242) % (2 ** 62)
            values = p._draw(chunk_seed, reparam=False)
            total = p.contract(values)[0]
            log_p.append(np.zeros(hi - lo) if total is None else
                         total.double().cpu().numpy().reshape(hi - lo))
            for i, y in enumerate(layout.observed):
                with p.seeded((chunk_seed + 104_729 * (i + 1)) % (2 ** 62)):   # the replicates from the seed too
                    x, lp = _replicate(p, y, values)
                pp[y].append(x)
                pw[y].append(lp)
    ell = np.concatenate(log_p)
    pp = {y: np.concatenate(v) for y, v in pp.items()}
    pw = {y: np.concatenate(v) for y, v in pw.items()}
    estimate, mcse = _estimate(ell, sample_of)
    khat = pareto_khat(ell) if np.ptp(ell) > 1e-9 else -math.inf   # all draws alike: nothing heavy-tailed
    warnings = []
    if khat > KHAT_LIMIT:
        warnings.append(_warning("pareto_k", [], (
            f"the predictive log-likelihood rests on a few of the {draws} posterior draws (Pareto k-hat of their "
            f"densities {khat:.2f}, above {KHAT_LIMIT}), so its MCSE is unreliable. New observations of training "
            f"groups do this: their density is averaged over joint posterior draws. Try: more draws, or fewer "
            f"such observations per prediction.")))
    return Prediction(estimate, mcse, layout.n_observed, int(draws), int(particles), int(seed), dict(layout.sizes),
                      dict(layout.grown), {y: model.chain(model.node(y).plate) for y in layout.observed}, pp, pw,
                      {y: layout.arrays[y] for y in layout.observed}, ell, float(khat), warnings)


def _estimate(ell: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """log (1/D) sum_d exp(ell_d), and its Monte Carlo error: the ratio estimator's over
    the groups (pooled samples) the draws came from, sqrt(J/(J-1) sum_j w_j^2 (r_j - 1)^2)
    with w_j a group's share of draws and r_j its mean over the overall mean; over the
    draws themselves where they all came from one sample."""
    top = ell.max()
    if not np.isfinite(top):
        raise ModelError("the new data have zero probability under every posterior draw")
    est = float(top + math.log(np.exp(ell - top).mean()))
    ids = np.unique(groups)
    if len(ids) < 2:
        ids, groups = np.arange(len(ell)), np.arange(len(ell))
    if len(ids) < 2:
        return est, math.inf
    w = np.array([(groups == j).mean() for j in ids])
    r = np.array([np.exp(ell[groups == j] - est).mean() for j in ids])
    J = len(ids)
    return est, float(math.sqrt(J / (J - 1) * ((w * (r - 1)) ** 2).sum()))


class _Layout:
    """The new data's plates and arrays: which plates grew, which latents keep only
    training elements (they become data) and which have new ones."""

    def __init__(self, model: Model, prog: Program, data: dict):
        self.model = model
        self.observed = list(model.observed)
        self.train = dict(prog.plate_sizes)
        self.cov_plates = self._covariate_plates(model, prog)
        given, arrays, src = {}, {}, {}
        for name, value in data.items():
            if not isinstance(name, str):
                raise ModelError(f"new data: {name!r} is not a name")
            if name in self.observed:
                plates = model.chain(model.node(name).plate)
            elif name in self.cov_plates:
                plates = self.cov_plates[name]
            else:
                known = ", ".join(self.observed + sorted(self.cov_plates))
                raise ModelError(f"new data {name!r}: the model has no observed node or data of that name "
                                 f"(it reads: {known})")
            arr = _data_array(value, f"new data {name!r}")
            if name not in self.observed and arr.dtype.kind == "f" and np.isnan(arr).any():
                raise ModelError(f"new data {name!r} has a missing value; only observed nodes may have them")
            old = model.data[name].shape
            if arr.ndim != len(old) or arr.shape[len(plates):] != old[len(plates):]:
                raise ModelError(f"new data {name!r} has shape {list(arr.shape)}: it needs the training data's "
                                 f"dims, {len(plates)} plate(s) ({', '.join(plates) or 'none'}) then "
                                 f"{list(old[len(plates):])}")
            for p, n in zip(plates, arr.shape):
                if given.setdefault(p, int(n)) != n:
                    raise ModelError(f"new data {name!r} gives plate {p!r} {n} elements, but {src[p]!r} gives "
                                     f"{given[p]}")
                src.setdefault(p, name)
            arrays[name] = arr
        self.sizes = {p: given.get(p, n) for p, n in self.train.items()}
        latent_plates = {p for i in prog.latents for p in prog.chain[i]}
        for p in latent_plates:
            if self.sizes[p] < self.train[p]:
                raise ModelError(f"new data {src[p]!r}: plate {p!r} holds latents, so the new data keep its "
                                 f"{self.train[p]} training elements first (and may add new ones), but it has "
                                 f"{self.sizes[p]}")
        self.grown = {p: (self.train[p], self.sizes[p]) for p in sorted(latent_plates)
                      if self.sizes[p] > self.train[p]}
        for name, plates in self.cov_plates.items():
            if name not in arrays:
                if any(self.sizes[p] != self.train[p] for p in plates):
                    changed = next(p for p in plates if self.sizes[p] != self.train[p])
                    raise ModelError(f"new data: plate {changed!r} has {self.sizes[changed]} elements, so data "
                                     f"{name!r} (in {', '.join(plates)}) needs new values too")
                arrays[name] = model.data[name]
        for y in self.observed:   # observed nodes without new values: predicted, not scored
            if y not in arrays:
                node = model.node(y)
                chain = model.chain(node.plate)
                shape = tuple(self.sizes[p] for p in chain) + model.data[y].shape[len(chain):]
                arrays[y] = np.full(shape, np.nan)
        self.arrays = arrays
        self.n_observed = int(sum(np.isfinite(np.asarray(arrays[y], dtype=np.float64)).sum() for y in self.observed))
        self.new_latents = [i for i in prog.latents if any(p in self.grown for p in prog.chain[i])]
        self.old_latents = [i for i in prog.latents if i not in self.new_latents]
        taken = set(model.graph) | set(model.data) | set(model.plates)
        self.draws_plate = _unused(DRAWS, taken)
        self.flag = {i: _unused(f"_new_{i}"[:100], taken) for i in self.new_latents}
        self.post = {i: _unused(f"_post_{i}"[:100], taken | set(self.flag.values())) for i in self.new_latents}
        # a time series continued past its end: its first new element's prev is the last training draw
        self.continued = [i for i in self.new_latents if model.node(i).timeseries is not None
                          and model.node(i).plate in self.grown]
        taken |= set(self.flag.values()) | set(self.post.values())
        self.prev_flag = {i: _unused(f"_newprev_{i}"[:100], taken) for i in self.continued}
        self.prev_post = {i: _unused(f"_postprev_{i}"[:100], taken | set(self.prev_flag.values()))
                          for i in self.continued}

    @staticmethod
    def _covariate_plates(model, prog) -> dict[str, tuple[str, ...]]:
        """The plates each covariate the model reads lives in (as the training program read them)."""
        out = {}
        for node in model.nodes:
            for name in prog.mentions[node.name]:
                if name in model.data and name not in model.graph:
                    dims = prog.data(name, node).dims
                    if out.setdefault(name, dims) != dims:
                        raise ModelError(f"data {name!r} is read as living in plates {out[name]} by one node and "
                                         f"{dims} by another; give its plates in data_plates to predict with it")
        return out


def _unused(name: str, taken: set) -> str:
    while name in taken:
        name = "_" + name if len(name) < 100 else name[:-1]
    return name


def _conditional_doc(layout: _Layout, post: dict, sl: slice) -> dict:
    """The conditional model of draws `sl` as a kn-model/1 document (arrays as numpy)."""
    model = layout.model
    shallow = copy.copy(model)
    shallow.data = {}
    base = Model.to_dict(shallow)
    D, n = layout.draws_plate, sl.stop - sl.start
    plates = [{"name": D, "size": n}] + [{"name": p["name"], "size": layout.sizes[p["name"]],
                                          "in": p.get("in") or D} for p in base["plates"]]
    swap = {i: f"where({layout.flag[i]}, {i}, {layout.post[i]})" for i in layout.new_latents}
    nodes = []
    for nd in base["nodes"]:
        if nd["name"] in layout.old_latents:
            continue
        nd = copy.deepcopy(nd)
        nd["plate"] = nd.get("plate") or D
        own = {PREV: f"where({layout.prev_flag[nd['name']]}, {PREV}, {layout.prev_post[nd['name']]})"} \
            if nd["name"] in layout.continued else {}
        nd["args"] = {a: _rename(v, {**swap, **own}) if isinstance(v, str) else v
                      for a, v in nd["args"].items()}
        nodes.append(nd)
    data, data_plates = {}, {}
    for y in layout.observed:
        arr = np.asarray(layout.arrays[y], dtype=np.float64)
        data[y] = np.broadcast_to(arr, (n, *arr.shape))
    for name, plates_of in layout.cov_plates.items():
        data[name], data_plates[name] = layout.arrays[name], list(plates_of)
    for i in layout.old_latents:
        data[i], data_plates[i] = post[i][sl], [D, *model.chain(model.node(i).plate)]
    for i in layout.new_latents:
        chain = model.chain(model.node(i).plate)
        x = post[i][sl]
        full = np.zeros((n, *[layout.sizes[p] for p in chain], *x.shape[1 + len(chain):]), dtype=x.dtype)
        full[(slice(None), *[slice(0, layout.train[p]) for p in chain])] = x
        new = np.ones([layout.sizes[p] for p in chain], dtype=bool)
        new[tuple(slice(0, layout.train[p]) for p in chain)] = False
        data[layout.post[i]], data_plates[layout.post[i]] = full, [D, *chain]
        data[layout.flag[i]], data_plates[layout.flag[i]] = new.astype(np.float64), list(chain)
        if i in layout.continued:   # element t's prev: the draw of t - 1 where that is a training element
            axis = 1 + chain.index(model.node(i).plate)
            shifted = np.zeros_like(full)
            idx = [slice(None)] * full.ndim
            src = list(idx)
            idx[axis], src[axis] = slice(1, None), slice(0, -1)
            shifted[tuple(idx)] = full[tuple(src)]
            prev_new = np.zeros_like(new)
            a = chain.index(model.node(i).plate)
            pi, si = [slice(None)] * new.ndim, [slice(None)] * new.ndim
            pi[a], si[a] = slice(1, None), slice(0, -1)
            prev_new[tuple(pi)] = new[tuple(si)]
            data[layout.prev_post[i]], data_plates[layout.prev_post[i]] = shifted, [D, *chain]
            data[layout.prev_flag[i]], data_plates[layout.prev_flag[i]] = prev_new.astype(np.float64), list(chain)
    return {"format": base["format"], "name": base["name"], "plates": plates, "nodes": nodes, "data": data,
            "data_plates": data_plates}


def _rename(source: str, swap: dict[str, str]) -> str:
    """`source` with every mention of a name in `swap` replaced by its expression."""
    if not swap:
        return source
    tree = ast.parse(source.strip(), mode="eval")

    class Swap(ast.NodeTransformer):
        def visit_Name(self, n):
            return ast.parse(swap[n.id], mode="eval").body if n.id in swap else n

        def visit_Call(self, n):   # a function's own name is not a mention
            n.args = [self.visit(a) for a in n.args]
            n.keywords = [self.visit(k) for k in n.keywords]
            return n
    return ast.unparse(Swap().visit(tree))


def _program(layout: _Layout, post: dict, sl: slice, particles: int, prog: Program) -> Program:
    """The conditional model of draws `sl` compiled with `particles` particles per new
    latent, its plan keeping the draws as a dim that nothing sums."""
    cm = Model.from_dict(_conditional_doc(layout, post, sl))
    p = Program(cm, int(particles), device=prog.device, dtype=prog.dtype, params=dict(prog.params),
                optimize=prog.plan.optimize, memory_budget=1 << 62)
    D = layout.draws_plate
    parent = {q.name: (None if q.parent == D else q.parent) for q in cm.plates.values() if q.name != D}
    p.plan = Plan(p.factor_dims, p.home, parent, p.sizes, p.rank, optimize=prog.plan.optimize,
                  chains=p.chains_along, exact=p.plan.exact)
    return p


def _replicate(p: Program, y: str, values: dict) -> tuple[np.ndarray, np.ndarray]:
    """Observed node y's posterior predictive draws (draws, *plates, *event) and pointwise
    log-likelihood (draws, *plates), from each draw's first particle of the new latents."""
    node = p.model.node(y)
    chain = p.chain[y]
    spec = p.specs[y]
    d, dims, _ = p.distribution(y, values)
    event = tuple(p.model.data[y].shape[len(chain):])
    extra = event[:len(event) - spec.value_rank]
    x = Named(d.expand((*[p.sizes[k] for k in dims], *extra)).sample(), dims)
    lp = p._log_prob(node, values)
    x, lp = (_first_particle(v, p).expand_to(chain, p.sizes) for v in (x, lp))
    x = x.double().cpu().numpy()
    if DISTRIBUTIONS[node.dist].discrete:
        x = np.rint(x).astype(np.int64)
    lp = lp.double().cpu().numpy().copy()
    mask = p._observed[y][1]
    if mask is not None:
        present = mask.reshape(*mask.shape[:len(chain)], -1).any(-1)
        lp[~present.cpu().numpy()] = np.nan
    return x, lp


def _first_particle(v: Named, p: Program) -> Named:
    t, dims = v.t, list(v.dims)
    for i in reversed(range(len(dims))):
        if dims[i] not in p.plate_sizes:
            t = t.select(i, 0)
            del dims[i]
    return Named(t, tuple(dims))


__all__ = ["Prediction", "predict", "DRAWS"]
