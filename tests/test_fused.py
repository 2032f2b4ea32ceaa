"""The fused log-densities (engine.dists: fast_log_prob, summed_log_prob) against
torch.distributions' log_prob, and the deferred plate sum of observed factors against
the whole factor summed, in a fitted model.

Every fused path is the same value as torch's to float rounding: float64 here, so the
tolerance is a few hundred ulps of the terms summed."""

import zlib

import numpy as np
import pytest
import torch

from engine.dists import DISTRIBUTIONS, event_sum, fast_log_prob, summed_log_prob
from engine.model import Model
from engine.named import Constant, Deferred, Named

DIMS = ("K:a", "K:b", "p", "q")          # two K-dims, an outer plate p and the plate q summed over
SIZES = {"K:a": 3, "K:b": 4, "p": 2, "q": 5}


def named(gen, dims, event=(), low=None, high=None, integer=False):
    shape = [SIZES[d] for d in dims] + list(event)
    t = torch.rand(shape, generator=gen, dtype=torch.float64)
    if integer:
        return Named(torch.floor(t * (high - low + 1) + low), dims)
    if low is not None:
        return Named(low + (high - low) * t, dims)
    return Named(4 * t - 2, dims)


def value(gen, name, event=(), n=None):
    dims = ("p", "q")
    if name in ("Bernoulli",):
        return named(gen, dims, event, 0, 1, integer=True)
    if name == "Binomial":
        return named(gen, dims, event, 0, n, integer=True)
    if name in ("Poisson", "NegativeBinomial"):
        return named(gen, dims, event, 0, 7, integer=True)
    return named(gen, dims, event)


# (distribution, argument builder); the arguments span different dims, along q or not
CASES = {
    "normal": ("Normal", lambda g, e: {"loc": named(g, ("K:a", "p", "q"), e), "scale": named(g, ("K:b", "p"), (), 0.5, 2)}),
    "normal loc flat": ("Normal", lambda g, e: {"loc": named(g, ("K:a", "p"), e), "scale": named(g, ("K:b",), (), 0.5, 2)}),
    "normal number scale": ("Normal", lambda g, e: {"loc": named(g, ("K:a", "K:b", "q"), e),
                                                   "scale": Constant(torch.tensor(1.7, dtype=torch.float64), (), 1.7)}),
    "normal zero loc": ("Normal", lambda g, e: {"loc": Constant(torch.tensor(0.0, dtype=torch.float64), (), 0.0),
                                               "scale": named(g, ("K:a", "p"), (), 0.5, 2)}),
    "normal scale along q": ("Normal", lambda g, e: {"loc": named(g, ("K:a",), e), "scale": named(g, ("K:b", "q"), e, 0.5, 2)}),
    "bernoulli logits": ("Bernoulli", lambda g, e: {"logits": named(g, ("K:a", "K:b", "q"), e)}),
    "bernoulli logits flat": ("Bernoulli", lambda g, e: {"logits": named(g, ("K:a", "p"), e)}),
    "bernoulli probs": ("Bernoulli", lambda g, e: {"probs": named(g, ("K:a", "q"), e, 0.01, 0.99)}),
    "binomial logits": ("Binomial", lambda g, e: {"total_count": Constant(torch.tensor(9.0, dtype=torch.float64), (), 9.0),
                                                 "logits": named(g, ("K:a", "K:b", "q"), e)}),
    "binomial probs flat": ("Binomial", lambda g, e: {"total_count": Constant(torch.tensor(9.0, dtype=torch.float64), (), 9.0),
                                                     "probs": named(g, ("K:b", "p"), e, 0.01, 0.99)}),
    "binomial count data": ("Binomial", lambda g, e: {"total_count": Named(torch.full((2, 5), 9.0, dtype=torch.float64), ("p", "q")),
                                                     "logits": named(g, ("K:a", "q"), e)}),
    "poisson": ("Poisson", lambda g, e: {"rate": named(g, ("K:a", "K:b", "q"), e, 0.1, 5)}),
    "poisson flat": ("Poisson", lambda g, e: {"rate": named(g, ("K:a", "p"), e, 0.1, 5)}),
    "negative binomial logits": ("NegativeBinomial", lambda g, e: {"total_count": named(g, ("K:b",), (), 0.5, 4),
                                                                    "logits": named(g, ("K:a", "q"), e)}),
    "negative binomial probs": ("NegativeBinomial", lambda g, e: {
        "total_count": Constant(torch.tensor(3.0, dtype=torch.float64), (), 3.0),
        "probs": named(g, ("K:a", "p"), e, 0.01, 0.99)}),
}


def torch_log_prob(spec, args, dims, n_extra, v):
    """torch.distributions' own log_prob over `dims`, event dims summed."""
    d = spec.cls(**{a: x.align(dims, n_extra) for a, x in args.items()}, validate_args=False)
    return event_sum(d.log_prob(v), n_extra)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n_extra", [0, 1])
def test_fast_log_prob_is_torchs(case, n_extra):
    name, make = CASES[case]
    spec = DISTRIBUTIONS[name]
    g = torch.Generator().manual_seed(zlib.crc32(repr((case, n_extra)).encode()))
    event = (3,) * n_extra
    args = make(g, event)
    v = value(g, name, event, n=9).align(DIMS, n_extra)
    want = torch_log_prob(spec, args, DIMS, n_extra, v)
    offset = named(g, ("K:a", "p")).align(DIMS, 0)
    for off in (None, offset):
        got = fast_log_prob(spec, args, DIMS, n_extra, v, off)
        assert got is not None
        expected = want if off is None else want + off
        torch.testing.assert_close(got.expand_as(expected), expected, rtol=1e-12, atol=1e-11)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("n_extra", [0, 1])
@pytest.mark.parametrize("masked", [False, True])
def test_summed_log_prob_is_torchs_summed(case, n_extra, masked):
    name, make = CASES[case]
    spec = DISTRIBUTIONS[name]
    g = torch.Generator().manual_seed(zlib.crc32(repr((case, n_extra, masked, 1)).encode()))
    event = (3,) * n_extra
    args = make(g, event)
    v = value(g, name, event, n=9).align(DIMS, n_extra)
    mask = (torch.rand((2, 5), generator=g) < 0.6) if masked else None
    if masked:
        mask[0, :] = False   # a whole row unobserved: the sum over it is 0
    m = None if mask is None else Named(mask, ("p", "q")).align(DIMS, 0)
    lp = torch_log_prob(spec, args, DIMS, n_extra, v)
    if m is not None:
        lp = torch.where(m, lp, 0.0)
    want = lp.sum(DIMS.index("q"), keepdim=True)
    got = summed_log_prob(spec, args, DIMS, n_extra, v, m, DIMS.index("q"))
    if case == "normal scale along q":   # no term-by-term sum: the caller sums the whole factor
        assert got is None
        return
    assert got is not None
    got = got.reshape(got.shape[:len(DIMS)])
    torch.testing.assert_close(got.expand_as(want), want, rtol=1e-11, atol=1e-10)


def test_float32_within_rounding():
    """In float32 the fused sum and torch's agree to a few ulps of the sum's magnitude."""
    g = torch.Generator().manual_seed(3)
    spec = DISTRIBUTIONS["Normal"]
    args = {"loc": named(g, ("K:a", "p", "q")), "scale": named(g, ("K:b", "p"), (), 0.5, 2)}
    args32 = {a: Named(x.t.float(), x.dims) for a, x in args.items()}
    v = value(g, "Normal").align(DIMS, 0)
    want = torch_log_prob(spec, args, DIMS, 0, v).sum(3, keepdim=True)
    got = summed_log_prob(spec, args32, DIMS, 0, v.float(), None, 3).double()
    assert float((got - want).abs().max()) < 64 * torch.finfo(torch.float32).eps * float(want.abs().max())


def _plated_model():
    """A group-level latent, a global one, and observations in an inner plate (some
    missing): every observed factor is summed over its plate by the deferred path."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 6))
    y[1, 2] = np.nan
    c = rng.integers(0, 5, size=(4, 6)).astype(float)
    m = Model("deferred")
    m.add_plate("g", 4).add_plate("n", 6, parent="g")
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("s", "latent", "HalfNormal", {"scale": 1})
    m.add_node("a", "latent", "Normal", {"loc": "mu", "scale": 1}, plate="g")
    m.add_node("y", "observed", "Normal", {"loc": "a + 0.3 * x", "scale": "s"}, plate="n")
    m.add_node("c", "observed", "Binomial", {"total_count": 4, "logits": "a - mu"}, plate="n")
    m.set_data("x", rng.normal(size=(4, 6)), plates=["g", "n"])
    m.set_data("y", y).set_data("c", c)
    return m


def _whole(prog, values, sources):
    """The factors of a sample, every one computed whole (a Deferred's t before any plate sum)."""
    return {n: Named(f.t, f.dims) for n, f in prog.factors(values, None, sources).items()}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_deferred_plate_sum_gives_the_same_sample(dtype):
    """The contraction sums observed factors over their plate term by term; contracting
    the whole factors instead gives the same log P_MP and marginal weights."""
    m = _plated_model()
    prog = m.compile(K=5, device="cpu", dtype=dtype, proposal="q")
    tol = 1e-12 if dtype == "float64" else 1e-5
    for seed in (7, 8):   # the first sample of a program runs its checks, the second does not
        s = prog.sample(seed)
        assert isinstance(s.factors["y"], Deferred) and isinstance(s.factors["c"], Deferred)
        log_p, _, _ = prog.plan.contract(_whole(prog, s.values, s.sources), prog.sizes)
        assert s.log_marginal() == pytest.approx(float(log_p.detach()), rel=tol)
        grads = torch.autograd.grad(log_p, [s.sources[n] for n in ("mu", "s", "a")])
        for name, g in zip(("mu", "s", "a"), grads):
            w = g.double() / g.double().sum(0, keepdim=True)
            torch.testing.assert_close(s.marginal_weights(name), w, rtol=0, atol=1e-10 if dtype == "float64" else 1e-4)
        # the whole factor is there when asked for, detached; the joint marginal of an
        # observed node is computed from it
        assert not s.factors["y"].t.requires_grad
        j = s.joint_marginal("y")
        assert j.dims == s.factors["y"].dims
        torch.testing.assert_close(j.t.sum(0).sum(0), torch.ones(4, 6, dtype=j.t.dtype), rtol=0, atol=tol * 10)


def test_deferred_plate_sum_carries_gradients():
    """VI's reparameterised gradients through the deferred sums equal those through the
    whole factors."""
    m = _plated_model()
    m.update_node("c", dist="Poisson", args={"rate": "exp(0.2 * a)"})
    prog = m.compile(K=4, device="cpu", dtype="float64", proposal="q")
    params = prog.proposal.parameters()
    for t in params:
        t.requires_grad_(True)
    for seed in (3, 4):
        s = prog.sample(seed, reparam=True)
        log_p, _, _ = prog.plan.contract(_whole(prog, s.values, s.sources), prog.sizes)
        for a, b in zip(torch.autograd.grad(s.log_p, params, retain_graph=True),
                        torch.autograd.grad(log_p, params)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
