"""Tensors whose leading (batch) dims are named: K-dims and plates, aligned by name.

A `Named` holds a torch tensor whose first `len(dims)` axes are the named dims and whose
remaining axes are event dims (a vector latent's 18 entries, a Dirichlet's simplex).
Binary operations align batch dims by name and right-align event dims, as torch
broadcasting would, without materialising anything beyond the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
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
        missing = [d for d in self.dims if d not in dims]
        if missing:
            raise ValueError(f"cannot align dims {self.dims} to {dims}")
        t = self.t
        order = [self.dims.index(d) for d in dims if d in self.dims]
        n_ev = t.dim() - len(self.dims)
        if order != sorted(order):
            t = t.permute(*order, *range(len(self.dims), t.dim()))
        shape, it = [], iter(t.shape[: len(order)])
        for d in dims:
            shape.append(next(it) if d in self.dims else 1)
        shape += [1] * (event_rank - n_ev) + list(t.shape[len(order):])
        return t.reshape(shape)

    def expand_to(self, dims: tuple[str, ...], sizes: dict[str, int]) -> torch.Tensor:
        """Aligned to `dims` and expanded (a view) to their full sizes."""
        t = self.align(dims, len(self.event_shape))
        return t.expand(tuple(sizes[d] for d in dims) + self.event_shape)


def union_dims(items, rank: dict[str, int]) -> tuple[str, ...]:
    seen = {d for x in items for d in x.dims}
    return tuple(sorted(seen, key=lambda d: rank[d]))


def broadcast(items: list[Named], rank: dict[str, int]) -> tuple[list[torch.Tensor], tuple[str, ...]]:
    """Align several Named values to a common layout; returns tensors and the dims."""
    dims = union_dims(items, rank)
    ev = max(len(x.event_shape) for x in items)
    return [x.align(dims, ev) for x in items], dims
