"""One massively parallel importance sample and everything computed from it.

`log P_MP` comes from the contraction. Marginal importance weights come from the
source-term trick: a zero tensor J_i over (K_i, plates_i) is added to each latent's
factor, and d log P_MP / d J_i at zero is latent i's weights; one backward pass gives
all of them. Posterior samples of the K-indices are drawn exactly from the MP index
distribution by walking the contraction steps backwards (each step's summed indices
drawn given the indices already drawn), which, unlike sampling each latent given its
generative parents only, keeps the coupling between co-parents of an observation.
"""
from __future__ import annotations

import math

import torch

from .errors import ModelError
from .named import Named, union_dims


class Sample:
    def __init__(self, program, values: dict[str, Named]):
        self.program, self.values = program, values
        self.K = program.K
        self.log_p, self._trace, self.factors, self.sources = program.contract(values)
        self._log_marginal = self.log_p.item()
        if not math.isfinite(self._log_marginal):
            self._report_nonfinite()
        self._weights = None

    def _report_nonfinite(self):
        for name, f in self.factors.items():
            bad = torch.isnan(f.t)
            if bad.any():
                raise ModelError(f"node {name!r}: its log-density is NaN for some particles "
                                 f"(check its arguments stay in range)")
        for name, f in self.factors.items():
            if torch.isneginf(f.t).all():
                raise ModelError(f"node {name!r}: zero probability under every particle")
        raise ModelError(f"log P_MP is {float(self.log_p)}: no particle combination has positive probability")

    # ---- estimates -------------------------------------------------------------------
    def log_marginal(self) -> float:
        """log P_MP, the massively parallel estimate of log P(data)."""
        return self._log_marginal

    def gradients(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """d log P_MP / d params, from the backward pass that also gives the weights (when
        they are not known yet): one pass over the contraction for both."""
        names = list(self.sources) if self._weights is None else []
        inputs = [self.sources[n] for n in names] + list(params)
        if not inputs:
            return []
        grads = torch.autograd.grad(self.log_p, inputs, retain_graph=True, allow_unused=True)
        if names:
            self._weights = {n: _normalised(self.sources[n] if g is None else g) for n, g in zip(names, grads)}
        return list(grads[len(names):])   # None for a parameter log P_MP does not depend on

    def _all_weights(self) -> dict[str, torch.Tensor]:
        if self._weights is None:
            self.gradients([])
        return self._weights

    def _latent(self, name: str) -> str:
        if name not in self.sources:
            raise ModelError(f"{name!r} is not a latent of this model (latents: {', '.join(self.sources)})")
        return name

    def marginal_weights(self, name: str) -> torch.Tensor:
        """(K, *plates) weights of latent `name`'s particles, float64, summing to 1 per plate
        element (renormalised: see `_normalised`)."""
        return self._all_weights()[self._latent(name)]

    def joint_marginal(self, name: str) -> Named:
        """P(k_i, k_pa(i)) per plate element: the MP index posterior over every K-dim of
        node `name`'s factor (its own and its parents'), as d log P_MP / d factor."""
        if self.program.split is not None and name not in self.factors:
            raise ModelError(f"the joint marginal of {name!r} is not kept when a run is split into chunks "
                             f"to fit the memory budget; raise the budget or lower K")
        if name not in self.factors:
            raise ModelError(f"no node named {name!r}")
        f = self.factors[name]
        if f.t.requires_grad:
            (g,) = torch.autograd.grad(self.log_p, f.t, retain_graph=True)
        else:   # a factor with no source term: contract once more with it as a leaf
            leaf = f.t.detach().requires_grad_()
            log_p, _, _ = self.program.plan.contract({**self.factors, name: Named(leaf, f.dims)}, self.program.sizes)
            (g,) = torch.autograd.grad(log_p, leaf)
        return Named(g.detach(), f.dims)

    def particles(self, name: str) -> torch.Tensor:
        """(K, *plates, *event) particle values of latent `name`, detached, in float64."""
        self._latent(name)
        return self.values[name].expand_to(self.program.own[name], self.program.sizes).detach().double()

    def expectation(self, name: str, fn=lambda x: x) -> torch.Tensor:
        """Posterior E[fn(z)] per plate element, in float64: (*plates, *event)."""
        return weighted_sum(self.marginal_weights(name), fn(self.particles(name)))

    def mean(self, name: str) -> torch.Tensor:
        return self.expectation(name)

    def var(self, name: str) -> torch.Tensor:
        """Centred (two-pass) in float64: E[x^2] - E[x]^2 cancels to nothing for a latent
        whose mean is many times its sd."""
        x = self.particles(name)
        w = self.marginal_weights(name)
        return weighted_sum(w, (x - weighted_sum(w, x)).square())

    def sd(self, name: str) -> torch.Tensor:
        return self.var(name).sqrt()

    def ess(self, name: str | None = None):
        """Effective sample size 1/sum_k w_k^2 per plate element; all latents if no name."""
        if name is None:
            return {n: self.ess(n) for n in self.sources}
        w = self.marginal_weights(name)
        return (w * w).sum(0).reciprocal()

    def einsum_path(self) -> list[dict]:
        return self.program.plan.describe()

    # ---- posterior samples -------------------------------------------------------------
    def posterior_indices(self, n: int, seed: int = 0) -> dict[str, Named]:
        """n joint draws of every K-index from the MP index posterior."""
        prog = self.program
        gen = torch.Generator(device=prog.device).manual_seed(seed)
        assign: dict[str, Named] = {}
        with torch.no_grad():
            levels = prog.plan.levels if prog.split is None else prog.outer_levels
            _backtrace(levels, self._trace, assign, n, gen, prog)
            if prog.split is not None:   # the split plate, chunk by chunk, its trace recomputed
                plate, chunk = prog.split
                parts: dict[str, list[Named]] = {}
                for i in range(0, prog.plate_sizes[plate], chunk):
                    j = min(i + chunk, prog.plate_sizes[plate])
                    _, trace = prog._chunk(self.values, self.sources, i, j, trace=True)
                    local = dict(assign)
                    _backtrace(prog.inner_levels, trace, local, n, gen, prog)
                    for d in set(local) - set(assign):
                        parts.setdefault(d, []).append(local[d])
                for d, ps in parts.items():
                    dims = ps[0].dims
                    assign[d] = Named(torch.cat([x.expand_to(dims, {**prog.sizes, "draw": n, plate: x.sizes[plate]})
                                                 for x in ps], dims.index(plate)), dims)
        return assign

    def posterior_samples(self, n: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
        """n joint posterior draws: {latent: (n, *plates, *event)}."""
        if not isinstance(n, int) or n < 1:
            raise ModelError(f"the number of posterior samples must be a positive integer, got {n!r}")
        prog = self.program
        assign = self.posterior_indices(n, seed)
        out = {}
        for i in prog.latents:
            kd = prog.kdim[i]
            v = _take(self.values[i], {kd: assign[kd]}, prog.rank)
            dims = ("draw", *prog.chain[i])
            out[i] = v.expand_to(dims, {"draw": n, **prog.sizes}).detach()
        return out


def _normalised(g: torch.Tensor) -> torch.Tensor:
    """Marginal weights from the source-term gradient, in float64, renormalised per plate
    element. In float32 the gradient sums to 1 only to about |log P_MP| * 2^-24 (and to K
    where log-densities are so large that the logsumexp's log-sum is lost to rounding);
    dividing by the sum makes every moment a proper weighted average."""
    w = g.detach().double().clamp_min(0)
    total = w.sum(0, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), 1.0 / w.shape[0])


def weighted_sum(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_k w_k x_k over the leading K axis, weights (K, *plates) broadcast over x's event dims."""
    return (w.reshape(*w.shape, *[1] * (x.dim() - w.dim())) * x).sum(0)


def _backtrace(levels, trace, assign, n, gen, prog) -> None:
    """Walk contraction steps backwards (outer levels first), drawing each step's summed
    indices given those already drawn; adds them to `assign`."""
    for level, lvl_trace in zip(reversed(levels), reversed(trace)):
        for comp, (steps, matrices) in zip(level.components, lvl_trace):
            if comp.chain:   # the chain's indices first: they were summed last
                _sample_chain(_take(matrices, assign, prog.rank), comp.chain, level.plate, assign, n, gen, prog)
            for st, ins in reversed(list(zip(comp.steps, steps))):
                if not st.removed:
                    continue
                parts = [_take(x, assign, prog.rank) for x in ins]
                dims = union_dims(parts, prog.rank)
                shape = [n if d == "draw" else max(p.t.shape[p.dims.index(d)] if d in p.dims else 1 for p in parts)
                         for d in dims]
                logits = sum(p.align(dims, 0) for p in parts).expand(*shape)
                batch = tuple(d for d in dims if d not in st.removed)
                order = [dims.index(d) for d in batch] + [dims.index(d) for d in st.removed]
                flat = logits.permute(*order).reshape(*[shape[i] for i in order[:len(batch)]], -1)
                u = torch.rand(flat.shape, generator=gen, device=flat.device, dtype=flat.dtype)
                k = (flat - torch.log(-torch.log(u.clamp_min(1e-30)))).argmax(-1)   # Gumbel-max
                for d in reversed(st.removed):
                    assign[d] = Named(k % prog.sizes[d], batch)
                    k = k // prog.sizes[d]


def _sample_chain(res: Named, chain, plate: str, assign, n, gen, prog) -> None:
    """Exact joint draws of a chain's indices given the outer ones already drawn (in `res`,
    with a leading draw dim): forward filtering, then sampling backwards, element by element."""
    from .contract import chain_matrices
    batch, M, M0 = chain_matrices(res, chain, plate)   # batch starts with "draw" (size 1 if nothing outer was drawn)
    M, M0 = M.expand(M.shape[0], n, *M.shape[2:]), M0.expand(n, *M0.shape[1:])
    init = chain[0][2] if len(chain) == 1 else None
    if init is not None:   # the first element's previous index is the init latent's, drawn already
        first = assign[init].align(batch, 0).expand(M0.shape[:-2])
        v0 = torch.gather(M0, -1, first[..., None, None].expand(*M0.shape[:-1], 1)).squeeze(-1)
    else:
        first, v0 = torch.zeros(M0.shape[:-2], dtype=torch.long, device=M0.device), M0[..., 0]
    alphas = [v0]
    for t in range(M.shape[0]):                       # alpha_t[i] = logsumexp_j M_t[i, j] + alpha_{t-1}[j]
        alphas.append(torch.logsumexp(M[t] + alphas[-1].unsqueeze(-2), -1))

    def draw(logits):
        u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=logits.dtype)
        return (logits - torch.log(-torch.log(u.clamp_min(1e-30)))).argmax(-1)   # Gumbel-max
    k = [draw(alphas[-1])]
    for t in range(M.shape[0] - 1, -1, -1):           # k_{t} given k_{t+1}: alpha_t[j] + M_{t+1}[k_{t+1}, j]
        row = torch.gather(M[t], -2, k[-1][..., None, None].expand(*k[-1].shape, 1, M.shape[-1])).squeeze(-2)
        k.append(draw(alphas[t] + row))
    state = torch.stack(k[::-1], -1)                  # (*batch, T): each element's flattened state
    dims = (*batch, plate)
    prev_state = torch.cat([first.unsqueeze(-1), state[..., :-1]], -1)
    for (cur, prev, _) in reversed(chain):            # unflatten, last dim fastest
        size = prog.sizes[cur]
        assign[cur], assign[prev] = Named(state % size, dims), Named(prev_state % size, dims)
        state, prev_state = state // size, prev_state // size


def _take(x: Named, assign: dict[str, Named], rank) -> Named:
    """x at the assigned indices of its K-dims; free dims kept; a leading draw dim."""
    used = [assign[d] for d in x.dims if d in assign]
    free = [d for d in x.dims if d not in assign]
    dims = tuple(sorted(set(["draw", *free]).union(*[a.dims for a in used]), key=rank.get))
    index = []
    for d, size in zip(x.dims, x.t.shape):
        if d in assign:
            index.append(assign[d].align(dims, 0))
        else:
            index.append(Named(torch.arange(size, device=x.t.device), (d,)).align(dims, 0))
    return Named(x.t[tuple(index)], dims)
