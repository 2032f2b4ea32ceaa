"""Tensors whose leading (batch) dims are named: K-dims and plates, aligned by name.

A `Named` holds a torch tensor whose first `len(dims)` axes are the named dims and whose
remaining axes are event dims (a vector latent's 18 entries, a Dirichlet's simplex).
Binary operations align batch dims by name and right-align event dims, as torch
broadcasting would, without materialising anything beyond the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(slots=True)   # not frozen: a frozen dataclass's __init__ costs ~1 us, and it is made ~20 times an iteration
class Named:
    t: torch.Tensor
    dims: tuple[str, ...]

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.t.shape[len(self.dims):])

    @property
    def sizes(self) -> dict[str, int]:
        return dict(zip(self.dims, self.t.shape))

    def align(self, dims: tuple[str, ...], event_rank: int) -> torch.Tensor:
        """View with batch dims `dims` (size 1 where absent) and `event_rank` event dims."""
        t = self.t
        key = (self.dims, dims, event_rank, t.dim())
        layout = _LAYOUTS.get(key)
        if layout is None:
            layout = _LAYOUTS[key] = _layout(self.dims, dims, event_rank, t.dim())
        order, shape = layout
        if order is not None:
            t = t.permute(order)
        return t.reshape([1 if i is None else t.shape[i] for i in shape])

    def expand_to(self, dims: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """Aligned to `dims` and expanded (a view) to their full sizes."""
        t = self.align(dims, len(self.event_shape))
        return t.expand(tuple(sizes[d] for d in dims) + self.event_shape)


@dataclass(slots=True)
class Constant(Named):
    """A number written in the model (an argument, or a literal in an expression): its
    0-d tensor, and its value for arithmetic that needs no tensor pass."""
    value: float = 0.0


_LAYOUTS: dict = {}   # align's permutation and target shape, by (dims, target dims, event rank, ndim)


def _layout(have: tuple[str, ...], dims: tuple[str, ...], event_rank: int, ndim: int):
    """(permutation or None, target shape as source axes, None for a new axis of size 1)."""
    missing = [d for d in have if d not in dims]
    if missing:
        raise ValueError(f"cannot align dims {have} to {dims}")
    order = [have.index(d) for d in dims if d in have]
    n_ev = ndim - len(have)
    perm = None if order == sorted(order) else (*order, *range(len(have), ndim))
    shape, pos = [], 0
    for d in dims:
        if d in have:
            shape.append(pos)
            pos += 1
        else:
            shape.append(None)
    shape += [None] * (event_rank - n_ev) + list(range(len(have), ndim))
    return perm, tuple(shape)


def union_dims(items, rank: dict[str, int]) -> tuple[str, ...]:
    seen = {d for x in items for d in x.dims}
    return tuple(sorted(seen, key=lambda d: rank[d]))


def broadcast(items: list[Named], rank: dict[str, int]) -> tuple[list[torch.Tensor], tuple[str, ...]]:
    """Align several Named values to a common layout; returns tensors and the dims."""
    dims = union_dims(items, rank)
    ev = max(len(x.event_shape) for x in items)
    return [x.align(dims, ev) for x in items], dims


_T = Named.__dict__["t"]   # the slot holding a Named's tensor


class Deferred(Named):
    """A factor computed only when it is asked for (`t`), which the contraction may
    instead sum over a plate (`plate_sum`) without ever holding it whole.

    An observed node's log-density over its parents' K-dims and its plates is used only
    summed over its innermost plate when no latent parent lives there (radon's houses,
    a replicate plate): that sum can be taken term by term, each at its own, smaller,
    broadcast shape (dists.summed_log_prob). `full()` gives the whole tensor, and
    `plate_sum(plate)` the sum, expanded to the full sizes of the remaining dims. Once a
    plate sum has been taken, `t` is detached: the whole tensor was not part of the
    computation that autograd saw."""
    __slots__ = ("_full", "_plate_sum", "_summed")

    def __init__(self, dims: tuple[str, ...], full, plate_sum):
        self.dims, self._full, self._plate_sum, self._summed = dims, full, plate_sum, False
        _T.__set__(self, None)

    @property
    def t(self) -> torch.Tensor:
        t = _T.__get__(self)
        if t is None:
            t = self._full()
            if self._summed:
                t = t.detach()
            _T.__set__(self, t)
        return t

    def plate_sum(self, plate: str) -> torch.Tensor:
        self._summed = True
        return self._plate_sum(plate)
