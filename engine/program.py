"""A model compiled for one K, device and dtype: K-particle sampling and factors.

Every latent i gets one K-dim (named "K:i", or "K:GROUP" when latents share one, or a
single "K" for global importance sampling). A factor is a tensor over K-dims and plates:
  latent:   log P(z_i^{k_i} | z_pa^{k_pa}) - log Q_MP(z_i^{k_i} | ...)
  observed: log P(x | z_pa^{k_pa})
With the prior as proposal, particles of a parent outside the latent's K-dim are coupled
by a random permutation per plate element, and Q_MP is the uniform mixture over those
parents' particles (a logmeanexp over their K-dims of the very same log-prob tensor).
"""
from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch.distributions import constraints
from torch.utils.checkpoint import checkpoint

from .alloc import tune_allocator
from .contract import Plan, logsumexp
from .dists import (build, deferred_log_prob, event_sum, fast_log_prob, get_spec, impossible, range_error, range_ok,
                    support_fill, to_dtype)
from .errors import ModelError
from .expr import Env
from .model import ENUMERABLE, PREV, Model, Node, Param
from .named import Constant, Named
from .proposal import Proposal, check_family, default_family


def resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"device {device!r} is not a device (use auto, cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for but no CUDA GPU is available (use auto or cpu)")
    return dev


def resolve_dtype(dtype) -> torch.dtype:
    table = {"float32": torch.float32, "float64": torch.float64, torch.float32: torch.float32,
             torch.float64: torch.float64}
    if dtype not in table:
        raise ModelError(f"dtype {dtype!r} is not supported (use float32 or float64)")
    return table[dtype]


class Program:
    def __init__(self, model: Model, K: int, *, mode: str = "mp", device="auto", dtype=None,
                 proposal="prior", params: dict | None = None, optimize: str = "greedy",
                 memory_budget=None, defensive: float = 0.0, enumeration: bool = True):
        """enumeration: sum small discrete latents over their support (each node's
        `enumerate` field, else when the support has at most ENUMERATE_MAX values);
        False samples K particles of every latent."""
        if not isinstance(K, (int, np.integer)) or isinstance(K, bool) or K < 1:
            raise ModelError(f"K must be a positive integer, got {K!r}")
        if mode not in ("mp", "global"):
            raise ModelError(f"mode must be 'mp' or 'global', got {mode!r}")
        tune_allocator()   # on first use, from Python as from kn: see engine/alloc.py
        model.validate()
        self.model, self.K, self.mode = model, int(K), mode
        self.defensive = float(defensive)   # share of each latent's particles drawn from its prior
        # dtype None: the model file's "dtype", else float32
        self.device, self.dtype = resolve_device(device), resolve_dtype(dtype or model.dtype or "float32")
        if self.device.type == "cuda":
            torch.cuda.init()   # its generators exist only after CUDA's lazy initialisation
        self.nodes: list[Node] = model.nodes
        self.latents = [n.name for n in self.nodes if n.kind == "latent"]
        self.chain = {n.name: model.chain(n.plate) for n in self.nodes}
        # enumerated latents: their K-dim holds their support, summed exactly, in either mode
        self.enum = self._enumerated(enumeration, device, dtype)
        self.kdim = {i: f"K:{i}" if i in self.enum else "K" if mode == "global" else f"K:{model.node(i).group or i}"
                     for i in self.latents}
        self.own = {i: (self.kdim[i], *self.chain[i]) for i in self.latents}   # a latent's particles' dims
        self.latent_parents = {n.name: [p for p in model.parents(n.name) if p in self.kdim] for n in self.nodes}
        self.plate_sizes = {p.name: p.size for p in model.plates.values()}
        # time series: each latent's previous element has a K-dim of its own in MP ("K:x~prev")
        # (a chain of K x K factors in MP, and for an enumerated series in either mode; in global
        # mode a sampled series reads its own particle's previous value, on the same K-dim)
        self.series = {n.name: n.plate for n in self.nodes if n.timeseries is not None}
        chained = [i for i in self.series if mode == "mp" or i in self.enum]
        self.prev_dim = {i: f"{self.kdim[i]}~prev" if i in chained else self.kdim[i] for i in self.series}
        kdims = list(dict.fromkeys([self.kdim[i] for i in self.latents] + [self.prev_dim[i] for i in chained]))
        self.kdims = set(kdims)
        self.sizes = {**self.plate_sizes, **{d: self.K for d in kdims},
                      **{self.kdim[i]: n for i, n in self.enum.items()},
                      **{self.prev_dim[i]: n for i, n in self.enum.items() if i in chained}}
        plate_order = []
        for n in self.nodes:
            for p in self.chain[n.name]:
                if p not in plate_order:
                    plate_order.append(p)
        plate_order += [p for p in model.plates if p not in plate_order]
        self.rank = {"draw": -1, **{d: i for i, d in enumerate(kdims)},
                     **{p: len(kdims) + j for j, p in enumerate(plate_order)}}
        self.exprs = {n.name: n.exprs() for n in self.nodes}
        self.inits = {n.name: n.init_expr() for n in self.nodes if n.timeseries is not None}
        self.specs = {n.name: get_spec(n.dist, n.where()) for n in self.nodes}
        self.mentions = {n.name: sorted(set().union(*[e.names for e in self.exprs[n.name].values()],
                                                    self.inits[n.name].names if self.inits.get(n.name) else ()))
                         for n in self.nodes}
        # A series whose init mentions latents on one K-dim only (and not otherwise a parent's),
        # alone in its plate, starts from their particles: at the first element the previous
        # index runs over that K-dim's particles, so the chain's matrices carry no copy of it.
        self.init_dim = {}
        for i, plate in self.series.items():
            init = self.inits[i].names if self.inits[i] else set()
            dims = {self.kdim[p] for p in init if p in self.kdim}
            args = {self.kdim[p] for e in self.exprs[i].values() for p in e.names if p in self.kdim}
            alone = sum(1 for j in self.series.values() if j == plate) == 1
            if i in chained and len(dims) == 1 and not dims & args and alone and \
                    self.sizes[next(iter(dims))] == self.sizes[self.prev_dim[i]]:
                self.init_dim[i] = dims.pop()
        self.params = params if params is not None else {}
        for n in self.nodes:
            for a, v in n.args.items():
                if isinstance(v, Param) and (n.name, a) not in self.params:
                    self.params[(n.name, a)] = torch.tensor(v.init, dtype=self.dtype, device=self.device,
                                                            requires_grad=True)
        self._data: dict = {}
        self._constants: dict = {}
        self._layouts: dict = {}
        self._observed = {n.name: self._observed_value(n) for n in self.nodes if n.kind == "observed"}
        self._checked = False
        self.proposal = self._resolve_proposal(proposal)
        self.factor_dims = {n.name: self._factor_dims(n) for n in self.nodes}
        self._expanded = {n.name: self._expands(n) for n in self.nodes}
        home = {d: None for d in kdims} if mode == "global" else {self.kdim[i]: model.node(i).plate for i in self.latents}
        home.update({self.kdim[i]: model.node(i).plate for i in self.enum})   # summed where they live
        home.update({self.prev_dim[i]: self.series[i] for i in chained})
        chains = {}
        for i in chained:
            chains.setdefault(self.series[i], []).append((self.kdim[i], self.prev_dim[i], self.init_dim.get(i)))
        self.home, self.chains_along = home, chains   # the plan's: where each K-dim is summed, the series
        self.plan = Plan(self.factor_dims, home, {p.name: p.parent for p in model.plates.values()},
                         self.sizes, self.rank, optimize=optimize, chains=chains,
                         exact={self.kdim[i] for i in self.enum})
        self._window = None      # (plate, start, stop) while one chunk of a split run is computed
        self.memory_budget = default_budget(self.device) if memory_budget in (None, "auto") else int(memory_budget)
        self.split = self._plan_split()

    # ---- structure -------------------------------------------------------------------
    def _enumerated(self, enabled: bool, device, dtype) -> dict[str, int]:
        """{latent: support size} of the latents summed over their support: a node's
        `enumerate` field, else (when `enabled`) every scalar Bernoulli, Categorical or
        Binomial latent with at most ENUMERATE_MAX values outside a group."""
        out, dry = {}, None
        for n in self.nodes:
            if n.kind != "latent" or n.enumerate is False or (n.enumerate is None and not enabled) \
                    or n.dist not in ENUMERABLE or n.shape not in (None, ()) or n.group is not None:
                if n.enumerate and n.group is not None:
                    raise ModelError(f"{n.where()}: a grouped latent cannot be enumerated (field 'enumerate')")
                continue
            size = support_size(n, self.model)
            if size is None and n.dist == "Categorical":   # its probabilities are computed: one dry run
                if dry is None:
                    dry = Program(self.model, 1, mode="global", device=device, dtype=dtype, memory_budget=1 << 62,
                                  enumeration=False)
                    dry_values = dry._draw(0, reparam=False)
                args = dry._args(n, dry._env(n, dry_values))
                size = next((args[a].event_shape[-1] for a in ("probs", "logits") if a in args), None)
            if n.enumerate and (size is None or size > ENUMERATE_HARD_MAX):
                raise ModelError(f"{n.where()}: cannot enumerate (field 'enumerate'): its support has "
                                 f"{'an unknown number of' if size is None else size} values (at most "
                                 f"{ENUMERATE_HARD_MAX})")
            if size is not None and (n.enumerate or size <= ENUMERATE_MAX):
                out[n.name] = int(size)
        return out

    def _factor_dims(self, node: Node) -> tuple[str, ...]:
        dims = set(self.chain[node.name]) | {self.kdim[p] for p in self.latent_parents[node.name]}
        if node.kind == "latent":
            dims.add(self.kdim[node.name])
        if node.name in self.series:
            dims.add(self.prev_dim[node.name])
            dims.discard(self.init_dim.get(node.name))   # it runs on the previous index at the first element
        return tuple(sorted(dims, key=self.rank.get))

    def _expands(self, node: Node) -> bool:
        """Whether node's log-density is a vector Normal whose value, loc and scale span
        different batch dims: dists.fast_log_prob then expands the square instead of
        broadcasting all three times the event size (and the memory estimate knows)."""
        if node.dist != "Normal" or math.prod(node.shape or ()) <= 1:
            return False

        def dims_of(name):
            if name == PREV and node.name in self.series:
                return set(self.own[node.name]) - {self.kdim[node.name]} | {self.prev_dim[node.name]}
            if name in self.own:
                return set(self.own[name])
            return set(self.chain[name] if name in self._observed else self.data(name, node).dims)
        spans = [set(self.own.get(node.name, self.chain[node.name]))]
        for a in ("loc", "scale"):
            e = self.exprs[node.name].get(a)
            spans.append(set().union(*[dims_of(x) for x in e.names]) if e else set())
        size = lambda dims: math.prod(self.sizes[d] for d in dims)
        return size(set().union(*spans)) > max(size(d) for d in spans)

    def _resolve_proposal(self, proposal) -> Proposal:
        if isinstance(proposal, Proposal):
            for i in self.latents:
                f = proposal[i]
                if f is not None and tuple(f.raw[next(iter(f.raw))].shape[:len(self.chain[i])]) != \
                        tuple(self.plate_sizes[p] for p in self.chain[i]):
                    raise ModelError(f"proposal for {i!r} does not fit its plates {self.chain[i]}")
            return proposal
        if proposal == "prior":
            return Proposal({i: None for i in self.latents})
        if proposal == "q":
            return self.initial_proposal()
        raise ModelError(f"proposal must be 'prior', 'q' or a Proposal, got {proposal!r}")

    def initial_proposal(self, K: int = 1000, seed: int = 0) -> Proposal:
        """Q for every latent that has a family (the model's `proposal` field, else the
        default for its support and shape), started at the model file's `"init"` where it
        gives one, else moment-matched to the prior marginals. Those come from K prior draws
        (fewer where the plates are large: at most PRIOR_DRAW_ELEMENTS values in all), each
        element's draws winsorised at their 5% and 95% quantiles, so that a heavy-tailed or
        exploding prior (a HalfCauchy, a random walk) still gives a Q of usable scale."""
        n_elems = sum(math.prod(self.plate_sizes[p] for p in self.chain[i]) * math.prod(self.model.node(i).shape or ())
                      for i in self.latents)
        K = int(min(K, max(16, PRIOR_DRAW_ELEMENTS // max(n_elems, 1))))
        fams = {}
        with torch.no_grad():
            prior = Program(self.model, K, mode="global", device=self.device, dtype=self.dtype,
                            params=self.params, memory_budget=1 << 62, enumeration=False)   # draws only
            values = prior._draw(seed, reparam=False)
        for i in self.latents:
            node = self.model.node(i)
            entry = self.model.proposal.get(i, {})
            choice = "prior" if i in self.enum else entry.get("dist")
            v = values[i]
            if choice is None:
                support = self.specs[i].cls.support
                support = None if constraints.is_dependent(support) else support
                shape = node.shape or ()
                choice = default_family(node.dist, support, shape[0] if len(shape) == 1 else 1)
            if choice in (None, "prior"):
                fams[i] = None
                continue
            cls = check_family(choice, f"proposal for {i!r}")
            x = v.expand_to(("K", *self.chain[i]), prior.sizes).double()
            raw = {}
            if cls.name == "Categorical":   # its statistics (one-hot) need the number of categories
                n = max(int(x.max().item()) + 1, _categories(node, prior, values))
                raw = {"logits": torch.zeros(*x.shape[1:], n, dtype=torch.float64, device=self.device)}
            elif cls.discrete and not _integer_valued(x):
                raise ModelError(f"proposal for {i!r}: {cls.name} needs integer values")
            f = cls(raw, v.event_shape)
            if "init" in entry:
                moments = f.expected_stats(_init_params(f, entry["init"], x.shape[1:], i))
            else:
                moments = [st.mean(0) for st in f.stats(x if cls.discrete else _winsorised(x))]
            f.initial_moments = moments   # float64: QEM starts its average here
            f.set_moments(moments)
            fams[i] = f.cast(self.dtype)
        return Proposal(fams)

    # ---- data ----------------------------------------------------------------------------
    def data(self, name: str, node: Node) -> Named:
        key = (name, node.name)
        if key not in self._data:
            arr = self.model.data[name]
            chain = self._data_chain(name, node)
            if name in self.model.data_plates:
                plates = tuple(self.model.data_plates[name])
                if not set(plates) <= set(chain):
                    raise ModelError(f"{node.where()}: data {name!r} lives in plates {plates}, which are not all "
                                     f"plates of the node ({', '.join(chain) or 'none'})")
                want = tuple(self.plate_sizes[p] for p in plates)
                if arr.shape[:len(plates)] != want:
                    raise ModelError(f"data {name!r} has shape {arr.shape}; its plates {plates} need leading dims {want}")
            else:
                plates = ()
                for j in range(len(chain), 0, -1):
                    if arr.shape[:j] == tuple(self.plate_sizes[p] for p in chain[:j]):
                        plates = chain[:j]
                        break
            if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
                t = torch.as_tensor(arr.astype(np.int64), device=self.device)
            else:
                t = torch.as_tensor(arr, dtype=self.dtype, device=self.device)
            self._data[key] = Named(t, tuple(plates))
        return self._data[key]

    def _data_chain(self, name: str, node: Node) -> tuple[str, ...]:
        """The plates data `name`'s shape is read against in `node`: the node's own or, for
        data that a pmean/psd of the node reduces over a plate the node is not in, the
        longest chain of such a plate (a county's mean of its houses' covariate)."""
        chain = self.chain[node.name]
        best = None
        for e in self.exprs[node.name].values():
            for _, plate, inside in e.reductions:
                if name in inside and plate in self.plate_sizes and plate not in chain:
                    c = self.model.chain(plate)
                    best = c if best is None or len(c) > len(best) else best
        return chain if best is None else best

    def _observed_value(self, node: Node):
        """The node's data, missing entries (NaN) filled with a value in the support, and
        where it is present: None if nothing is missing, else a boolean tensor over its
        plates or, where some plate element is only partly missing, over its plates and
        the entries of its shape (a vector of independent Normals, Poissons, ...: the
        log-density is a sum over them). A Dirichlet or MultivariateNormal value is scored
        as a whole, so it may be missing only as a whole."""
        arr = self.model.data[node.name]
        t = torch.as_tensor(np.require(arr, np.float64, ["W"]), dtype=self.dtype, device=self.device)
        n_plates = len(self.chain[node.name])
        missing = torch.isnan(t)
        mask = None
        if missing.any():
            rank = self.specs[node.name].value_rank
            if rank:
                flat = missing.reshape(*missing.shape[:missing.dim() - rank], -1)
                partly = flat.any(-1) & ~flat.all(-1)
                if partly.any():
                    idx = [int(i) for i in torch.nonzero(partly)[0]]
                    val = np.asarray(arr, dtype=np.float64)[tuple(idx)]
                    raise ModelError(f"observed node {node.name!r}: the value{f' at index {idx}' if idx else ''} "
                                     f"({_nan_text(val)}) has some entries missing, but a {node.dist} value is "
                                     f"scored as a whole: give all of its entries or none (all null)")
                missing = flat.all(-1)
            present = ~missing                                          # (*plates, *entries)
            per_element = present.reshape(*present.shape[:n_plates], -1)
            whole = bool((per_element.all(-1) | ~per_element.any(-1)).all())
            mask = per_element.any(-1) if whole else present            # over the plates alone where that says it all
            support = self.specs[node.name].cls.support
            fill = 0.0 if constraints.is_dependent(support) else support_fill(support)
            t = torch.where(torch.isnan(t), torch.full_like(t, fill), t)
        return Named(t, self.chain[node.name]), mask

    # ---- evaluation ----------------------------------------------------------------------
    def _env(self, node: Node, values: dict[str, Named], kd: str | None = None, perms=None) -> Env:
        """Values of what `node` mentions. In sampling mode (kd given) every latent parent
        on another K-dim is re-indexed into kd by its permutation (and a time series' `prev`
        is left to the caller, which draws the series element by element)."""
        env = {}
        for name in self.mentions[node.name]:
            if name == PREV and node.name in self.series:
                continue
            if name in values:
                v = values[name]
                if kd is not None and name in self.kdim and self.kdim[name] != kd:
                    v = _permute(v, self.kdim[name], kd, self.chain[node.name], perms[name], self.rank)
                env[name] = v
            elif name in self._observed:
                env[name] = self._narrow(self._observed[name][0])
            else:
                env[name] = self._narrow(self.data(name, node))
        env = Env(env, self.rank, self.device, self.dtype)
        if node.name in self.series and kd is None:
            env.values[PREV] = self._prev(node, values, env)
        return env

    def _init(self, node: Node, env: Env) -> Named:
        """A time series' value before its first element (its field timeseries.init)."""
        expr = self.inits[node.name]
        if expr is not None:
            return expr(env)
        key = (node.name, "timeseries.init")
        if key not in self._constants:
            v = node.timeseries["init"]
            t = torch.tensor(v, dtype=self.dtype, device=self.device)
            self._constants[key] = Constant(t, (), float(v)) if t.dim() == 0 else Named(t, ())
        return self._constants[key]

    def _prev(self, node: Node, values: dict[str, Named], env: Env) -> Named:
        """`prev` of a time series for its whole plate at once: element t holds the particles
        of element t - 1 on the previous-element K-dim (the init value at t = 0, the same for
        every previous index), so its factor is one K x K matrix per element."""
        x, name, plate = values[node.name], node.name, node.plate
        dims = tuple(self.prev_dim[name] if d == self.kdim[name] else d for d in x.dims)
        if name in self.init_dim:   # the init's particles on the previous-element K-dim
            src, prev = self.init_dim[name], self.prev_dim[name]
            env = Env({k: Named(v.t, tuple(prev if d == src else d for d in v.dims)) for k, v in env.values.items()},
                      env.rank, env.device, env.dtype)
        first = self._init(node, env)
        out = tuple(sorted(set(dims) | set(first.dims), key=self.rank.get))
        T = x.t.shape[dims.index(plate)]

        def full(v: Named, n: int) -> torch.Tensor:   # aligned to `out` and expanded, n elements of the plate
            sizes = {**self._sizes(), plate: n}
            return v.align(out, len(x.event_shape)).expand(*[sizes[d] for d in out], *x.event_shape)
        rest = Named(x.t.narrow(dims.index(plate), 0, T - 1), dims)
        return Named(torch.cat([full(first, 1), full(rest, T - 1)], out.index(plate)), out)

    def _narrow(self, v: Named) -> Named:
        """v restricted to the chunk being computed, if any."""
        if self._window is None:
            return v
        plate, i, j = self._window
        return Named(v.t.narrow(v.dims.index(plate), i, j - i), v.dims) if plate in v.dims else v

    def _sizes(self) -> dict[str, int]:
        if self._window is None:
            return self.sizes
        plate, i, j = self._window
        return {**self.sizes, plate: j - i}

    def _args(self, node: Node, env: Env) -> dict[str, Named]:
        out = {}
        spec = self.specs[node.name]
        for a in spec.args:
            if a in node.args:
                v = node.args[a]
            elif a in spec.defaults:
                v = spec.defaults[a]
            else:
                continue
            if isinstance(v, str):
                try:   # the expression's own errors name the node and argument already
                    out[a] = self.exprs[node.name][a](env)
                except RuntimeError as e:
                    raise ModelError(f"{node.where(a)}: cannot evaluate {v!r}: {str(e).splitlines()[0]}") from None
            elif isinstance(v, Param):
                out[a] = Named(self.params[(node.name, a)], ())
            else:
                key = (node.name, a)
                if key not in self._constants:
                    t = to_dtype(v, self.dtype, self.device, node.where(a))
                    msg = range_error(spec, a, t)
                    if msg is not None:   # in range as written (checked at load), not once rounded
                        raise ModelError(f"{node.where(a)}: {msg} in {_dtype_name(self.dtype)}, where the value "
                                         f"written rounds to it; use dtype float64")
                    self._constants[key] = Constant(t, (), float(v)) if t.dim() == 0 else Named(t, ())
                out[a] = self._constants[key]
        if not self._checked:
            self._check_inputs(node, env, out)
        return out

    def _check_inputs(self, node: Node, env: Env, args: dict[str, Named]) -> None:
        """On a program's first evaluation: the data `node` reads fit the dtype, and each of
        its arguments is in range, the node and argument named (later, an argument out of
        range would show as a NaN in a child)."""
        for name in self.mentions[node.name]:
            t = env.values[name].t
            if name in self.kdim and t.is_floating_point() and bool(torch.isnan(t).any()):   # blame the parent
                raise ModelError(f"node {name!r}: some of its particles are NaN (its proposal or its arguments "
                                 f"are out of range)")
            if name not in self.kdim and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ModelError(f"data {name!r}: values beyond the range of {_dtype_name(self.dtype)} (largest "
                                 f"{torch.finfo(self.dtype).max:.3g}); use dtype float64")
        for a, v in args.items():
            src = node.args.get(a)
            stray = [d for d in v.dims if d in self.plate_sizes and d not in self.chain[node.name]]
            if stray:   # data read against a reduced plate's chain, not reduced away
                raise ModelError(f"{node.where(a)}: its value varies along plate {stray[0]!r}, which is not a plate "
                                 f"of the node; reduce it (pmean(x, {stray[0]!r})) or put the node in that plate")
            if isinstance(src, Param) and not bool(torch.isfinite(v.t).all()):
                raise ModelError(f"{node.where(a)}: its value {_np_text(v.t)} is out of the range of "
                                 f"{_dtype_name(self.dtype)}; use dtype float64")
            msg = range_error(self.specs[node.name], a, v.t)
            if msg is not None:
                raise ModelError(f"{node.where(a)}: {msg}" + (f" (from {src!r})" if isinstance(src, str) else ""))

    def _layout(self, node: Node, args: dict[str, Named], dims: tuple[str, ...]):
        """The spec, the batch dims of node's distribution (`dims` and its arguments'), and
        how many trailing batch dims are event dims of its value (a latent of shape [18]).
        Fixed by the structure, so worked out once per node and layout of its inputs."""
        key = (node.name, dims, *[(a, v.dims, v.t.dim()) for a, v in args.items()])
        if key not in self._layouts:
            self._layouts[key] = self._work_out_layout(node, args, dims)
        return self._layouts[key]

    def _work_out_layout(self, node: Node, args: dict[str, Named], dims: tuple[str, ...]):
        spec = self.specs[node.name]
        if node.shape is not None:
            n_extra = len(node.shape) - spec.value_rank
            if n_extra < 0:
                raise ModelError(f"{node.where()}: shape {list(node.shape)} has fewer dims than a {node.dist} value")
        else:
            n_extra = max([len(v.event_shape) - spec.arg_rank.get(a, 0) for a, v in args.items()] + [0])
            if node.kind == "observed":   # data with more event dims than the arguments give
                event = tuple(self.model.data[node.name].shape[len(self.chain[node.name]):])
                if len(event) > n_extra + spec.value_rank:
                    raise ModelError(f"{node.where()}: its data have shape {list(event)} per plate element, but its "
                                     f"arguments make a {node.dist} value of "
                                     f"{'one number' if n_extra + spec.value_rank == 0 else 'fewer dims'}: give the "
                                     f"node \"shape\": {list(event)}")
        dims = tuple(sorted(set(dims).union(*[v.dims for v in args.values()]), key=self.rank.get))
        return spec, dims, n_extra

    def distribution(self, name: str, values: dict[str, Named]):
        """Node `name`'s torch distribution given `values` (its parents' particles, as a
        Sample holds them): (distribution, the names of its batch dims, how many trailing
        batch dims are event dims of the node's declared shape)."""
        node = self.model.node(name)
        return self._dist(node, self._args(node, self._env(node, values)), ())

    def _dist(self, node: Node, args: dict[str, Named], dims: tuple[str, ...]):
        spec, dims, n_extra = self._layout(node, args, dims)
        return build(spec, args, dims, n_extra, node.where()), dims, n_extra

    def _draw(self, seed: int, reparam: bool) -> dict[str, Named]:
        """Sample every latent (K particles each), observed nodes take their data."""
        values: dict[str, Named] = {}
        ranges = []   # (node, argument, whether in range): looked at once, after every latent is drawn
        with self.seeded(seed):
            for node in self.nodes:
                name = node.name
                if node.kind == "observed":
                    values[name] = self._observed[name][0]
                    continue
                if name in self.enum:   # every value of the support, the same in every plate element
                    n = self.enum[name]   # integers for a Categorical, as its samples are (an index)
                    support = torch.arange(n, dtype=torch.long if node.dist == "Categorical" else self.dtype,
                                           device=self.device)
                    values[name] = Named(support.reshape(n, *[1] * len(self.chain[name])).expand(
                        n, *[self.plate_sizes[p] for p in self.chain[name]]), self.own[name])
                    continue
                q = self.proposal[name]
                if q is not None:
                    x = q.sample(self.K, reparam)
                    if self._defends(q, name):   # each particle from the prior instead with probability defensive
                        pick = torch.rand(x.shape[:len(self.own[name])], device=self.device) < self.defensive
                        pick = pick.reshape(*pick.shape, *[1] * (x.dim() - pick.dim()))
                        x = self._draw_prior(node, values, reparam, ranges, (pick, x)).t
                    values[name] = Named(x, self.own[name])
                    continue
                values[name] = self._draw_prior(node, values, reparam, ranges)
            if ranges and not bool(torch.stack([r[-1] for r in ranges]).all()):
                node, a, t, _ = next(r for r in ranges if not bool(r[-1]))
                src = node.args.get(a)
                raise ModelError(f"{node.where(a)}: {range_error(self.specs[node.name], a, t)} for some particles"
                                 + (f" (from {src!r})" if isinstance(src, str) else ""))
        return values

    @contextlib.contextmanager
    def seeded(self, seed: int):
        """Draws inside from `seed`: only the generator this program draws from is seeded,
        and it gets its state back after (torch.manual_seed also queues lazy seeds for
        CUDA/XPU/MTIA, each capturing a Python traceback, ~0.3 ms per iteration on a CPU-only
        machine, and fork_rng copies every device's state). The same streams, bit for bit."""
        gen = torch.default_generator if self.device.type != "cuda" else torch.cuda.default_generators[
            self.device.index if self.device.index is not None else torch.cuda.current_device()]
        state = gen.get_state()
        gen.manual_seed(seed)
        try:
            yield
        finally:
            gen.set_state(state)

    def _defends(self, q, name: str) -> bool:
        """Whether latent `name`'s particles come from the defensive mixture: not for a
        discrete Q (it mixes in a uniform already) nor for a time series (drawing its prior
        takes one pass per element of its plate)."""
        return self.defensive > 0 and q is not None and not q.discrete and name not in self.series

    def _draw_prior(self, node: Node, values: dict[str, Named], reparam: bool, ranges: list,
                    mixed=None) -> Named:
        """K particles of a latent from its prior, each parent particle on another K-dim
        coupled to the child's by a random permutation per plate element. Arguments computed
        from particles join `ranges`, to be checked once the whole draw is done. mixed =
        (pick, q_particles): the defensive mixture, prior particles where pick, Q's elsewhere."""
        if node.name in self.series:
            return self._draw_series(node, values, reparam, ranges, mixed)
        kd, target = self.kdim[node.name], self.own[node.name]
        sizes = [self._sizes()[d] for d in target]
        perms = {p: torch.rand(sizes, device=self.device).argsort(0)
                 for p in self.latent_parents[node.name] if self.kdim[p] != kd}
        x = self._draw_from(node, self._env(node, values, kd, perms), sizes, reparam, ranges)
        return x if mixed is None else Named(torch.where(mixed[0], x.t, mixed[1]), x.dims)

    def _draw_series(self, node: Node, values: dict[str, Named], reparam: bool, ranges: list,
                     mixed=None) -> Named:
        """A time series from its prior, element by element along its plate: `prev` at
        element t is element t - 1's particles (in a defensive mixture, the mixture's),
        coupled by a random permutation per element in MP (a particle's own in global mode),
        and the init value at t = 0."""
        kd, target, plate = self.kdim[node.name], self.own[node.name], node.plate
        xs, prev = [], None
        for t in range(self.plate_sizes[plate]):
            self._window = (plate, t, t + 1)
            try:
                here = {k: self._narrow(v) for k, v in values.items()}
                sizes = [self._sizes()[d] for d in target]
                perms = {p: torch.rand(sizes, device=self.device).argsort(0)
                         for p in self.latent_parents[node.name] if self.kdim[p] != kd}
                env = self._env(node, here, kd, perms)
                if prev is None:
                    env.values[PREV] = self._init(node, env)
                elif self.prev_dim[node.name] != kd:
                    perm = torch.rand(sizes, device=self.device).argsort(0)
                    env.values[PREV] = _permute(prev, kd, kd, self.chain[node.name], perm, self.rank)
                else:
                    env.values[PREV] = prev
                prev = self._draw_from(node, env, sizes, reparam, ranges)
                if mixed is not None:
                    axis = target.index(plate)
                    pick, q = (m.narrow(axis, t, 1) for m in mixed)
                    prev = Named(torch.where(pick, prev.t, q), prev.dims)
            finally:
                self._window = None
            xs.append(prev.t)
        return Named(torch.cat(xs, target.index(plate)), target)

    def _draw_from(self, node: Node, env: Env, sizes: list[int], reparam: bool, ranges: list) -> Named:
        """K particles of `node` per plate element (of the current window) from its
        distribution given `env`."""
        target = self.own[node.name]
        args = self._args(node, env)
        if self._checked:   # the first draw's are checked by _args
            ranges += [(node, a, v.t, ok) for a, v in args.items() if not isinstance(v, Constant)
                       and (ok := range_ok(self.specs[node.name], a, v.t)) is not None]
        d, dims, n_extra = self._dist(node, args, target)
        extra = node.shape[:n_extra] if node.shape is not None else d.batch_shape[len(dims):]
        try:
            d = d.expand((*sizes, *extra))
        except RuntimeError as e:
            raise ModelError(f"{node.where()}: its arguments do not fit shape {list(node.shape or ())}: "
                             f"{str(e).splitlines()[0]}") from None
        if reparam and not d.has_rsample:
            raise ModelError(f"{node.where()}: {node.dist} cannot be sampled by reparameterisation")
        return Named(d.rsample() if reparam else d.sample(), target)

    def _log_prob(self, node: Node, values: dict[str, Named], offset: Named | None = None) -> Named:
        """log P(node | its parents' particles), plus `offset` (a tensor over fewer dims:
        a latent's -log Q and source term, added where it costs no full-size pass). An
        observed node's is a `Deferred`: computed when the contraction asks for it, whole
        or summed over a plate term by term (dists.summed_log_prob)."""
        args = self._args(node, self._env(node, values))
        if node.kind == "observed":
            value, mask = self._observed[node.name]
            value = self._narrow(value)
            mask = None if mask is None else self._narrow(Named(mask, value.dims)).t
        else:
            value, mask = values[node.name], None
        spec, dims, n_extra = self._layout(node, args, value.dims)
        v = value.align(dims, n_extra + spec.value_rank)
        # a mask over the entries of the node's shape too: those entries are masked before they are summed
        entries = None if mask is None or mask.dim() == len(value.dims) else \
            Named(mask, self.chain[node.name]).align(dims, n_extra)
        m = None if mask is None or entries is not None else Named(mask, self.chain[node.name]).align(dims, 0)
        d = None if self._checked else build(spec, args, dims, n_extra, node.where())   # validates, once
        if node.kind == "latent":
            return self._score(node, spec, args, dims, n_extra, v, None if offset is None else offset.align(dims, 0),
                               m, entries, d)
        if not self._checked:
            plate_mask = mask if entries is None else None
            self._check_support(node, d, v, dims, plate_mask, entries)
            # probs of exactly 0 or 1 that no latent moves (a constant, data): a value they make
            # impossible is a data error, not a particle of weight zero (torch would score it log(eps))
            fixed = all(d in self.plate_sizes for a in ("probs", "total_count") if a in args for d in args[a].dims)
            bad = impossible(spec, args, dims, n_extra, v, entries) if fixed else None
            if bad is not None:
                self._none_possible(node, ~bad, dims, plate_mask, f"is impossible under {node.dist} with probs "
                                                                  f"{'0' if spec.name == 'NegativeBinomial' else '0 or 1'}")
            big = self.dtype == torch.float32 and bool((v.abs() > 1e18).any())
            with torch.no_grad():   # values only: what autograd saves is the same in every evaluation
                lp = self._score(node, spec, args, dims, n_extra, v, None, m, entries, d)
            self._none_possible(node, lp.t > -math.inf, dims, None,
                                "has zero probability under every particle" + (
                                    " (values this large overflow float32: try dtype float64)" if big else ""))
        return deferred_log_prob(lambda: self._score(node, spec, args, dims, n_extra, v, None, m, entries, None).t,
                                 spec, args, dims, n_extra, v, m if entries is None else entries, self._sizes())

    def _score(self, node, spec, args, dims, n_extra, v, off, m, entries, d) -> Named:
        """log P(v | args) over `dims`, its event dims summed (those `entries` leaves out
        as 0), plus `off`, and 0 where the plate mask `m` is False."""
        try:
            lp = None if entries is not None else fast_log_prob(spec, args, dims, n_extra, v, off,
                                                                 self._expanded[node.name])
            if lp is None:
                if d is None:
                    d = build(spec, args, dims, n_extra, node.where())
                lp = d.log_prob(v)
                if entries is not None:
                    lp = torch.where(entries, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
                lp = event_sum(lp, n_extra)
                lp = lp if off is None else lp + off
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"{node.where()}: cannot score its value: {str(e).splitlines()[0]}") from None
        if tuple(lp.shape[:len(dims)]) != tuple(lp.shape) or lp.dim() != len(dims):
            raise ModelError(f"{node.where()}: its arguments have event shape "
                             f"{tuple(lp.shape[len(dims):])} that its value does not have")
        if m is not None:
            lp = torch.where(m, lp, torch.zeros((), dtype=lp.dtype, device=lp.device))
        return Named(lp, dims)

    def _check_support(self, node, d, v, dims, mask, entries=None):
        """An observed value that no particle combination can produce is a data error
        (`mask` over the plates or `entries` over the plates and shape: where it is present)."""
        if not bool(torch.isfinite(v).all()):   # inf is refused at load: this overflowed the dtype
            raise ModelError(f"data {node.name!r}: values beyond the range of {_dtype_name(self.dtype)} (largest "
                             f"{torch.finfo(self.dtype).max:.3g}); use dtype float64")
        try:
            ok = d.support.check(v)
        except (NotImplementedError, AttributeError, RuntimeError):
            return
        if entries is not None:
            ok = ok | ~entries
        ok = ok.reshape(*ok.shape[:len(dims)], -1).all(-1)
        self._none_possible(node, ok, dims, mask, f"is outside the support of {node.dist}")

    def _none_possible(self, node, ok, dims, mask, why: str):
        """Refuse an observed value that `ok` (over `dims`) says no particle combination allows."""
        kaxes = [i for i, x in enumerate(dims) if x not in self.plate_sizes]
        if kaxes:
            ok = ok.any(dim=kaxes)
        chain = self.chain[node.name]
        ok = Named(ok, tuple(x for x in dims if x in self.plate_sizes)).expand_to(chain, self._sizes())
        if mask is not None:
            ok = ok | ~mask
        if not bool(ok.all()):
            idx = tuple(int(i) for i in torch.nonzero(~ok)[0])
            if self._window is not None:
                plate, start, _ = self._window
                k = chain.index(plate)
                idx = idx[:k] + (idx[k] + start,) + idx[k + 1:]
            val = np.asarray(self.model.data[node.name], dtype=np.float64)[idx]   # as given: null where missing
            raise ModelError(f"observed node {node.name!r}: value {_nan_text(val) if val.ndim else float(val)}"
                             f"{f' at index {list(idx)}' if idx else ''} {why}")

    def factors(self, values: dict[str, Named], nodes=None, sources=None) -> dict[str, Named]:
        """The factor of every node (or of `nodes`), restricted to the current chunk; with
        `sources`, each latent's source term J_i is part of its factor."""
        sizes = self._sizes()
        if self._window is not None:
            values = {k: self._narrow(v) for k, v in values.items()}
        out = {}
        for node in self.nodes if nodes is None else nodes:
            name = node.name
            dims = self.factor_dims[name]
            if node.kind == "latent":
                own = self.own[name]
                j = None if sources is None else self._narrow(Named(sources[name], own))
                q = self.proposal[name]
                if name in self.enum:   # the exact prior weight of each value (no proposal to divide by)
                    lp = self._log_prob(node, values, j)
                elif q is None and set(dims) == set(own):
                    # prior proposal with nothing to mix over: log P - log Q is exactly 0
                    lp = j if j is not None else \
                        Named(torch.zeros([sizes[d] for d in own], dtype=self.dtype, device=self.device), own)
                elif q is None or self._defends(q, name):
                    lp = self._log_prob(node, values)
                    mix = tuple(i for i, d in enumerate(lp.dims) if d in self.kdims and d != self.kdim[name])
                    log_q = logsumexp(lp.t, mix, keepdim=True) - len(mix) * math.log(self.K) if mix else lp.t
                    if q is not None:   # Q_MP = (1 - defensive) Q + defensive * (the prior's mixture)
                        log_own = Named(self._narrow_q(q, name).log_prob(values[name].t), own).align(lp.dims, 0)
                        log_q = torch.logaddexp(math.log1p(-self.defensive) + log_own,
                                                math.log(self.defensive) + log_q)
                    f = lp.t - log_q
                    lp = Named(f if j is None else f + j.align(lp.dims, 0), lp.dims)
                else:
                    log_q = self._narrow_q(q, name).log_prob(values[name].t)
                    lp = self._log_prob(node, values, Named(-log_q if j is None else j.t - log_q, own))
            else:
                lp = self._log_prob(node, values)
            if lp.dims != dims:
                lp = Named(lp.expand_to(dims, sizes), dims)
            out[name] = lp
        return out

    def _narrow_q(self, q, name):
        """Q restricted to the chunk being computed, if any."""
        if self._window is not None and self._window[0] in self.chain[name]:
            plate, i, k = self._window
            return q.narrow(self.chain[name].index(plate), i, k)
        return q

    def contract(self, values: dict[str, Named]):
        """log P_MP of one sample, with a zero source term J_i on every latent's factor.

        Returns (log_p, trace, factors, sources). Split runs compute the plate `split`
        chunk by chunk under activation checkpointing, so only one chunk's tensors are
        alive at a time; their trace is recomputed when posterior draws ask for it."""
        sources = {i: torch.zeros([self.sizes[d] for d in self.own[i]], dtype=self.dtype, device=self.device,
                                  requires_grad=True) for i in self.latents}
        if self.split is None:
            factors = self.factors(values, None, sources)
            log_p, trace, _ = self.plan.contract(factors, self.sizes)
        else:
            plate, chunk = self.split
            outer = [n for n in self.nodes if plate not in self.chain[n.name]]
            factors = self.factors(values, outer, sources)
            total = None
            for i in range(0, self.plate_sizes[plate], chunk):
                j = min(i + chunk, self.plate_sizes[plate])
                outs = checkpoint(self._chunk, values, sources, i, j, use_reentrant=False)
                total = outs if total is None else [a + b for a, b in zip(total, outs)]
            keys = self._split_outputs()
            inject = {k: Named(t, self.plan.dims_of[k]) for k, t in zip(keys, total)}
            log_p, trace, _ = self.plan.contract({**factors, **inject}, self.sizes, self.outer_levels)
        self._checked = True
        return log_p, trace, factors, sources

    def _chunk(self, values, sources, i, j, trace=False):
        """The outputs of the levels inside the split plate, for its elements i..j-1."""
        plate, _ = self.split
        self._window = (plate, i, j)
        try:
            inner = [n for n in self.nodes if plate in self.chain[n.name]]
            factors = self.factors(values, inner, sources)
            _, tr, vals = self.plan.contract(factors, self._sizes(), self.inner_levels)
        finally:
            self._window = None
        outs = [vals[k].t for k in self._split_outputs()]
        return (outs, tr) if trace else outs

    def sample(self, seed: int = 0, reparam: bool = False):
        from .sample import Sample
        return Sample(self, self._draw(seed, reparam))

    # ---- the memory planner -------------------------------------------------------------
    def _plan_split(self):
        """None if a run fits the budget; else (plate, chunk) so that it does."""
        est = self.memory_estimate()
        if est <= self.memory_budget:
            return None
        best = None
        reduced = {r[1] for e in self.exprs.values() for x in e.values() for r in x.reductions}
        for plate in sorted(self.plate_sizes, key=lambda p: len(self.model.chain(p))):
            if plate in self.series.values() or plate in reduced:   # a series' elements are not independent;
                # a chunk of a plate that pmean/psd reduce would give them part of it only
                continue
            n = self.plate_sizes[plate]
            if self.memory_estimate({plate: 1}) > self.memory_budget:
                continue
            lo, hi = 1, n
            while lo < hi:    # the largest chunk that fits
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if self.memory_estimate({plate: mid}) <= self.memory_budget else (lo, mid - 1)
            if best is None or -(-n // lo) < -(-self.plate_sizes[best[0]] // best[1]):
                best = (plate, lo)
        if best is None:
            groups = self.suggest_groups()
            hint = "; ".join(f"group {', '.join(g)}" for g in groups) or "group latents of one plate"
            raise ModelError(
                f"this run needs about {human_bytes(est)} at K={self.K} but the memory budget is "
                f"{human_bytes(self.memory_budget)}, and no plate split into chunks brings it under. "
                f"Remedies: a smaller K; latents that share a K-dim (\"group\": \"NAME\" in the model file: "
                f"{hint}); or a larger memory budget")
        plate = best[0]
        inside = {p for p in self.plate_sizes if plate in self.model.chain(p)}
        self.inner_levels = [lv for lv in self.plan.levels if lv.plate in inside]
        self.outer_levels = [lv for lv in self.plan.levels if lv.plate not in inside]
        return best

    def _split_outputs(self) -> list[str]:
        plate, _ = self.split
        return [f"<{plate}:{ci}>" for ci in range(len(next(lv for lv in self.inner_levels
                                                              if lv.plate == plate).components))]

    def suggest_groups(self) -> list[list[str]]:
        """Latents of one plate that are all parents of one factor: sharing a K-dim would
        shrink that factor from K^n to K per plate element."""
        out = []
        for node in self.nodes:
            same = {}
            for p in self.latent_parents[node.name]:
                if self.kdim[p] == f"K:{p}":
                    same.setdefault(self.model.node(p).plate, []).append(p)
            for plate, names in same.items():
                if len(names) >= 3 and names not in out:
                    out.append(names)
        return out

    def memory_estimate(self, override: dict | None = None) -> int:
        """Peak bytes of one sample and its backward pass, from the plan: the factors, and
        for every step its operands (exponentiated, or their broadcast sum for a logsumexp)
        and result, kept for autograd, doubled for their gradients. `override` changes
        plate sizes (a chunk of a split plate)."""
        elem = torch.finfo(self.dtype).bits // 8
        sizes = {**self.sizes, **(override or {})}
        size = lambda dims: math.prod(sizes[d] for d in dims)
        # each factor, and a node's log-density before its event dims are summed out (or,
        # for a vector Normal by its expanded square, that term in float64 and its cast)
        n = sum(size(dims) * (3 if self._expanded[name] else 1 + math.prod(self.model.node(name).shape or ()))
                for name, dims in self.factor_dims.items())
        for level in self.plan.levels:
            for comp in level.components:
                for st in comp.steps:
                    n += sum(size(dims) for dims in st.in_dims)
                    if st.plate_sum is None:
                        n += 2 * size(st.out_dims)
                    else:   # summed over its plate as it goes: the sum, and half of each operand kept (dA, dB)
                        n += 2 * size(tuple(d for d in st.out_dims if d != level.plate)) + \
                            sum(size(dims) for dims in st.in_dims) // 2
                    if st.removed and st.layout is not None:
                        n += max(size(dims) for dims in st.in_dims)
                if comp.chain:   # the chain's matrices, and the backward algorithm's exponentials of them
                    n += 3 * size(comp.out_dims)
        return 2 * n * elem


def default_budget(device: torch.device) -> int:
    """Half the memory free on the device now (on the CPU, within the container's cgroup
    limit too)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    free = available_memory()
    return int(0.5 * free) if free is not None else 4 << 30


def available_memory(proc: str = "/proc") -> int | None:
    """Bytes this process may still allocate: the kernel's MemAvailable, or less where a
    cgroup (v1 or v2) of this process, or one above it, has a memory limit."""
    free = []
    try:
        with open(f"{proc}/meminfo") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        free.append(int(info["MemAvailable"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    free += [limit - used for limit, used in _cgroup_limits(proc)]
    return max(min(free), 0) if free else None


def _cgroup_limits(proc: str) -> list[tuple[int, int]]:
    """(limit, usage less reclaimable page cache) of every memory cgroup from this
    process's up to its hierarchy's root that has a limit. Mount points and the
    process's cgroup path come from /proc/self/mountinfo and /proc/self/cgroup."""
    try:
        with open(f"{proc}/self/cgroup") as f:
            groups = [line.rstrip("\n").split(":", 2) for line in f]
        with open(f"{proc}/self/mountinfo") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return []
    out = []
    for fields in mounts:
        if "-" not in fields:
            continue
        sep = fields.index("-")
        fstype, options = fields[sep + 1], fields[sep + 3].split(",") if len(fields) > sep + 3 else []
        root, point = fields[3], fields[4]
        if fstype == "cgroup2":
            path = next((p for h, c, p in groups if h == "0" and c == ""), None)
            files = ("memory.max", "memory.current", "inactive_file")
        elif fstype == "cgroup" and "memory" in options:
            path = next((p for h, c, p in groups if "memory" in c.split(",")), None)
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        if path is None:
            continue
        rel = path[len(root):] if root != "/" and path.startswith(root) else path
        d = point + "/" + rel.strip("/")
        while True:   # the process's cgroup, then each one above it within this mount
            limit, used = _read_int(f"{d}/{files[0]}"), _read_int(f"{d}/{files[1]}")
            if limit is not None and used is not None and limit < 1 << 60:
                out.append((limit, used - (_stat(f"{d}/memory.stat", files[2]) or 0)))
            if len(d) <= len(point.rstrip("/")) or d.rstrip("/") == point.rstrip("/"):
                break
            d = d.rstrip("/").rsplit("/", 1)[0]
    return out


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None   # v2's "max" means no limit


def _stat(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except (OSError, ValueError):
        pass
    return None


def _nan_text(a: np.ndarray) -> str:
    return str([None if np.isnan(x) else float(x) for x in np.ravel(a)][:8])


def _np_text(t: torch.Tensor) -> str:
    return str(t.detach().cpu().numpy().round(4).tolist())[:60]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _permute(v: Named, src: str, kd: str, chain: tuple[str, ...], perm: torch.Tensor, rank) -> Named:
    """Parent particles re-indexed into the child's K-dim: element-wise v[perm[k, plates]]."""
    dims = (kd, *chain)
    rest = v.event_shape
    t = Named(v.t, tuple(kd if d == src else d for d in v.dims)).align(dims, len(rest))
    t = t.expand(*perm.shape, *rest)
    idx = perm.reshape(*perm.shape, *[1] * len(rest)).expand(*perm.shape, *rest)
    return Named(torch.gather(t, 0, idx), dims)


PRIOR_DRAW_ELEMENTS = 1 << 25   # prior draws for the starting Q: at most this many values in all
ENUMERATE_MAX = 16        # a discrete latent with at most this many values is summed over them by default ...
ENUMERATE_HARD_MAX = 256  # ... and at most this many when its node asks ("enumerate": true)


def support_size(node: Node, model: Model) -> int | None:
    """Number of values of a Bernoulli, Binomial (constant or data total_count) or
    Categorical (constant or data probabilities) latent; None where it needs computing."""
    if node.dist == "Bernoulli":
        return 2
    if node.dist == "Binomial":
        n = node.args.get("total_count", 1)
        if isinstance(n, str) and n in model.data:
            n = float(np.nanmax(model.data[n]))
        return int(n) + 1 if isinstance(n, (int, float, np.floating, np.integer)) and float(n).is_integer() else None
    v = node.args.get("probs", node.args.get("logits"))
    if isinstance(v, str) and v in model.data:
        v = model.data[v]
    return int(np.shape(v)[-1]) if isinstance(v, (list, np.ndarray)) and np.ndim(v) else None


def _winsorised(x: torch.Tensor, tail: float = 0.05) -> torch.Tensor:
    """x (draws first) with each element's draws clipped to their tail and 1 - tail
    quantiles; non-finite draws count as the largest."""
    x = torch.where(torch.isfinite(x), x, torch.finfo(x.dtype).max)
    xs = x.sort(0).values
    n = x.shape[0] - 1
    return torch.minimum(torch.maximum(x, xs[int(tail * n)]), xs[int((1 - tail) * n)])


def _init_params(family, init, shape, latent: str) -> dict[str, torch.Tensor]:
    """A model file's starting Q (`"init": {"loc": 0, "scale": 1}`), each parameter a number
    or a nested list broadcast to the latent's (*plates, *event) shape, checked in range."""
    where = f"proposal for {latent!r}, field 'init'"
    if not isinstance(init, dict):
        raise ModelError(f"{where}: must be an object of {family.name} parameters, got {init!r}")
    names = set(family.shown) | ({"scale"} if family.name == "MultivariateNormal" else set())
    unknown = set(init) - names
    if unknown:
        raise ModelError(f"{where}: {family.name} has no parameter {sorted(unknown)[0]!r} (its parameters: "
                         f"{', '.join(family.shown)})")
    out = {}
    for k, v in init.items():
        try:
            t = torch.as_tensor(v, dtype=torch.float64)
            target = tuple(shape)
            if k == "probs" and family.name == "Categorical":
                target += t.shape[-1:]
            elif k == "covariance_matrix":
                target += tuple(shape[-1:])
            t = t.expand(target).clone()
        except (TypeError, ValueError, RuntimeError):
            raise ModelError(f"{where}: {k!r} must be a number or a list that broadcasts to the latent's "
                             f"shape {list(shape)} (plates, then event), got {v!r}") from None
        if not bool(torch.isfinite(t).all()):
            raise ModelError(f"{where}: {k!r} must be finite, got {v!r}")
        if k not in ("loc", "covariance_matrix") and not bool((t > 0).all()):
            raise ModelError(f"{where}: {k!r} must be positive, got {v!r}")
        if k == "probs" and not bool((t <= 1).all()):
            raise ModelError(f"{where}: 'probs' must lie in (0, 1], got {v!r}")
        out[k] = t
    missing = [k for k in family.shown if k not in out and not (k == "covariance_matrix" and "scale" in out)]
    if missing:
        raise ModelError(f"{where}: {family.name} needs {', '.join(repr(k) for k in missing)}")
    if family.name == "MultivariateNormal" and "scale" in out:
        out["covariance_matrix"] = torch.diag_embed(out.pop("scale") ** 2)
    if family.name == "MultivariateNormal" and not bool(torch.linalg.cholesky_ex(out["covariance_matrix"]).info.eq(0).all()):
        raise ModelError(f"{where}: 'covariance_matrix' must be symmetric positive definite")
    return out


def _integer_valued(x: torch.Tensor) -> bool:
    return bool((x == torch.round(x)).all())


def _categories(node, prior, values) -> int:
    args = prior._args(node, prior._env(node, values, None))
    for a in ("probs", "logits"):
        if a in args:
            return args[a].event_shape[-1]
    return 1


__all__ = ["Program"]
