"""Plate-by-plate log-space tensor contraction, planned with opt_einsum.

The plan is static: it depends on the model's structure, K and the plate sizes, never on
sample values, so it is built once per compiled program and reused every iteration.

Within one plate level the factors that share K-dims local to that plate form a
component; each component is one einsum (planned by `opt_einsum.contract_path`) that
sums out its local K-dims in log space. The result, less log K per summed dim, is summed
over the plate's elements and handed to the enclosing level as a new factor.

A time-series latent couples consecutive elements of its plate: its factor holds its own
K-dim and its previous element's ("K:x~prev"). Its component sums out everything else per
element, leaving one K x K matrix per element (and per value of the outer K-dims), and the
plate's product over elements becomes the chain's matrix product, summed over paths by
the backward algorithm in log space (`chain_logsumexp`).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import opt_einsum
import torch

from .errors import ModelError
from .named import Deferred, Named

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PLAN_CACHE: dict = {}


@dataclass
class Step:
    inputs: tuple[int, ...]      # positions in the component's working list of operands
    in_dims: tuple[tuple[str, ...], ...]
    removed: tuple[str, ...]     # dims summed out at this step
    out_dims: tuple[str, ...]
    equation: str
    plate_sum: tuple | None = None   # summed_step_layout: the result is only used summed over a plate
    layout: tuple | None = field(init=False)   # broadcast_layout of the step

    def __post_init__(self):
        self.layout = broadcast_layout(self.in_dims, self.removed, self.out_dims)


@dataclass
class Component:
    factors: list[str]           # factor names, in order
    local: tuple[str, ...]       # K-dims summed out here
    out_dims: tuple[str, ...]    # before the plate sum
    steps: list[Step]
    info: object                 # opt_einsum PathInfo (None for a lone factor with nothing to sum)
    log_k: float = 0.0           # n log K for the n K-dims summed out here
    chain: tuple = ()            # ((current, previous) K-dims) of time series along the plate


@dataclass
class Level:
    plate: str | None            # None is the root
    components: list[Component] = field(default_factory=list)


class Plan:
    """Levels innermost first; each factor in exactly one component of one level."""

    def __init__(self, factor_dims: dict[str, tuple[str, ...]], home: dict[str, str | None],
                 plate_parent: dict[str, str | None], sizes: dict[str, int], rank: dict[str, int],
                 optimize: str = "greedy", chains: dict[str, list[tuple[str, str]]] | None = None,
                 exact: set[str] = frozenset()):
        """chains: {plate: [(K-dim, previous element's K-dim, init K-dim or None)]} of the
        time series along it (the init K-dim: whose particles the previous index runs over
        at the first element). exact: K-dims that hold a latent's support (enumerated): a
        plain sum, with no 1/K."""
        self.sizes, self.rank, self.plate_parent = sizes, rank, plate_parent
        self.optimize = optimize
        self.chains = chains or {}
        self.exact = set(exact)
        depth = {p: len(self._chain(p)) for p in plate_parent}
        order = sorted(plate_parent, key=lambda p: -depth[p]) + [None]   # innermost first
        pending = {lvl: [] for lvl in order}
        dims_of = dict(factor_dims)
        for name, dims in factor_dims.items():
            pending[self._level(dims, depth)].append(name)
        self.levels: list[Level] = []
        for plate in order:
            level = Level(plate)
            local = {d for d, h in home.items() if h == plate}
            for names in _components(pending[plate], dims_of, local):
                comp = self._component(names, dims_of, local, plate)
                level.components.append(comp)
                gone = {plate, *[d for c, p, _ in comp.chain for d in (c, p)]}
                up = tuple(d for d in comp.out_dims if d not in gone) + tuple(i for _, _, i in comp.chain if i)
                key = f"<{plate}:{len(level.components) - 1}>"
                dims_of[key] = up
                if plate is not None:
                    pending[self._level(up, depth)].append(key)
            self.levels.append(level)
        self.dims_of = dims_of     # dims of every factor and level output, by name

    def _chain(self, p):
        out = []
        while p is not None:
            out.append(p)
            p = self.plate_parent[p]
        return out

    def _level(self, dims, depth):
        plates = [d for d in dims if d in self.plate_parent]
        return max(plates, key=lambda p: depth[p]) if plates else None

    def _component(self, names, dims_of, local, plate) -> Component:
        dims = sorted({d for n in names for d in dims_of[n]}, key=lambda d: self.rank[d])
        chain = tuple(c for c in self.chains.get(plate, ()) if c[0] in dims)
        kept = {d for c, p, _ in chain for d in (c, p)}   # summed by the chain's product, not per element
        here = tuple(d for d in dims if d in local and d not in kept)
        out = tuple(d for d in dims if d not in local or d in kept)
        log_k = sum(math.log(self.sizes[d]) for d in here if d not in self.exact) + \
            sum(math.log(self.sizes[c]) for c, _, _ in chain if c not in self.exact)
        if len(names) == 1 and not here:
            return Component(names, here, out, [], None, log_k, chain)
        # opt_einsum plans with any number of symbols (a-z, A-Z first); torch.einsum takes 52
        # letters, so a component with more dims gives each step letters of its own
        letter = {d: opt_einsum.get_symbol(i) for i, d in enumerate(dims)}
        operands = [dims_of[n] for n in names]
        eq = ",".join("".join(letter[d] for d in o) for o in operands) + "->" + "".join(letter[d] for d in out)
        shapes = [tuple(self.sizes[d] for d in o) for o in operands]
        key = (eq, tuple(shapes), self.optimize)
        if key not in _PLAN_CACHE:
            _PLAN_CACHE[key] = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize=self.optimize)
        path, info = _PLAN_CACHE[key]
        steps, work = [], list(operands)
        for pos in path:
            ins = [work[i] for i in pos]
            rest = [w for i, w in enumerate(work) if i not in pos]
            keep = set(out).union(*map(set, rest)) if rest else set(out)
            present = sorted(set().union(*map(set, ins)), key=lambda d: self.rank[d])
            o = tuple(d for d in present if d in keep)
            removed = tuple(d for d in present if d not in keep)
            if len(dims) > len(_LETTERS):
                if len(present) > len(_LETTERS):
                    raise ModelError(f"the factors {', '.join(names[:5])}{', ...' if len(names) > 5 else ''} make "
                                     f"a contraction step over {len(present)} dims, more than torch.einsum takes "
                                     f"({len(_LETTERS)}); give latents of one plate a shared K-dim with \"group\"")
                letter = {d: _LETTERS[i] for i, d in enumerate(present)}
            seq = ",".join("".join(letter[d] for d in i) for i in ins) + "->" + "".join(letter[d] for d in o)
            last = not rest and plate is not None and not chain
            summed = summed_step_layout(tuple(ins), removed, o, plate, self.sizes) if last else None
            steps.append(Step(tuple(pos), tuple(ins), removed, o, seq, summed))
            work = rest + [o]
        return Component(names, here, out, steps, info, log_k, chain)

    # ---- running ------------------------------------------------------------------
    def contract(self, factors: dict[str, Named], sizes: dict[str, int], levels=None):
        """Run `levels` (default all, innermost first). Returns log P_MP (None if the root
        was not run), per component the operands of every step and the chain's matrices
        (for posterior sampling), and every value by name, level outputs `<plate:i>` included."""
        vals = dict(factors)
        trace, total = [], None
        for level in self.levels if levels is None else levels:
            lvl_trace = []
            for ci, comp in enumerate(level.components):
                work = [vals[n] for n in comp.factors]
                steps = []
                for st in comp.steps:
                    ins = [work[i] for i in st.inputs]
                    work = [w for i, w in enumerate(work) if i not in st.inputs]
                    steps.append(ins)
                    work.append(logspace_einsum(ins, st))
                (res,) = work
                lvl_trace.append((steps, res if comp.chain else None))
                if comp.chain:
                    res = chain_logsumexp(res, comp.chain, level.plate)
                # n log K comes off after the plate sum (times the plate size): the same value
                # without a pass over, and a copy of, the level's largest tensor.
                log_k = comp.log_k
                plate = level.plate
                if plate is None:
                    t = res.t - log_k if log_k else res.t
                    total = t if total is None else total + t
                else:
                    t = res.t if comp.chain else res.t * sizes[plate] if plate not in res.dims else \
                        res.plate_sum(plate) if isinstance(res, Deferred) else res.t.sum(res.dims.index(plate))
                    if log_k:
                        t = t - log_k * sizes[plate]
                    vals[f"<{plate}:{ci}>"] = Named(t, tuple(d for d in res.dims if d != plate))
            trace.append(lvl_trace)
        return total, trace, vals

    def describe(self) -> list[dict]:
        """The plan for people: per level, per component, the steps and their costs."""
        out = []
        for level in self.levels:
            for comp in level.components:
                d = {"plate": level.plate or "(global)", "factors": comp.factors, "sums_out": list(comp.local),
                     "output": list(comp.out_dims), "steps": []}
                if comp.chain:
                    n = math.prod(self.sizes[c] for c, _, _ in comp.chain)
                    d["chain"] = {"along": level.plate, "dims": [list(c[:2]) for c in comp.chain], "states": n,
                                  "depth": max(self.sizes[level.plate] - 1, 1),
                                  "description": f"time series: a {n} x {n} matrix per element of "
                                                 f"{level.plate!r}, summed over paths by the backward algorithm"}
                if comp.info is not None:
                    info = comp.info
                    d.update(equation=info.eq, naive_flops=int(info.naive_cost), optimized_flops=int(info.opt_cost),
                             largest_intermediate=int(info.largest_intermediate))
                    for st in comp.steps:   # a step summed over its plate as it goes holds only that sum
                        held = st.out_dims if st.plate_sum is None else [x for x in st.out_dims if x != level.plate]
                        d["steps"].append({"operands": list(st.inputs), "equation": st.equation,
                                           "sums_out": list(st.removed),
                                           "output_elements": math.prod(self.sizes[x] for x in held),
                                           "summed_over": level.plate if st.plate_sum is not None else None})
                else:
                    n = math.prod(self.sizes[x] for x in comp.out_dims)
                    d.update(equation="(one factor, nothing to sum)", naive_flops=n, optimized_flops=n,
                             largest_intermediate=n)
                out.append(d)
        return out


def chain_logsumexp(res: Named, chain, plate: str) -> Named:
    """Sum a chain component's matrices over every path: res holds, per element t of
    `plate`, M_t[current, previous] (and any outer dims). At t = 0 the previous index runs
    over the init's particles (a chain with an init K-dim, which the result keeps) or is not
    real (every previous index gives the same value, and index 0 is used).
    Returns log sum over all index paths of sum_t M_t, over the outer dims.

    The backward algorithm, in log space: b_{T-1} = 0, b_{t-1}[j] = logsumexp_i b_t[i] +
    M_t[i, j], down to the first element's matrix: T - 1 sequential steps of S x S terms
    each, exact (a logsumexp cannot underflow), where a tree of pairwise matrix products
    takes log T steps of S^3 each and underflows when particles spread (covid at K=10:
    1.8 to 2.1 s a QEM iteration with the tree, 0.33 s this way). Each b is shifted by
    its max, the shifts summed in float64, so the float32 b does not grow with T."""
    batch, M, v0 = chain_matrices(res, chain, plate)
    init = chain[0][2] if len(chain) == 1 else None
    b = M.new_zeros(v0.shape[:-1])                    # (*outer, S): log of 1 at the last element
    shift = torch.zeros(v0.shape[:-2], dtype=torch.float64, device=v0.device)
    for m in reversed(M.unbind(0)):   # unbind: one stack of the gradients, not one full-size add per element
        b = logsumexp(b.unsqueeze(-1) + m, -2)
        c = b.detach().amax(-1, keepdim=True)
        c = torch.where(torch.isinf(c), 0.0, c)
        b, shift = b - c, shift + c.squeeze(-1)
    if init is not None:                              # (*outer, init)
        return Named((logsumexp(b.unsqueeze(-1) + v0, -2) + shift[..., None]).to(M.dtype), (*batch, init))
    return Named((logsumexp(b + v0[..., 0], -1) + shift).to(M.dtype), batch)


def chain_matrices(res: Named, chain, plate: str):
    """(outer dims, M (T-1, *outer, S, S) for t = 1..T-1, M_0 (*outer, S, S)): the chain's
    K-dims flattened into one state index S."""
    cur, prev = [c for c, _, _ in chain], [p for _, p, _ in chain]
    batch = tuple(d for d in res.dims if d != plate and d not in cur and d not in prev)
    order = [res.dims.index(d) for d in (plate, *batch, *cur, *prev)]
    t = res.t.permute(order)
    n_b = len(batch)
    S = math.prod(t.shape[1 + n_b:1 + n_b + len(cur)])
    t = t.reshape(*t.shape[:1 + n_b], S, S)
    return batch, t[1:], t[0]


def _components(names, dims_of, local):
    """Group factors that share a local K-dim (union-find)."""
    parent = {n: n for n in names}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x
    owner = {}
    for n in names:
        for d in dims_of[n]:
            if d in local:
                if d in owner:
                    parent[find(n)] = find(owner[d])
                else:
                    owner[d] = n
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(find(n), []).append(n)
    return list(groups.values())


def logspace_einsum(ins: list[Named], step: Step) -> Named:
    """log einsum(exp(a), exp(b), ...) for one step of a plan; a `Deferred` where the
    step's result is only used summed over a plate and its sum can be taken without
    holding it (`log_matmul`)."""
    if step.plate_sum is not None:
        return Deferred(step.out_dims, lambda: _logspace_einsum(ins, step),
                        lambda plate: log_matmul(ins, step.removed, step.out_dims, step.plate_sum, plate))
    return _logspace_einsum(ins, step)


def _logspace_einsum(ins: list[Named], step: Step) -> Named:
    """log einsum(exp(a), exp(b), ...) for one step, held whole.

    When one operand holds every index of the step (a plate level's 'abc,bc->ac': a
    latent's factor and its children's message), that is a logsumexp of the operands'
    broadcast sum: exact, one fused kernel, and no intermediate larger than that operand.
    Otherwise (a chain 'ab,bc->ac') each operand is shifted by its own max over the summed
    dims and exponentiated for the einsum. Where that underflows (maxima at different
    values of a summed index: [0, -200] and [-200, 0] give -inf, not -199.3), the step is
    redone in float64, and entries still -inf are recomputed exactly by a logsumexp over
    their own slices only, so a genuine zero stays -inf; where they are still many (a time
    series' matrices from particles far apart), the whole step is taken exactly by
    `log_matmul` (or, for a step not of its form, the logsumexp of the broadcast sum,
    when that fits BROADCAST_MAX entries)."""
    removed, out_dims, eq = step.removed, step.out_dims, step.equation
    if step.layout is not None:
        b, axes, perm = step.layout
        big = ins[b]
        total = big.t
        for i, x in enumerate(ins):
            if i != b:
                total = total + x.align(big.dims, 0)
        if axes:
            total = logsumexp(total, axes)
        return Named(total if perm is None else total.permute(perm), out_dims)
    dtype = ins[0].t.dtype
    prod, shifts = _exp_einsum(ins, removed, out_dims, eq, None)
    if not _has_zero(prod):
        return Named(_add_shifts(torch.log(prod), shifts), out_dims)
    bad = _tiny(prod)
    if prod.dtype == torch.float32 and int(bad.sum()) * _FEW_ZEROS > prod.numel():
        # widespread underflow: a float64 pass rescues most entries at once
        prod, shifts = _exp_einsum(ins, removed, out_dims, eq, torch.float64)
        if not _has_zero(prod):
            return Named(_add_shifts(torch.log(prod), shifts).to(dtype), out_dims)
        bad = _tiny(prod)
        if int(bad.sum()) * _FEW_ZEROS > prod.numel():
            # still widespread (a time series' K x K matrices from spread particles): the step
            # exactly, which cannot underflow, beats entry-by-entry repair
            layout = matmul_layout(step.in_dims, removed, out_dims)
            if layout is not None:
                return Named(log_matmul(ins, removed, out_dims, layout).to(dtype), out_dims)
            sizes = {d: n for x in ins for d, n in zip(x.dims, x.t.shape)}
            if prod.numel() * math.prod(sizes[d] for d in removed) <= BROADCAST_MAX:
                return Named(_broadcast_logsumexp(ins, removed, out_dims), out_dims)
    if not out_dims:   # a scalar: its exact value
        return Named(_exact_values(ins, removed, out_dims, None).to(dtype), out_dims)
    # the log of a safe value (no 0 * inf reaches the einsum's gradient), then the entries
    # that underflowed put in exactly, each from a logsumexp over its own slices only
    res = _add_shifts(torch.log(prod.masked_fill(bad, 1.0)), shifts).to(dtype)
    where = torch.nonzero(bad)
    return Named(res.index_put_(tuple(where.T), _exact_values(ins, removed, out_dims, where).to(dtype)), out_dims)


_FEW_ZEROS = 8   # up to 1 in this many entries of a float32 step underflowing: recomputed one by one
BROADCAST_MAX = 1 << 27   # entries of a step's broadcast sum that may be materialised to repair it


def _broadcast_logsumexp(ins, removed, out_dims) -> torch.Tensor:
    """The step exactly: the operands' sum broadcast over (out_dims, removed), logsumexp
    over the removed dims (innermost, where they are contiguous)."""
    dims = (*out_dims, *removed)
    total = sum(x.align(dims, 0) for x in ins)
    return logsumexp(total, tuple(range(len(out_dims), len(dims))))


def broadcast_layout(in_dims, removed, out_dims):
    """For a step with an operand that holds every index: (that operand, the axes to sum
    out of it, the permutation of what is left to `out_dims` or None); else None."""
    full = set().union(*in_dims)
    b = next((i for i, d in enumerate(in_dims) if len(d) == len(full)), None)
    if b is None:
        return None
    kept = [d for d in in_dims[b] if d not in removed]
    perm = tuple(kept.index(d) for d in out_dims)
    return b, tuple(in_dims[b].index(d) for d in removed), None if perm == tuple(sorted(perm)) else perm


# Below these, exp(x) is subnormal or 0. torch's vectorised exp takes a slow path for a
# whole block of lanes when one of them is down there (float32, 2-core EPYC: 170 ms for 3.2
# million entries spread over [-200, 0] against 3 ms over [-80, 0]), and in log space most
# entries are: a logsumexp's shifted terms, the exponentials of an einsum step.
_EXP_LOW = {torch.float32: -87.0, torch.float64: -708.0, torch.float16: -9.0, torch.bfloat16: -87.0}


class _FlushedExp(torch.autograd.Function):
    """exp(x - shift) with the subnormal range flushed to 0, in one fast pass:
    exp(max(x - shift, low)), less exp(low), floored at 0. Every result that is not
    flushed moves by exp(low) (1.6e-38 in float32), which rounds away for results above
    about 2^-100, and it is 0 where x is -inf (a dead particle keeps weight 0). The
    gradient (with respect to x; the shift is a constant) is the result."""

    @staticmethod
    def forward(ctx, x, shift):
        low = _EXP_LOW.get(x.dtype, -87.0)
        y = torch.sub(x, shift).clamp_min_(low).exp_().sub_(math.exp(low)).clamp_min_(0.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y, None


def flushed_exp(x: torch.Tensor, shift) -> torch.Tensor:
    """exp(x - shift), 0 where that is below the smallest normal number (see _EXP_LOW)."""
    return _FlushedExp.apply(x, shift)


class _LogSumExp(torch.autograd.Function):
    """log sum exp(x) over `axes` (kept), shifted by the max, its exponentials flushed
    below the normal range (they are under 2^-126 of the largest term, which is 1, so the
    sum does not see them). The backward pass is the softmax from the exponentials kept
    from the forward pass (torch's recomputes them, on the slow path again), and 0 on a
    slice that is -inf throughout (particles of zero probability under every value of the
    summed indices), where torch's gives NaN."""

    @staticmethod
    def forward(ctx, x, axes):
        m, e, s = _shifted_exp(x, axes)
        ctx.save_for_backward(e, s)
        return torch.log(s).add_(m)

    @staticmethod
    def backward(ctx, g):
        e, s = ctx.saved_tensors
        return _softmax_grad(e, s, g), None


def _shifted_exp(x: torch.Tensor, axes, out: torch.Tensor | None = None):
    """(m, e, s): the max over `axes` (0 where it is infinite), exp(x - m) flushed below
    the normal range (into `out` if given), and its sum; log(s) + m is the logsumexp."""
    m = x.amax(axes, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros((), dtype=m.dtype, device=m.device), m)
    low = _EXP_LOW.get(x.dtype, -87.0)
    e = torch.sub(x, m, out=out).clamp_min_(low).exp_().sub_(math.exp(low)).clamp_min_(0.0)
    return m, e, e.sum(axes, keepdim=True)


def _softmax_grad(e, s, g):
    """g times the softmax e / s, 0 on a slice whose terms are all 0 (all -inf)."""
    return e * torch.where(s > 0, g / s, torch.zeros((), dtype=g.dtype, device=g.device))


def logsumexp(x: torch.Tensor, axes, keepdim: bool = False) -> torch.Tensor:
    """torch.logsumexp over `axes` (an int or a tuple), fast where most terms are
    negligible, with a gradient of 0 rather than NaN on a slice that is -inf throughout."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    axes = tuple(a % x.dim() for a in axes) if x.dim() else ()
    if not axes or x.numel() == 0:
        return torch.logsumexp(x, axes, keepdim=keepdim) if axes else x
    r = _LogSumExp.apply(x, axes)
    return r if keepdim else r.squeeze(axes)


def _has_zero(prod: torch.Tensor) -> bool:
    """Whether an einsum of exponentials (>= 0) holds a zero, or an entry so small that the
    gradient of its log (1 / entry, times operands up to 1) would overflow to inf and give
    NaN in the einsum's backward. One reduction and no tensor of flags (a flag tensor then
    .any() is an allocation and two passes over the largest tensor of the step). A NaN
    hides a zero here, but the estimate is NaN then anyway."""
    return prod.numel() > 0 and bool(prod.amin() < _TINY.get(prod.dtype, 0.0))


def _tiny(prod: torch.Tensor) -> torch.Tensor:
    return prod < _TINY.get(prod.dtype, 0.0)


_TINY = {torch.float32: 2.0 ** -100, torch.float64: 2.0 ** -900}   # see _has_zero


def _add_shifts(out: torch.Tensor, shifts: list[torch.Tensor]) -> torch.Tensor:
    """out + sum(shifts), each (broadcast) shift added in place: their sum is never
    materialised at full size, and log's backward keeps its input, not `out`."""
    for m in shifts:
        try:
            out = out.add_(m)
        except RuntimeError:   # m would broadcast out to a larger shape (not seen in practice)
            out = out + m
    return out


def _exact_values(ins, removed, out_dims, where, block_elements=1 << 22):
    """The exact logsumexp over `removed` of the operands' sum at the output entries
    `where` (rows of indices into `out_dims`), as a vector; for no out_dims, the scalar."""
    if not out_dims:
        return torch.logsumexp(sum(x.align(removed, 0) for x in ins).reshape(-1), 0)
    sizes = {d: n for x in ins for d, n in zip(x.dims, x.t.shape)}
    rsizes = [sizes[d] for d in removed]
    block = max(1, block_elements // max(1, math.prod(rsizes)))
    vals = []
    for start in range(0, len(where), block):
        rows = where[start:start + block]
        total = 0
        for x in ins:
            index = []
            for d in x.dims:
                if d in out_dims:
                    index.append(rows[:, out_dims.index(d)].reshape(-1, *[1] * len(removed)))
                else:
                    r = removed.index(d)
                    index.append(torch.arange(sizes[d], device=x.t.device).reshape(1, *[sizes[d] if i == r else 1
                                                                                         for i in range(len(removed))]))
            total = total + x.t[tuple(index)]
        vals.append(logsumexp(total.reshape(len(rows), -1), 1) if removed else total.reshape(len(rows)))
    return torch.cat(vals)


def _exp_einsum(ins, removed, out_dims, eq, dtype):
    """einsum of the shifted exponentials, and the shift to add back to its log."""
    exps, shifts = [], []
    for x in ins:
        t = x.t if dtype is None else x.t.to(dtype)
        axes = [i for i, d in enumerate(x.dims) if d in removed]
        m = t.detach().amax(dim=axes, keepdim=True) if axes else t.detach()
        m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0)   # an all -inf slice: shift 0
        exps.append(flushed_exp(t, m))
        kept = tuple(d for d in x.dims if d not in removed)
        shifts.append(Named(m.reshape([s for i, s in enumerate(m.shape) if x.dims[i] not in removed]), kept)
                      .align(out_dims, 0))
    plated = _plate_einsum(exps, [x.dims for x in ins], removed, out_dims)
    return (torch.einsum(eq, *exps) if plated is None else plated), shifts


def _plate_einsum(ts, dims, removed, out_dims, min_batch: int = 256):
    """einsum of two operands whose shared trailing dims (plates: kept, in both and in
    the output) are innermost in memory, as a batched matmul over them that keeps them
    innermost (_PlateBmm), or None where the step is not of that form. torch.einsum makes
    each plate element a matrix product of its own, and with the batch innermost it
    copies every one of those matrices, then hands back a transposed result on which
    every later pass strides across memory: 138 s of an occupancy iteration at K=30
    went there (a copy per matrix, elementwise passes at 90 ns an entry). Below
    `min_batch` plate elements torch's way costs less (radon's 85 counties: 0.9x)."""
    layout = matmul_layout(tuple(dims), removed, out_dims) if len(ts) == 2 else None
    if layout is None:
        return None
    (pa, pb, fa, fb, batch), (a, b), (da, db) = layout, ts, dims
    n = len(batch)
    if not n or da[len(da) - n:] != batch or db[len(db) - n:] != batch or out_dims[len(out_dims) - n:] != batch:
        return None   # the shared dims not innermost in memory
    size = dict(zip(da, a.shape)) | dict(zip(db, b.shape))
    P, K = math.prod(size[d] for d in batch), math.prod(size[d] for d in removed)
    if P < min_batch:
        return None
    rows = lambda free: math.prod(size[d] for d in free)
    out = _PlateBmm.apply(_as_matrix(a, pa, (rows(fa), K, P)), _as_matrix(b, pb, (rows(fb), K, P)))   # [b, a, P]
    have = (*fb, *fa, *batch)
    return out.reshape([size[d] for d in have]).permute([have.index(d) for d in out_dims])


def _as_matrix(t: torch.Tensor, order, shape) -> torch.Tensor:
    """t permuted by `order` (left as it is where that is the identity), reshaped."""
    return (t.permute(order) if tuple(order) != tuple(sorted(order)) else t).reshape(shape)


_OUTER_K = 4   # a contraction this short is done as multiply-adds over the plate, not a matrix product


@functools.lru_cache(maxsize=None)
def matmul_layout(in_dims, removed, out_dims, plate=None):
    """For a step over two operands that both hold every summed dim, whose other dims are
    each either in one operand or in both and the output (batch dims; `plate`, if given,
    one of them): per operand the permutation to (own dims, summed, batch less the plate,
    the plate), the own dims of each, and the batch less the plate. Else None."""
    if len(in_dims) != 2 or not removed:
        return None
    da, db = in_dims
    shared = [d for d in da if d in db and d not in removed]
    fa = tuple(d for d in da if d not in db)
    fb = tuple(d for d in db if d not in da)
    if not all(r in da and r in db for r in removed) or sorted((*fa, *fb, *shared)) != sorted(out_dims) or \
            (plate is not None and plate not in shared):
        return None
    batch = tuple(d for d in out_dims if d in shared and d != plate)
    tail = (*removed, *batch, *((plate,) if plate else ()))
    return tuple(da.index(d) for d in (*fa, *tail)), tuple(db.index(d) for d in (*fb, *tail)), fa, fb, batch


def log_matmul(ins: list[Named], removed, out_dims, layout, plate=None) -> torch.Tensor:
    """The step exactly (log sum over `removed` of exp(a + b), terms never held whole,
    _LogMatmul), with `layout` from matmul_layout; summed over `plate` if given: dims
    `out_dims` less the plate."""
    (pa, pb, fa, fb, batch), (a, b) = layout, ins
    size = a.sizes | b.sizes
    Q = math.prod(size[d] for d in batch)

    K = math.prod(size[d] for d in removed)
    rows = lambda free: math.prod(size[d] for d in free)
    A, B = _as_matrix(a.t, pa, (rows(fa), K, Q, -1)), _as_matrix(b.t, pb, (rows(fb), K, Q, -1))   # plate or 1 last
    if A.shape[0] > B.shape[0]:   # the operand with fewer rows whole in every block
        (A, fa), (B, fb) = (B, fb), (A, fa)
    out = _LogMatmul.apply(A, B)                                       # (rows of B, rows of A, Q)
    have = (*fb, *fa, *batch)
    out = out.reshape([size[d] for d in have])
    return out.permute([have.index(d) for d in out_dims if d != plate])


def summed_step_layout(in_dims, removed, out_dims, plate, sizes):
    """matmul_layout of a step whose result is used only summed over `plate`, where its
    summed dims are short (at most _OUTER_K values together: an enumerated Bernoulli or
    small Categorical, or K <= 4 particles): taken as it goes (`log_matmul`), its terms
    cost no more than the result would, and the result is never held. Else None; None
    too where one operand holds every dim (the result is no larger than that operand,
    and one fused logsumexp takes it: small models at K=3 ran 15% slower the other way)."""
    if not removed or math.prod(sizes[d] for d in removed) > _OUTER_K or \
            broadcast_layout(in_dims, removed, out_dims) is not None:
        return None
    return matmul_layout(in_dims, removed, out_dims, plate)


class _LogMatmul(torch.autograd.Function):
    """out[n, m, q] = sum_s log sum_k exp(A[m, k, q, s] + B[n, k, q, s]), block by block in
    cache, so the (n, m, k, q, s) terms (occupancy's z at K=30: 3.9e8 of them) are never
    held, and their backward pass recomputes them. A has the fewer rows. s is a plate
    summed as it goes (length 1: none).

    Two values (k = 0, 1), every term finite: log(e^x0 + e^x1) = x0 + softplus(x1 - x0),
    and x1 - x0 = dA[m] + dB[n] with dA = A1 - A0, dB = B1 - B0, so the x0 part sums per
    operand, and per term there is one add, one exp and one log (of 1 + e^x: 2.5x faster
    than log1p here, and its rounding costs under 6e-8 a term); its gradient is
    sigmoid(x1 - x0). Otherwise (more values, or -inf terms: a value the data rule out)
    a logsumexp of the block's terms, and its softmax for the gradient."""

    BLOCK = 1 << 18   # terms per block on a CPU: 1 MB of float32, in cache
    GPU_BLOCK = 1 << 24   # on a GPU: few enough blocks that kernel launches do not dominate

    @staticmethod
    def _blocks(N, per_row, Q, S, device):
        """(rows, q's) of a block of about BLOCK terms, rows of B first (the sums over
        them then stay within a block), and every block's (n, q) ranges."""
        per, block = per_row * S, _LogMatmul.BLOCK if device.type == "cpu" else _LogMatmul.GPU_BLOCK
        nb = max(1, min(N, block // per))
        qb = max(1, min(Q, block // (per * nb)))
        return nb, qb, [(n, min(n + nb, N), q, min(q + qb, Q)) for q in range(0, Q, qb) for n in range(0, N, nb)]

    @staticmethod
    def forward(ctx, A, B):
        M, K, Q, S = A.shape
        N = B.shape[0]
        out = A.new_empty((N, M, Q))
        ctx.fast = False
        if K == 2:
            dA, dB = A[:, 1] - A[:, 0], B[:, 1] - B[:, 0]                    # (M, Q, S), (N, Q, S)
            hi, lo = float(dA.amax() + dB.amax()), float(dA.amin() + dB.amin())
            ctx.fast = math.isfinite(hi) and math.isfinite(lo)   # NaN or inf: some term is -inf
        nb, qb, blocks = _LogMatmul._blocks(N, M * (1 if ctx.fast else K), Q, S, A.device)
        buf = A.new_empty(nb * M * qb * S * (1 if ctx.fast else K))
        if ctx.fast:
            ctx.save_for_backward(dA, dB)
            ctx.spread = max(abs(hi), abs(lo))
            low = _EXP_LOW.get(A.dtype, -87.0)
            high = -low - 8.0   # below exp's overflow; softplus(x) is x above it
            over = torch.empty_like(buf) if hi > high else None
            for n0, n1, q0, q1 in blocks:
                x = torch.add(dB[n0:n1, None, q0:q1], dA[None, :, q0:q1], out=_view(buf, (n1 - n0, M, q1 - q0, S)))
                above = torch.sub(x, high, out=_view(over, x.shape)).clamp_min_(0.0).sum(-1) if hi > high else 0.0
                if hi > high or lo < low:
                    x.clamp_(low, high)
                out[n0:n1, :, q0:q1] = x.exp_().add_(1.0).log_().sum(-1).add_(above)
            return out.add_(A[:, 0].sum(-1)).add_(B[:, 0].sum(-1)[:, None])
        for n0, n1, q0, q1 in blocks:
            x = torch.add(B[n0:n1, None, :, q0:q1], A[None, :, :, q0:q1], out=_view(buf, (n1 - n0, M, K, q1 - q0, S)))
            m, _, s = _shifted_exp(x, (2,), out=x)
            out[n0:n1, :, q0:q1] = s.log_().add_(m).sum((2, -1))
        ctx.save_for_backward(A, B)
        return out

    @staticmethod
    def backward(ctx, g):
        N, M, Q = g.shape
        if ctx.fast:
            dA, dB = ctx.saved_tensors
            S = dA.shape[-1]
            gA, gB = dA.new_empty((M, 2, Q, S)), dB.new_empty((N, 2, Q, S))
            gdA = gA[:, 1].zero_()
            nb, qb, blocks = _LogMatmul._blocks(N, M, Q, S, dA.device)
            buf = dA.new_empty(nb * M * qb * S)
            low = _EXP_LOW.get(dA.dtype, -87.0)
            for n0, n1, q0, q1 in blocks:
                x = torch.add(dB[n0:n1, None, q0:q1], dA[None, :, q0:q1], out=_view(buf, (n1 - n0, M, q1 - q0, S)))
                if ctx.spread > -low:   # sigmoid is 0 or 1 out there; its exp would be subnormal (the slow path)
                    x.clamp_(low, -low)
                x = x.sigmoid_().mul_(g[n0:n1, :, q0:q1, None])
                gdA[:, q0:q1] += x.sum(0)
                torch.sum(x, 1, out=gB[n0:n1, 1, q0:q1])
            torch.sub(g.sum(0)[..., None], gdA, out=gA[:, 0])
            torch.sub(g.sum(1)[..., None], gB[:, 1], out=gB[:, 0])
            return gA, gB
        A, B = ctx.saved_tensors
        K, S = A.shape[1], A.shape[-1]
        gA, gB = torch.zeros_like(A), torch.empty_like(B)
        for n0, n1, q0, q1 in _LogMatmul._blocks(N, M * K, Q, S, A.device)[2]:
            x = B[n0:n1, None, :, q0:q1] + A[None, :, :, q0:q1]
            _, e, s = _shifted_exp(x, (2,), out=x)
            w = _softmax_grad(e, s, g[n0:n1, :, None, q0:q1, None])
            gA[:, :, q0:q1] += w.sum(0)
            torch.sum(w, 1, out=gB[n0:n1, :, q0:q1])
        return gA, gB


def _view(buf: torch.Tensor, shape) -> torch.Tensor:
    """The start of a flat buffer as a tensor of `shape`."""
    return buf[:math.prod(shape)].view(shape)


class _PlateBmm(torch.autograd.Function):
    """out[n, m, p] = sum_k A[m, k, p] B[n, k, p], p innermost in all three: the batch in
    chunks, every chunk one batched matrix product (MKL's). Each operand's chunk comes to
    the product, and the result goes back, by 2-d transposes ((rows x k, p) <-> (p, rows
    x k)): about 4 ns an entry here, where the 3-d permute-copies they replace took 20
    (occupancy with z sampled at K=30: 25 of its 54 s went to those)."""

    @staticmethod
    def _chunk(*blocks) -> int:
        return max(64, (1 << 19) // max(1, max(blocks)))

    @staticmethod
    def forward(ctx, A, B):
        M, K, P = A.shape
        N = B.shape[0]
        ctx.save_for_backward(A, B)
        if K <= _OUTER_K:   # a two-valued latent summed out: K multiply-adds in place beat any copy
            out = torch.mul(B[:, None, 0], A[None, :, 0])
            for k in range(1, K):
                out.addcmul_(B[:, None, k], A[None, :, k])
            return out
        out = A.new_empty((N, M, P))
        a, b, o = A.reshape(M * K, P), B.reshape(N * K, P), out.view(N * M, P)
        C = _PlateBmm._chunk(M * K, N * K, M * N)
        for s in range(0, P, C):
            e = min(s + C, P)
            at, bt = _rows_last(a, s, e, M), _rows_last(b, s, e, N)                # (c, M, K), (c, N, K)
            o[:, s:e] = torch.bmm(bt, at.transpose(1, 2)).view(e - s, N * M).t()   # (c, N, M) back
        return out

    @staticmethod
    def backward(ctx, g):
        A, B = ctx.saved_tensors
        M, K, P = A.shape
        N = B.shape[0]
        gA = A.new_empty(A.shape) if ctx.needs_input_grad[0] else None
        gB = B.new_empty(B.shape) if ctx.needs_input_grad[1] else None
        if K <= _OUTER_K:   # row by row of g: no temporary of g's size (fresh pages cost more than the sums)
            if gA is not None:
                gA.zero_()
            for n in range(N):
                for k in range(K):
                    if gA is not None:
                        gA[:, k].addcmul_(g[n], B[n, k])
                    if gB is not None:
                        gB[n, k] = (g[n] * A[:, k]).sum(0)
            return gA, gB
        a, b, g2 = A.reshape(M * K, P), B.reshape(N * K, P), g.reshape(N * M, P)
        C = _PlateBmm._chunk(M * K, N * K, M * N)
        for s in range(0, P, C):
            e = min(s + C, P)
            gt = _rows_last(g2, s, e, N)                                           # (c, N, M)
            if gA is not None:
                gA.view(M * K, P)[:, s:e] = torch.bmm(gt.transpose(1, 2), _rows_last(b, s, e, N)).view(e - s, M * K).t()
            if gB is not None:
                gB.view(N * K, P)[:, s:e] = torch.bmm(gt, _rows_last(a, s, e, M)).view(e - s, N * K).t()
        return gA, gB


def _rows_last(x2d: torch.Tensor, s: int, e: int, rows: int) -> torch.Tensor:
    """Columns s..e of a (rows x k, p) matrix as a (e - s, rows, k) batch: copied out, then
    a 2-d transpose of that block (5x faster here than transposing the strided columns)."""
    return x2d[:, s:e].contiguous().t().contiguous().view(e - s, rows, -1)
