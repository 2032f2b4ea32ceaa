"""Distributions a node may use, described by their signature.

Each entry names the torch class, its arguments (in order, with defaults and the
alternatives of which exactly one must be given), the event rank each argument has
natively (a Dirichlet's concentration is a vector), and the event rank of a value.
The workbench builds its argument forms from these signatures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributions as D
import torch.nn.functional as F
from torch.distributions import constraints
from torch.distributions.utils import probs_to_logits

from .errors import ModelError
from .named import Constant, Deferred, Named


class HalfStudentT(D.Distribution):
    """|T| for T ~ StudentT(df, 0, scale): the density 2 t_df(x / scale) / scale on x >= 0
    (df = 1 is the HalfCauchy; df -> infinity the HalfNormal)."""
    arg_constraints = {"df": constraints.positive, "scale": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, df, scale, validate_args=None):
        self.df, self.scale = torch.distributions.utils.broadcast_all(df, scale)
        self._t = D.StudentT(self.df, torch.zeros_like(self.scale), self.scale, validate_args=False)
        super().__init__(self.df.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return HalfStudentT(self.df.expand(shape), self.scale.expand(shape), validate_args=False)

    def rsample(self, sample_shape=torch.Size()):
        return self._t.rsample(sample_shape).abs()

    def log_prob(self, value):
        lp = self._t.log_prob(value) + math.log(2)
        return torch.where(value >= 0, lp, -math.inf)

    @property
    def mean(self):
        return torch.where(self.df > 1, 2 * self.scale * torch.exp(
            torch.lgamma((self.df + 1) / 2) - torch.lgamma(self.df / 2)) * torch.sqrt(self.df / math.pi)
            / (self.df - 1), math.inf)


@dataclass(frozen=True)
class DistSpec:
    name: str
    cls: type
    args: tuple[str, ...]                     # every argument the distribution accepts
    defaults: dict = field(default_factory=dict)
    one_of: tuple[tuple[str, ...], ...] = ()  # groups of alternatives: exactly one required
    arg_rank: dict = field(default_factory=dict)   # native event rank per argument (default 0)
    value_rank: int = 0
    discrete: bool = False
    doc: str = ""

    def required(self) -> tuple[str, ...]:
        alts = {a for g in self.one_of for a in g}
        return tuple(a for a in self.args if a not in self.defaults and a not in alts)


def _spec(name, cls, args, doc, **kw):
    return DistSpec(name, cls, tuple(args), doc=doc, **kw)


_PROB = (("probs", "logits"),)
DISTRIBUTIONS: dict[str, DistSpec] = {s.name: s for s in [
    _spec("Normal", D.Normal, ["loc", "scale"], "real line"),
    _spec("HalfNormal", D.HalfNormal, ["scale"], "x >= 0"),
    _spec("HalfCauchy", D.HalfCauchy, ["scale"], "x >= 0, heavy tailed"),
    _spec("LogNormal", D.LogNormal, ["loc", "scale"], "x > 0, log x ~ Normal(loc, scale)"),
    _spec("Gamma", D.Gamma, ["concentration", "rate"], "x > 0, mean concentration/rate"),
    _spec("InverseGamma", D.InverseGamma, ["concentration", "rate"], "x > 0, 1/x ~ Gamma"),
    _spec("Exponential", D.Exponential, ["rate"], "x >= 0, mean 1/rate"),
    _spec("Beta", D.Beta, ["concentration1", "concentration0"], "0 < x < 1, mean c1/(c1+c0)"),
    _spec("Uniform", D.Uniform, ["low", "high"], "low <= x < high"),
    _spec("StudentT", D.StudentT, ["df", "loc", "scale"], "real line, heavy tailed",
          defaults={"loc": 0.0, "scale": 1.0}),
    _spec("HalfStudentT", HalfStudentT, ["df", "scale"], "x >= 0, heavy tailed (df=1: HalfCauchy)"),
    _spec("Laplace", D.Laplace, ["loc", "scale"], "real line, double exponential"),
    _spec("Bernoulli", D.Bernoulli, ["probs", "logits"], "x in {0, 1}", one_of=_PROB, discrete=True),
    _spec("Binomial", D.Binomial, ["total_count", "probs", "logits"], "x in 0..total_count",
          defaults={"total_count": 1}, one_of=_PROB, discrete=True),
    _spec("Categorical", D.Categorical, ["probs", "logits"], "x in 0..n-1", one_of=_PROB,
          arg_rank={"probs": 1, "logits": 1}, discrete=True),
    _spec("Poisson", D.Poisson, ["rate"], "x in 0, 1, 2, ...", discrete=True),
    _spec("NegativeBinomial", D.NegativeBinomial, ["total_count", "probs", "logits"],
          "x in 0, 1, 2, ... (failures before total_count successes)", one_of=_PROB, discrete=True),
    _spec("Dirichlet", D.Dirichlet, ["concentration"], "x on the simplex",
          arg_rank={"concentration": 1}, value_rank=1),
    _spec("MultivariateNormal", D.MultivariateNormal,
          ["loc", "covariance_matrix", "scale_tril", "precision_matrix"], "real vector",
          one_of=(("covariance_matrix", "scale_tril", "precision_matrix"),),
          arg_rank={"loc": 1, "covariance_matrix": 2, "scale_tril": 2, "precision_matrix": 2},
          value_rank=1),
]}


def get_spec(name: str, where: str) -> DistSpec:
    try:
        return DISTRIBUTIONS[name]
    except KeyError:
        raise ModelError(f"{where}: unknown distribution {name!r} "
                         f"(known: {', '.join(sorted(DISTRIBUTIONS))})") from None


def check_args(spec: DistSpec, given: set[str], where: str) -> None:
    unknown = given - set(spec.args)
    if unknown:
        raise ModelError(f"{where}: {spec.name} has no argument {sorted(unknown)[0]!r} "
                         f"(arguments: {', '.join(spec.args)})")
    missing = [a for a in spec.required() if a not in given]
    if missing:
        raise ModelError(f"{where}: {spec.name} needs argument {missing[0]!r}")
    for group in spec.one_of:
        n = sum(a in given for a in group)
        if n != 1:
            raise ModelError(f"{where}: {spec.name} needs exactly one of {', '.join(group)} (got {n})")


def arg_constraint(spec: DistSpec, arg: str):
    """The torch constraint a value of argument `arg` meets (None where it depends on
    the other arguments). Categorical's probs need only be non-negative: torch
    normalises them."""
    if spec.name == "Uniform":
        return constraints.real
    if spec.name == "Categorical" and arg == "probs":
        return constraints.independent(constraints.nonnegative, 1)
    c = spec.cls.arg_constraints.get(arg)
    return None if c is None or constraints.is_dependent(c) else c


def _describe(c) -> str:
    base = c.base_constraint if isinstance(c, constraints.independent) else c
    if isinstance(base, constraints.greater_than):
        return f"> {base.lower_bound:g}"
    if type(base) is type(constraints.nonnegative_integer):
        return f"an integer >= {base.lower_bound:g}"
    if isinstance(base, constraints.greater_than_eq):
        return f">= {base.lower_bound:g}"
    if isinstance(base, constraints.half_open_interval):
        return f"in [{base.lower_bound:g}, {base.upper_bound:g})"
    if isinstance(base, constraints.interval):
        return f"in [{base.lower_bound:g}, {base.upper_bound:g}]"
    if base is constraints.positive_definite:
        return "a symmetric positive-definite matrix"
    if base is constraints.lower_cholesky:
        return "a lower-triangular matrix with a positive diagonal"
    return "a real number (not NaN)"


def range_ok(spec: DistSpec, arg: str, t: torch.Tensor) -> torch.Tensor | None:
    """A 0-d boolean tensor: whether every entry of `t` is a valid `arg` (no sync, for
    checks that are gathered and looked at once); None if nothing can be checked alone."""
    c = arg_constraint(spec, arg)
    if c is None:
        return None
    r = spec.arg_rank.get(arg, 0)
    if t.dim() < r or (r == 2 and t.shape[-1] != t.shape[-2]):
        return torch.zeros((), dtype=torch.bool, device=t.device)
    return c.check(t).all()


def range_error(spec: DistSpec, arg: str, t: torch.Tensor) -> str | None:
    """Why `t` is not a valid value of argument `arg`, or None if it is."""
    ok = range_ok(spec, arg, t)
    if ok is None or bool(ok):
        if spec.name == "Categorical" and arg == "probs" and t.dim() and bool((t.sum(-1) <= 0).any()):
            return f"{spec.name} needs probs that do not all vanish"
        return None
    r = spec.arg_rank.get(arg, 0)
    if t.dim() < r or (r == 2 and t.shape[-1] != t.shape[-2]):
        return f"{spec.name} needs {arg} to be {('a vector', 'a square matrix')[r - 1]}, got shape {tuple(t.shape)}"
    c = arg_constraint(spec, arg)
    base = c.base_constraint if isinstance(c, constraints.independent) else c
    want = f"{spec.name} needs {arg} {_describe(c)}" if base not in (constraints.positive_definite,
                                                                    constraints.lower_cholesky) else \
        f"{spec.name} needs {arg} to be {_describe(c)}"
    if r == 2:
        return want
    bad = t.detach()[~base.check(t.detach())]
    return f"{want}, got {bad[0].item():g}" if bad.numel() else want


def check_constant(spec: DistSpec, arg: str, value: np.ndarray, where: str) -> None:
    """A constant argument (float64) must be in range: refused at load, not by torch later."""
    t = torch.as_tensor(value, dtype=torch.float64)
    msg = range_error(spec, arg, t)
    if msg is not None:
        raise ModelError(f"{where}: {msg}")


def to_dtype(value, dtype: torch.dtype, device, where: str) -> torch.Tensor:
    """A constant as a tensor of `dtype`, refused where it overflows (1e39 in float32)."""
    t = torch.as_tensor(value, dtype=dtype, device=device)
    if not bool(torch.isfinite(t).all()):
        biggest = float(np.abs(np.asarray(value, dtype=np.float64)).max())
        raise ModelError(f"{where}: {biggest:g} is out of the range of {str(dtype).replace('torch.', '')} "
                         f"(largest {torch.finfo(dtype).max:.3g}); use dtype float64")
    return t


def build(spec: DistSpec, args: dict[str, Named], dims: tuple[str, ...], n_extra: int, where: str):
    """The torch distribution with every argument aligned to batch `dims`.

    `n_extra` trailing batch dims are reinterpreted as event dims (a Normal latent of
    shape [18]); the caller sums them out of log_prob.
    """
    tensors = {}
    for a, v in args.items():
        r = spec.arg_rank.get(a, 0)
        extra = len(v.event_shape) - r
        if extra < 0:
            raise ModelError(f"{where}: {spec.name} argument {a!r} needs {r} event dim(s), "
                             f"got shape {v.event_shape}")
        if extra > n_extra:
            raise ModelError(f"{where}: argument {a!r} has event shape {v.event_shape}, "
                             f"more dims than the node's shape allows")
        tensors[a] = v.align(dims, r + n_extra)
    try:
        return spec.cls(**tensors, validate_args=False)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"{where}: cannot build {spec.name} from its arguments "
                         f"({', '.join(f'{a}: {tuple(t.shape)}' for a, t in tensors.items())}): {e}") from None


def impossible(spec: DistSpec, args: dict[str, Named], dims: tuple[str, ...], n_extra: int,
               value: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor | None:
    """Where `value` is impossible because probs is exactly 0 or 1 (over `dims`, event
    dims reduced), for the distributions torch scores with probs clamped to
    [eps, 1 - eps]: they give such a value log(eps) (-15.9 in float32), not -inf.
    `present`: where entries of the value are present (missing ones are never impossible)."""
    if spec.name not in ("Bernoulli", "Binomial", "NegativeBinomial") or "probs" not in args:
        return None
    p = args["probs"].align(dims, n_extra)
    bad = (p == 0) & (value != 0)
    if spec.name != "NegativeBinomial":
        n = args["total_count"].align(dims, n_extra) if "total_count" in args else 1
        bad = bad | ((p == 1) & (value != n))
    if present is not None:
        bad = bad & present
    return bad.flatten(len(dims)).any(-1) if n_extra else bad


def support_fill(support) -> float:
    """A value inside `support`, used in place of missing (NaN) observations."""
    if isinstance(support, (constraints.greater_than, constraints.greater_than_eq)):
        return float(support.lower_bound) + 1.0
    if isinstance(support, constraints.interval) or isinstance(support, constraints.half_open_interval):
        return 0.5 * (float(support.lower_bound) + float(support.upper_bound))
    return 0.0


def event_sum(lp: torch.Tensor, n: int) -> torch.Tensor:
    return lp.sum(tuple(range(-n, 0))) if n else lp


HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def fast_log_prob(spec: DistSpec, args: dict[str, Named], dims: tuple[str, ...], n_extra: int,
                  value: torch.Tensor, offset: torch.Tensor | None = None,
                  expand: bool = False) -> torch.Tensor | None:
    """log_prob summed over the `n_extra` event dims without torch.distributions'
    broadcast_all, for the distributions that make the largest factors; None for the rest.

    A Normal factor over K-dims and plates is the largest tensor of most models. torch's
    Normal.log_prob makes six full-size passes ((x - loc) ** 2, neg, / 2 var, - log scale,
    - const), over loc and scale already expanded to the full shape; here it is
    (x - loc) / scale and one fused pass (addcmul) or, with event dims, one reduction
    (vector_norm) before anything small is added. A scale written as a number costs no
    tensor pass at all, and `offset` (a tensor over fewer dims, added to the result) joins
    the small terms. `expand`: a vector Normal whose value, loc and scale span different
    batch dims, summed by its expanded square (Program._expands decides, from the plan).
    The same value to float rounding.

    Bernoulli, Binomial, Poisson and NegativeBinomial (`_fast_discrete`) are fused the
    same way: every term is computed at the broadcast shape of what it reads (softplus of
    the logits at the logits' shape, a Binomial's log-binomial coefficient at the data's),
    and only the one term that needs every dim, value times logits, makes the full-size
    tensor, in one multiply-add onto the rest."""
    if spec.name in _DISCRETE:
        return _fast_discrete(spec, args, dims, n_extra, value, offset)
    if spec.name != "Normal":
        return None
    loc, scale = args["loc"], args["scale"]
    loc = None if isinstance(loc, Constant) and loc.value == 0 else loc.align(dims, n_extra)
    scale = scale.value if isinstance(scale, Constant) and scale.value > 0 else scale.align(dims, n_extra)
    if expand and n_extra:
        return _expanded_square(value, loc, scale, n_extra, offset)
    z = value if loc is None else value - loc
    n = math.prod(z.shape[z.dim() - n_extra:]) if n_extra else 1   # entries summed per factor entry
    if not isinstance(scale, torch.Tensor):
        if scale != 1:
            z = z / scale
        log_norm = -n * (math.log(scale) + HALF_LOG_2PI)
    else:
        z = z / scale
        log_scale = torch.log(scale)
        if n_extra:
            log_scale = log_scale.expand(*log_scale.shape[:log_scale.dim() - n_extra],
                                         *z.shape[z.dim() - n_extra:]).sum(tuple(range(-n_extra, 0)))
        log_norm = -(log_scale + n * HALF_LOG_2PI)
    small = log_norm if offset is None else offset + log_norm
    if not isinstance(small, torch.Tensor):
        small = z.new_full((), small)
    if not n_extra:
        return torch.addcmul(small, z, z, value=-0.5)
    return small - 0.5 * torch.linalg.vector_norm(z, 2, dim=tuple(range(-n_extra, 0))).square()


def _expanded_square(value: torch.Tensor, loc: torch.Tensor | None, scale, n_extra: int, offset) -> torch.Tensor:
    """The vector Normal's log-density summed over its event dims, without the broadcast
    of value, loc and scale over every batch dim times the event size (MovieLens's z at
    K=30: 145 million entries for an 8-million-entry factor): with p = 1/scale^2,
        sum_d (v - l)^2 p = sum_d v^2 p - 2 sum_d v l p + sum_d l^2 p,
    each term an einsum over the event dims that holds no more than its own output. The
    cancellation in the expanded square is kept small by centring v and l on loc's mean
    and computing in float64. `scale` is a tensor, or a positive number."""
    event = value.shape[value.dim() - n_extra:]

    def flat(t):   # the event dims expanded to the value's and flattened into one
        t = t.expand(*t.shape[:t.dim() - n_extra], *event)
        return t.reshape(*t.shape[:t.dim() - n_extra], -1).double()
    v = flat(value)
    n = v.shape[-1]
    if isinstance(scale, torch.Tensor):
        s = flat(scale)
        p, log_det = s.pow(-2), torch.log(s).sum(-1)
    else:
        p, log_det = None, n * math.log(scale)

    def weighted(*ts):   # sum_d prod(ts) p
        eq = ",".join("...d" for _ in ts)
        return torch.einsum(eq + ",...d->...", *ts, p) if p is not None else torch.einsum(eq + "->...", *ts) / scale ** 2
    if loc is None:
        quad = weighted(v, v)
    else:   # centred on loc's mean first: v and l then differ by no more than the terms do
        l = flat(loc)
        centre = l.detach().reshape(-1, n).mean(0)
        v, l = v - centre, l - centre
        quad = weighted(v, l).mul_(-2).add_(weighted(v, v)).add_(weighted(l, l))   # in place on the largest
    lp = quad.mul_(-0.5).sub_(log_det + n * HALF_LOG_2PI).to(value.dtype)
    return lp if offset is None else lp + offset


# ---- the discrete likelihoods, fused -----------------------------------------------------
_DISCRETE = ("Bernoulli", "Binomial", "Poisson", "NegativeBinomial")


def _logits(args: dict[str, Named], dims, n_extra) -> torch.Tensor:
    """The logits, or probs mapped to them as torch does (clamped to [eps, 1 - eps])."""
    if "logits" in args:
        return args["logits"].align(dims, n_extra)
    return probs_to_logits(args["probs"].align(dims, n_extra), is_binary=True)


def _plus(a, b):
    """a + b where either may be None (nothing to add)."""
    return b if a is None else a if b is None else a + b


def _multiply_add(small: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """small + a * b in one pass, in place on `small` when it already has the result's
    shape (it is then a fresh intermediate of ours: nothing saved for backward reads it)."""
    if small.shape == torch.broadcast_shapes(small.shape, a.shape, b.shape) and small.dtype == a.dtype:
        return small.addcmul_(a, b)
    return torch.addcmul(small, a, b)


def _binomial_coefficient(n, v):
    return torch.lgamma(n + 1) - torch.lgamma(v + 1) - torch.lgamma(n - v + 1)


def _negative_binomial_normaliser(r, v):
    """log C(r + v - 1, v) as torch computes it (0 where r + v is 0)."""
    lg = torch.lgamma(r + v) - torch.lgamma(v + 1.0) - torch.lgamma(r)
    return lg.masked_fill((r + v) == 0, 0.0)


def _fast_discrete(spec: DistSpec, args: dict[str, Named], dims, n_extra: int, value: torch.Tensor,
                   offset: torch.Tensor | None) -> torch.Tensor:
    """log_prob of a Bernoulli, Binomial, Poisson or NegativeBinomial, summed over the
    event dims, plus `offset`; the terms of torch's formulas, each at its own shape."""
    off = None if n_extra else offset   # an offset spans batch dims only: added after the event sum
    if spec.name == "Poisson":
        rate = args["rate"].align(dims, n_extra)
        lp = torch.xlogy(value, rate).sub_(rate) if value.dim() == rate.dim() and \
            torch.broadcast_shapes(value.shape, rate.shape) == rate.shape else torch.xlogy(value, rate) - rate
        lp = lp - torch.lgamma(value + 1) if off is None else lp + (off - torch.lgamma(value + 1))
    else:
        logits = _logits(args, dims, n_extra)
        if spec.name == "NegativeBinomial":
            r = args["total_count"].align(dims, n_extra)
            small = _plus(r * F.logsigmoid(-logits) + _negative_binomial_normaliser(r, value), off)
            lp = _multiply_add(small, value, F.logsigmoid(logits))
        else:
            sp = F.softplus(logits)
            if spec.name == "Bernoulli":
                small = -sp if off is None else off - sp
            else:
                n = args["total_count"].align(dims, n_extra)
                small = _plus(_binomial_coefficient(n, value) - n * sp, off)
            lp = _multiply_add(small, value, logits)
    if n_extra:
        lp = event_sum(lp, n_extra)
        return lp if offset is None else lp + offset
    return lp


# ---- an observed node's log-density summed over a plate, term by term ---------------------
class _PlateSum:
    """Sums over one batch axis (a plate) and the event axes of w * x, w the mask of
    observed entries (None: all), each x at its own broadcast shape: an x of size 1 along
    a summed axis is multiplied by that axis's size (or by the number of observed
    entries along it) instead of being broadcast first."""

    def __init__(self, axis: int, n_batch: int, n_extra: int, full: tuple[int, ...], mask: torch.Tensor | None):
        self.axis, self.full, self.mask = axis, full, mask
        self.axes = (axis, *range(n_batch, n_batch + n_extra))
        self.count = None if mask is None else mask.sum(axis, keepdim=True)

    def __call__(self, x: torch.Tensor):
        done = set()
        if self.mask is not None:
            x = torch.where(self.mask, x, 0.0) if x.shape[self.axis] > 1 else x * self.count
            done.add(self.axis)
        big = [i for i in self.axes if x.shape[i] > 1]
        if big:
            x = x.sum(big, keepdim=True)
        times = math.prod(self.full[i] for i in self.axes if i not in done and i not in big)
        return x * times if times != 1 else x

    def flat(self, x) -> bool:
        """Whether x is constant along every summed axis."""
        return all(x.shape[i] == 1 for i in self.axes)

    def dot(self, a: torch.Tensor, b: torch.Tensor):
        """The sum of w * a * b, the product formed only where both vary along the sum."""
        if self.flat(a):
            return a * self(b)
        if self.flat(b):
            return b * self(a)
        return self(a * b)

    def n(self, like: torch.Tensor):
        """The number of entries summed per result entry (observed ones only)."""
        return self(torch.ones((1,) * like.dim(), dtype=like.dtype, device=like.device))


def summed_log_prob(spec: DistSpec, args: dict[str, Named], dims, n_extra: int, value: torch.Tensor,
                    mask: torch.Tensor | None, axis: int) -> torch.Tensor | None:
    """The log-density summed over batch axis `axis` (kept, of size 1) and the event dims,
    the masked entries left out, without the broadcast of every argument to the full
    shape: each term of the density is summed at the shape of what it reads, and the
    terms are added at the end. A Normal whose scale does not vary along the sum needs
    only sum (v - loc)^2 (and, where loc does not vary along it either, the data's own
    centred sum of squares and mean: S + n (mean - loc)^2); a Bernoulli's logits times
    value is summed where both vary, its softplus at the logits' shape. None for the
    other distributions (and a Normal whose scale varies along the sum): the caller sums
    the whole log-density then. The same value to float rounding."""
    if spec.name not in _DISCRETE and spec.name != "Normal":
        return None
    full = tuple(torch.broadcast_shapes(value.shape, *[a.align(dims, n_extra).shape for a in args.values()]))
    if mask is not None and mask.dim() == len(dims) and n_extra:   # a mask over the plates: broadcast over the event
        mask = mask.reshape(*mask.shape, *[1] * n_extra)
    S = _PlateSum(axis, len(dims), n_extra, full, mask)
    if spec.name == "Normal":
        loc, scale = args["loc"], args["scale"]
        loc = None if isinstance(loc, Constant) and loc.value == 0 else loc.align(dims, n_extra)
        scale = scale.value if isinstance(scale, Constant) and scale.value > 0 else scale.align(dims, n_extra)
        if isinstance(scale, torch.Tensor) and not S.flat(scale):
            return None
        if loc is None:
            quad = S(value * value)
        elif S.flat(loc):   # centred on the data's own mean: no cancellation, nothing of loc's size summed
            n = S.n(value)
            mean = S(value) / n.clamp_min(1)
            quad = S((value - mean).square()) + n * (mean - loc).square()
        else:
            quad = S((value - loc).square())
        n = S.n(value)
        if not isinstance(scale, torch.Tensor):
            return quad * (-0.5 / scale ** 2) - n * (math.log(scale) + HALF_LOG_2PI)
        return quad.div(scale.square()).mul_(-0.5) - n * (torch.log(scale) + HALF_LOG_2PI)
    if spec.name == "Poisson":
        rate = args["rate"].align(dims, n_extra)
        first = torch.xlogy(S(value), rate) if S.flat(rate) else S(torch.xlogy(value, rate))
        return first - S(rate) - S(torch.lgamma(value + 1))
    logits = _logits(args, dims, n_extra)
    if spec.name == "NegativeBinomial":
        r = args["total_count"].align(dims, n_extra)
        return S.dot(r, F.logsigmoid(-logits)) + S.dot(value, F.logsigmoid(logits)) + \
            S(_negative_binomial_normaliser(r, value))
    sp = F.softplus(logits)
    if spec.name == "Bernoulli":
        return S.dot(value, logits) - S(sp)
    n = args["total_count"].align(dims, n_extra)
    return S.dot(value, logits) - S.dot(n, sp) + S(_binomial_coefficient(n, value))


def deferred_log_prob(full, spec: DistSpec, args: dict[str, Named], dims, n_extra: int, value: torch.Tensor,
                      mask: torch.Tensor | None, sizes: dict[str, int]) -> Deferred:
    """An observed node's factor over `dims` as a `Deferred`: `full()` computes it whole
    (the log-density, masked, summed over its event dims); its plate sum is
    summed_log_prob's where there is one, else the sum of the whole."""
    def plate_sum(plate):
        axis = dims.index(plate)
        s = summed_log_prob(spec, args, dims, n_extra, value, mask, axis)
        s = full().sum(axis) if s is None else s.reshape(s.shape[:len(dims)]).squeeze(axis)
        return s.expand([sizes[d] for d in dims if d != plate])
    return Deferred(dims, full, plate_sum)
