"""The safe expression language of node arguments.

An expression is parsed with `ast` and checked against a whitelist (numbers, names,
arithmetic, comparisons, `@`, unary minus, indexing by an integer constant or integer
data, and calls to the functions below). It is compiled once into a tree of closures over
`Named` values; a model file never runs code.

Functions:
  elementwise   exp log sigmoid softplus sqrt abs logit tanh log1p expm1 square
  event axis    sum mean softmax cumsum, as f(x) or f(x, axis) with axis counted within the
                event dims (default the last)
  where(c, a, b) a where c is nonzero, else b (comparisons give 0 or 1)
  plate of data pmean(x, "plate") and psd(x, "plate"): the mean and the (population) sd of
                data over the elements of a plate, optionally weighted, pmean(x, "plate", w).
                Their arguments must be data (covariates, observed values without missing
                entries), never a latent: the model checks it (Model.validate).
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
    "cumsum": lambda x, axis=-1: torch.cumsum(x, axis),
}
# Functions that reduce or act along an event axis (axis counted within event dims).
_AXIS_FUNCTIONS = {"sum", "mean", "softmax", "cumsum"}
# Functions of their own syntax: where(c, a, b); pmean/psd(x, "plate"[, weights]).
PLATE_FUNCTIONS = ("pmean", "psd")
SPECIAL = ("where", *PLATE_FUNCTIONS)
ALL_FUNCTIONS = tuple(sorted([*FUNCTIONS, *SPECIAL]))

_BINOPS = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul,
           ast.Div: torch.div, ast.Pow: torch.pow}
_COMPARE = {ast.Lt: torch.lt, ast.LtE: torch.le, ast.Gt: torch.gt, ast.GtE: torch.ge,
            ast.Eq: torch.eq, ast.NotEq: torch.ne}


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
        # (function, plate, names inside) of every pmean/psd: the model checks that they are
        # data, and the program reads those data's plates against the reduced plate's
        self.reductions: list[tuple[str, str, frozenset]] = []
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
            if name in FUNCTIONS or name in SPECIAL:
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
        if isinstance(n, ast.Compare):
            parts = [self._compile(x) for x in (n.left, *n.comparators)]
            ops = []
            for op in n.ops:
                if type(op) not in _COMPARE:
                    raise self._bad(f"the comparison {type(op).__name__}")
                ops.append(_COMPARE[type(op)])
            # a < b < c is (a < b) * (b < c), as in Python; each gives 0 or 1
            return lambda env: _compare(ops, [f(env) for f in parts], env)
        if isinstance(n, ast.Call):
            return self._call(n)
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

    def _call(self, n: ast.Call):
        if not isinstance(n.func, ast.Name):
            raise self._bad("calling something other than a plain function name")
        fname = n.func.id
        if fname not in FUNCTIONS and fname not in SPECIAL:
            raise self._bad(f"the function {fname!r} (allowed: {', '.join(ALL_FUNCTIONS)})")
        if fname in PLATE_FUNCTIONS:
            return self._plate_call(fname, n)
        for kw in n.keywords:
            if kw.arg != "axis" or fname not in _AXIS_FUNCTIONS:
                raise self._bad(f"the keyword argument {kw.arg!r} to {fname}")
        if fname == "where":
            if len(n.args) != 3:
                raise ModelError(f"{self.where}: where() takes three arguments, where(condition, a, b), in "
                                 f"{self.source!r}")
            c, a, b = (self._compile(x) for x in n.args)
            return lambda env: _where(c(env), a(env), b(env), env.rank)
        args = [self._compile(a) for a in n.args]
        axis = None
        for kw in n.keywords:
            axis = self._int(kw.value)
        if len(n.args) == 2 and fname in _AXIS_FUNCTIONS and axis is None:
            axis, args = self._int(n.args[1]), args[:1]
        if len(args) != 1:
            raise ModelError(f"{self.where}: {fname}() takes one argument"
                             f"{' and an axis' if fname in _AXIS_FUNCTIONS else ''} in {self.source!r}")
        fn, x = FUNCTIONS[fname], args[0]
        if fname in _AXIS_FUNCTIONS:
            ax = -1 if axis is None else axis
            return lambda env: _along_event(fn, x(env), ax, self)
        return lambda env: _map(fn, x(env))

    def _plate_call(self, fname: str, n: ast.Call):
        """pmean(x, "plate"[, weights]) / psd(...): compiled with the names inside recorded."""
        usage = f'{fname}(x, "plate") or {fname}(x, "plate", weights)'
        if n.keywords or not 2 <= len(n.args) <= 3:
            raise ModelError(f"{self.where}: {fname}() takes data, a plate name and optionally weights, "
                             f"{usage}, in {self.source!r}")
        plate = n.args[1]
        if not (isinstance(plate, ast.Constant) and isinstance(plate.value, str) and plate.value.isidentifier()):
            raise ModelError(f"{self.where}: the second argument of {fname}() must be a plate name in quotes, "
                             f"{usage}, in {self.source!r}")
        outer, self.names = self.names, set()
        try:
            x = self._compile(n.args[0])
            w = self._compile(n.args[2]) if len(n.args) == 3 else None
            inside = frozenset(self.names)
        finally:
            self.names = outer | self.names
        name = plate.value
        self.reductions.append((fname, name, inside))
        return lambda env: _plate_reduce(fname, x(env), name, None if w is None else w(env), env, self)

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


def _compare(ops, vals: list[Named], env) -> Named:
    out = None
    for op, a, b in zip(ops, vals, vals[1:]):
        (ta, tb), dims = broadcast([a, b], env.rank)
        r = Named(op(ta, tb).to(env.dtype), dims)
        out = r if out is None else _binary(torch.mul, out, r, env.rank)
    return out


def _where(c: Named, a: Named, b: Named, rank) -> Named:
    (tc, ta, tb), dims = broadcast([c, a, b], rank)
    return Named(torch.where(tc != 0, ta, tb), dims)


def _plate_reduce(fname: str, x: Named, plate: str, w: Named | None, env, expr: Expr) -> Named:
    """The (weighted) mean or population sd of x over the elements of `plate`."""
    items = [x] if w is None else [x, w]
    dims = union_dims(items, env.rank)
    if plate not in dims:
        raise ModelError(f"{expr.where}: {fname}() reduces plate {plate!r}, but its data do not vary along "
                         f"it in {expr.source!r} (their plates: {', '.join(dims) or 'none'})")
    ev = max(len(v.event_shape) for v in items)
    ts = [v.align(dims, ev) for v in items]
    shape = torch.broadcast_shapes(*[t.shape for t in ts])
    tx = ts[0].expand(shape)
    if not tx.is_floating_point():
        tx = tx.to(env.dtype)
    ax = dims.index(plate)
    if w is None:
        mean = tx.mean(ax, keepdim=True)
        out = mean if fname == "pmean" else (tx - mean).square().mean(ax, keepdim=True).sqrt()
    else:
        tw = ts[1].expand(shape).to(tx.dtype)
        key = ("weights", ts[1].data_ptr(), tuple(shape), plate)
        total = tw.sum(ax, keepdim=True)
        if key not in expr.checked_indices:   # data: checked once
            if bool((tw < 0).any()) or not bool((total > 0).all()):
                raise ModelError(f"{expr.where}: the weights of {fname}() in {expr.source!r} must be >= 0 with a "
                                 f"positive sum over plate {plate!r} for every element")
            expr.checked_indices.add(key)
        mean = (tw * tx).sum(ax, keepdim=True) / total
        out = mean if fname == "pmean" else ((tw * (tx - mean).square()).sum(ax, keepdim=True) / total).sqrt()
    return Named(out.squeeze(ax), tuple(d for d in dims if d != plate))


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
