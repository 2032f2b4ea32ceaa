"""The safe expression language of node arguments.

An expression is parsed with `ast` and checked against a whitelist (numbers, names,
arithmetic, `@`, unary minus, indexing by an integer constant or integer data, and calls
to the functions in FUNCTIONS). It is compiled once into a tree of closures over `Named`
values; a model file never runs code.
"""
from __future__ import annotations

import ast
import math
import unicodedata
from typing import Callable

import torch

from .errors import ModelError
from .named import Constant, Named, broadcast, union_dims


def _sum(x, axis=-1):
    return x.sum(axis)


FUNCTIONS: dict[str, Callable] = {
    "exp": torch.exp, "log": torch.log, "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus, "sqrt": torch.sqrt, "abs": torch.abs,
    "logit": torch.logit, "tanh": torch.tanh, "log1p": torch.log1p, "expm1": torch.expm1,
    "square": torch.square,
    "softmax": lambda x, axis=-1: torch.softmax(x, axis),
    "sum": _sum, "mean": lambda x, axis=-1: x.mean(axis),
}
# Functions that reduce or act along an event axis (axis counted within event dims).
_AXIS_FUNCTIONS = {"sum", "mean", "softmax"}

_BINOPS = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul,
           ast.Div: torch.div, ast.Pow: torch.pow}


MAX_LENGTH = 2000   # characters of an expression
MAX_DEPTH = 100     # nesting of its syntax tree (compiling and evaluating recurse that deep)


class Env:
    """What an expression sees: values by name, and the global order of dims."""

    def __init__(self, values: dict[str, Named], rank: dict[str, int], device, dtype):
        self.values, self.rank, self.device, self.dtype = values, rank, device, dtype


class Expr:
    """A compiled expression: `names` it mentions, `__call__(env) -> Named`."""

    def __init__(self, source: str, where: str):
        self.source, self.where = source, where
        if not isinstance(source, str):
            raise ModelError(f"{where}: an expression must be a string, got {type(source).__name__}")
        if len(source) > MAX_LENGTH:
            raise ModelError(f"{where}: the expression is {len(source)} characters long, more than {MAX_LENGTH}")
        if unicodedata.normalize("NFKC", source) != source:   # Python's parser would read 𝖒𝖚 as mu
            raise ModelError(f"{where}: expression {source!r} is not in Unicode normal form (Python reads it "
                             f"as {unicodedata.normalize('NFKC', source)!r}); write that instead")
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except SyntaxError as e:
            raise ModelError(f"{where}: cannot parse expression {source!r} ({e.msg})") from None
        except (RecursionError, MemoryError, ValueError):
            raise ModelError(f"{where}: expression {source[:40]!r}... is nested too deeply to parse") from None
        self._check_depth(tree.body)
        self.names: set[str] = set()
        self.checked_indices: set = set()
        self._fn = self._compile(tree.body)

    def _check_depth(self, root: ast.AST) -> None:
        stack = [(root, 1)]
        while stack:
            n, d = stack.pop()
            if d > MAX_DEPTH:
                raise ModelError(f"{self.where}: expression {self.source[:40]!r}... is nested more than "
                                 f"{MAX_DEPTH} levels deep")
            stack.extend((c, d + 1) for c in ast.iter_child_nodes(n))

    def __call__(self, env: Env) -> Named:
        return self._fn(env)

    def _bad(self, what: str):
        return ModelError(f"{self.where}: {what} is not allowed in expression {self.source!r}")

    def _compile(self, n: ast.AST):
        if isinstance(n, ast.Constant) and isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            made = {}
            try:
                v = float(n.value)
            except OverflowError:
                v = math.inf
            if not math.isfinite(v):
                raise ModelError(f"{self.where}: the number {str(n.value)[:20]}... in expression {self.source[:40]!r} "
                                 f"is too large")

            def constant(env):   # one tensor per dtype and device, not one per evaluation
                key = (env.dtype, env.device)
                if key not in made:
                    t = torch.tensor(v, dtype=env.dtype, device=env.device)
                    if not torch.isfinite(t):
                        raise ModelError(f"{self.where}: the number {v:g} in expression {self.source!r} is out "
                                         f"of the range of {str(env.dtype).replace('torch.', '')}; use dtype float64")
                    made[key] = Constant(t, (), v)
                return made[key]
            return constant
        if isinstance(n, ast.Name):
            name = n.id
            if name in FUNCTIONS:
                raise self._bad(f"the function name {name!r} used as a value")
            self.names.add(name)
            return lambda env: env.values[name]
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.USub, ast.UAdd)):
            f = self._compile(n.operand)
            if isinstance(n.op, ast.UAdd):
                return f
            return lambda env: _map(torch.neg, f(env))
        if isinstance(n, ast.BinOp):
            a, b = self._compile(n.left), self._compile(n.right)
            if isinstance(n.op, ast.MatMult):
                return lambda env: _matmul(a(env), b(env), env.rank, self)
            op = _BINOPS.get(type(n.op))
            if op is None:
                raise self._bad(f"the operator {type(n.op).__name__}")
            return lambda env: _binary(op, a(env), b(env), env.rank)
        if isinstance(n, ast.Call):
            if not isinstance(n.func, ast.Name):
                raise self._bad("calling something other than a plain function name")
            fname = n.func.id
            if fname not in FUNCTIONS:
                raise self._bad(f"the function {fname!r} (allowed: {', '.join(sorted(FUNCTIONS))})")
            args = [self._compile(a) for a in n.args]
            axis = None
            for kw in n.keywords:
                if kw.arg != "axis" or fname not in _AXIS_FUNCTIONS:
                    raise self._bad(f"the keyword argument {kw.arg!r} to {fname}")
                axis = self._int(kw.value)
            if len(n.args) == 2 and fname in _AXIS_FUNCTIONS:
                axis, args = self._int(n.args[1]), args[:1]
            if len(args) != 1:
                raise ModelError(f"{self.where}: {fname}() takes one argument in {self.source!r}")
            fn, x = FUNCTIONS[fname], args[0]
            if fname in _AXIS_FUNCTIONS:
                ax = -1 if axis is None else axis
                return lambda env: _along_event(fn, x(env), ax, self)
            return lambda env: _map(fn, x(env))
        if isinstance(n, ast.Subscript):
            base = self._compile(n.value)
            idx = n.slice
            if isinstance(idx, ast.Constant) and isinstance(idx.value, int):
                i = idx.value
                return lambda env: _index_const(base(env), i, self)
            if isinstance(idx, ast.Name):
                index = self._compile(idx)
                return lambda env: _index_data(base(env), index(env), env.rank, self)
            raise self._bad("indexing by anything but an integer or an integer data name")
        raise self._bad(f"the construct {type(n).__name__}")

    def _int(self, n: ast.AST) -> int:
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -self._int(n.operand)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return n.value
        raise self._bad("an axis that is not an integer constant")


def _map(fn, x: Named) -> Named:
    return Named(fn(x.t), x.dims)


def _binary(op, a: Named, b: Named, rank) -> Named:
    (ta, tb), dims = broadcast([a, b], rank)
    return Named(op(ta, tb), dims)


def _matmul(a: Named, b: Named, rank, expr: Expr) -> Named:
    ea, eb = len(a.event_shape), len(b.event_shape)
    if not (1 <= ea <= 2 and 1 <= eb <= 2):
        raise ModelError(f"{expr.where}: '@' needs vector or matrix operands, got event shapes {a.event_shape} and "
                         f"{b.event_shape} in {expr.source!r}")
    dims = union_dims([a, b], rank)
    eq = {(1, 1): "...i,...i->...", (2, 1): "...ij,...j->...i", (1, 2): "...i,...ij->...j",
          (2, 2): "...ij,...jk->...ik"}[(ea, eb)]
    # einsum contracts without materialising the broadcast product (a user vector of 18
    # against every film's features would otherwise make an 18x larger intermediate)
    ta, tb = a.align(dims, ea), b.align(dims, eb)
    dtype = next((t.dtype for t in (ta, tb) if t.is_floating_point()), torch.get_default_dtype())
    return Named(torch.einsum(eq, ta.to(dtype), tb.to(dtype)), dims)   # integer data (a 0/1 design) too


def _event_axis(x: Named, axis: int, expr: Expr) -> int:
    ev = len(x.event_shape)
    if not -ev <= axis < ev:
        raise ModelError(f"{expr.where}: axis {axis} is out of range for a value with event shape "
                         f"{x.event_shape} in {expr.source!r}")
    return len(x.dims) + (axis % ev)


def _along_event(fn, x: Named, axis: int, expr: Expr) -> Named:
    return Named(fn(x.t, _event_axis(x, axis, expr)), x.dims)


def _index_const(x: Named, i: int, expr: Expr) -> Named:
    ax = _event_axis(x, 0, expr)
    n = x.t.shape[ax]
    if not -n <= i < n:
        raise ModelError(f"{expr.where}: index {i} is out of range for size {n} in {expr.source!r}")
    return Named(x.t.select(ax, i), x.dims)


def _index_data(x: Named, index: Named, rank, expr: Expr) -> Named:
    """x[idx]: pick entries of x's first event dim by integer data, per batch element."""
    if index.t.is_floating_point() or index.event_shape:
        raise ModelError(f"{expr.where}: an index must be integer data with no event dims in {expr.source!r}")
    ax = _event_axis(x, 0, expr)
    n = x.t.shape[ax]
    # data is constant: check each index tensor (or chunk of it) once, not every iteration
    key = (index.t.data_ptr(), tuple(index.t.shape), n)
    if key not in expr.checked_indices:
        if index.t.numel() and (int(index.t.min()) < 0 or int(index.t.max()) >= n):
            raise ModelError(f"{expr.where}: index data in {expr.source!r} must lie in 0..{n - 1}")
        expr.checked_indices.add(key)
    dims = union_dims([x, index], rank)
    rest = x.event_shape[1:]
    tx = x.align(dims, len(x.event_shape))
    ti = index.align(dims, 0)
    batch = torch.broadcast_shapes(tx.shape[: len(dims)], ti.shape)
    tx = tx.expand(tuple(batch) + x.event_shape)
    ti = ti.expand(tuple(batch)).reshape(*batch, 1, *[1] * len(rest)).expand(tuple(batch) + (1,) + rest)
    return Named(torch.gather(tx, len(dims), ti).squeeze(len(dims)), dims)
