"""The speed-ups that must not change a value: the contraction's logsumexp and flushed
exponentials against torch's, and the allocator tuned on first use from Python."""
import math

import pytest
import torch

from engine import alloc
from engine.contract import flushed_exp, logsumexp
from engine.model import Model


def _wide(gen, shape, dtype):
    """Log values spread over [-300, 0]: most terms of a logsumexp far below the largest,
    where torch's vectorised exp takes its slow path; some slices -inf throughout."""
    x = (torch.rand(shape, generator=gen, dtype=torch.float64) * -300).to(dtype)
    x[0, :, 1] = -math.inf
    x[1, 2, :] = -math.inf
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("axes", [(0,), (1, 2), (2,)])
def test_logsumexp_is_torchs(dtype, axes):
    g = torch.Generator().manual_seed(1)
    x = _wide(g, (4, 5, 6), dtype)
    got = logsumexp(x, axes)
    want = torch.logsumexp(x.double(), axes)
    dead = torch.isneginf(want)
    assert torch.equal(torch.isneginf(got), dead)
    torch.testing.assert_close(got.double()[~dead], want[~dead], rtol=4 * torch.finfo(dtype).eps, atol=0)
    assert logsumexp(x, axes, keepdim=True).shape == torch.logsumexp(x, axes, keepdim=True).shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logsumexp_gradient_is_the_softmax_and_zero_on_dead_slices(dtype):
    g = torch.Generator().manual_seed(2)
    x = _wide(g, (4, 5, 6), dtype)
    x[:, 3, :] = -math.inf   # a slice of the sum that is -inf throughout
    x.requires_grad_()
    w = torch.rand(5, generator=g, dtype=torch.float64).to(dtype)
    (grad,) = torch.autograd.grad((logsumexp(x, (0, 2)) * w).sum(), x)
    ref = x.detach().double()
    soft = torch.softmax(ref.reshape(4, 5, 6).permute(1, 0, 2).reshape(5, -1), -1).reshape(5, 4, 6).permute(1, 0, 2)
    want = torch.nan_to_num(soft, nan=0.0) * w.double()[None, :, None]
    assert torch.isfinite(grad).all()
    assert torch.all(grad[:, 3, :] == 0)          # the dead slice
    assert torch.all(grad[0, :, 1] == 0)          # dead particles keep weight 0
    torch.testing.assert_close(grad.double(), want, rtol=0, atol=8 * torch.finfo(dtype).eps)


def test_logsumexp_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = (torch.rand((3, 4), generator=g, dtype=torch.float64) * -50).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: logsumexp(t, (1,)), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flushed_exp_is_exp_above_the_subnormals(dtype):
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(10_000, generator=g, dtype=torch.float64) * -900).to(dtype)
    x[:3] = torch.tensor([-math.inf, 0.0, -1e-3])
    shift = torch.tensor(-2.0, dtype=dtype)
    got = flushed_exp(x, shift)
    want = torch.exp(x.double() - float(shift))
    tiny, low = torch.finfo(dtype).tiny, {torch.float32: -87.0, torch.float64: -708.0}[dtype]
    normal = want >= 4 * math.exp(low) / torch.finfo(dtype).eps   # where subtracting exp(low) rounds away
    torch.testing.assert_close(got.double()[normal], want[normal], rtol=2 * torch.finfo(dtype).eps, atol=0)
    assert torch.all(got[want < tiny] == 0) and got[0] == 0 and torch.all(got >= 0)
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(flushed_exp(xg, shift).sum(), xg)
    torch.testing.assert_close(grad, got, rtol=0, atol=0)


def test_underflowing_einsum_step_still_falls_back():
    """The trap the contraction guards against: maxima of a summed index at different
    values ([0, -200] against [-200, 0]) leave every product below float32's range;
    the exact value is log(2) - 200, put in entry by entry (here with out dims), and a
    gradient flows to both operands."""
    from engine.contract import Step, logspace_einsum
    from engine.named import Named
    ta = torch.tensor([[0.0, -200.0], [0.0, -1.0]], requires_grad=True)
    tb = torch.tensor([[-200.0, 0.0]], requires_grad=True)
    st = Step((0, 1), (("x", "k"), ("y", "k")), ("k",), ("x", "y"), "ak,bk->ab")
    got = logspace_einsum([Named(ta, ("x", "k")), Named(tb, ("y", "k"))], st)
    want = torch.logsumexp(ta.detach()[:, None, :].double() + tb.detach()[None, :, :].double(), -1)
    torch.testing.assert_close(got.t.double(), want, rtol=0, atol=1e-4)
    ga, gb = torch.autograd.grad(got.t.sum(), (ta, tb))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    torch.testing.assert_close(ga[0], torch.tensor([0.5, 0.5]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("init", [False, True])
def test_chain_of_spread_matrices_is_exact_with_finite_gradients(init):
    """A time series' K x K matrices from particles spread far apart (log densities down to
    -5000, where products of exponentials underflow even in float64): the sum over paths
    must equal the float64 logsumexp recursion, and its gradient (the path posteriors,
    each at most 1) must match that one's, with and without an init K-dim kept."""
    from engine import contract
    from engine.named import Named
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 8, generator=gen, dtype=torch.float64) * 10   # (T + 1, batch, K) particle values
    M = -0.5 * ((x[1:, :, :, None] - x[:-1, :, None, :]) / 0.2) ** 2   # M_t[i, j]: from j at t-1 to i at t
    M = M.float().requires_grad_(True)
    chain = (("K:x", "K:x~prev", "K:x0" if init else None),)
    res = Named(M, ("t", "b", "K:x", "K:x~prev"))
    got = contract.chain_logsumexp(res, chain, "t")
    exact = M.detach().double().requires_grad_(True)
    a = exact[0] if init else exact[0][..., :1]                        # (b, i, init or 1)
    for t in range(1, exact.shape[0]):
        a = torch.logsumexp(exact[t][:, :, :, None] + a[:, None, :, :], 2)
    want = torch.logsumexp(a, 1) if init else torch.logsumexp(a[..., 0], 1)
    assert float(M.detach().min()) < -5000 and got.dims == (("b", "K:x0") if init else ("b",))
    torch.testing.assert_close(got.t.double(), want, rtol=1e-6, atol=1e-3)
    w = torch.rand(want.shape, generator=gen, dtype=torch.float64)
    g, = torch.autograd.grad((got.t * w).sum(), M)
    ref, = torch.autograd.grad((want * w).sum(), exact)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g.double(), ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("values,scale,dead", [
    (2, 1.0, False), (2, 300.0, False),    # two values: the softplus form, then with terms past exp's range
    (2, 3.0, True), (3, 60.0, True),       # -inf terms (a value ruled out; a slice with no value), three values
])
@pytest.mark.parametrize("block", [1 << 18, 5])   # one block, many (partial ones at the ends)
def test_a_step_summed_over_its_plate_as_it_goes_is_exact(monkeypatch, values, scale, dead, block):
    """A short summed dim (an enumerated latent's values) whose step is used only summed
    over its plate: log_matmul's plate sum, in blocks, against the step held whole and
    summed, values and gradients, in float64; -inf where every term is -inf, gradient 0 there."""
    from engine import contract
    from engine.named import Named
    monkeypatch.setattr(contract._LogMatmul, "BLOCK", block)
    sizes = {"a": 3, "b": 4, "c": 2, "z": values, "sp": 3, "site": 7}
    da, db, out = ("a", "z", "sp", "site"), ("b", "c", "z", "sp", "site"), ("a", "b", "c", "sp", "site")
    gen = torch.Generator().manual_seed(1)
    ta = torch.randn([sizes[d] for d in da], generator=gen, dtype=torch.float64) * scale
    tb = torch.randn([sizes[d] for d in db], generator=gen, dtype=torch.float64) * scale
    if dead:
        tb[0, 0, 0] = -math.inf               # one value ruled out for some particles
        tb[1, 1, :, 0] = -math.inf            # every value: that entry's sum is -inf
    ta.requires_grad_(), tb.requires_grad_()
    layout = contract.summed_step_layout((da, db), ("z",), out, "site", sizes)
    step = contract.Step((0, 1), (da, db), ("z",), out, "azpq,bczpq->abcpq", layout)
    ins = [Named(ta, da), Named(tb, db)]
    got = contract.logspace_einsum(ins, step).plate_sum("site")
    want = torch.logsumexp(ta[:, None, None] + tb[None], 3).sum(-1)   # (a, b, c, z, sp, site) -> (a, b, c, sp)
    assert got.shape == want.shape and torch.equal(torch.isinf(got), torch.isinf(want))
    fin = torch.isfinite(want)
    assert bool((~fin).any()) == dead
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-12, atol=1e-10)
    w = torch.rand(want.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((got.masked_fill(~fin, 0) * w).sum(), (ta, tb))
    terms = (ta[:, None, None] + tb[None]).detach()
    soft = torch.nan_to_num(torch.softmax(terms, 3)) * w.masked_fill(~fin, 0)[:, :, :, None, :, None]
    for x, y in zip(grads, (soft.sum((1, 2)), soft.sum(0))):   # softmax over the values, 0 on a slice with none
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_allocator_is_tuned_when_the_first_program_is_built(monkeypatch):
    """From Python, as from kn: the first Program applies engine.alloc.tune_allocator."""
    monkeypatch.setattr(alloc, "_done", False)
    calls = []
    real = alloc.tune_allocator

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)
    import engine.program
    monkeypatch.setattr(engine.program, "tune_allocator", spy)
    m = Model("one")
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("x", "observed", "Normal", {"loc": "mu", "scale": 1})
    m.set_data("x", 0.5)
    m.compile(K=3, device="cpu")
    assert calls and (alloc._done or not alloc.sys.platform.startswith("linux"))


@pytest.mark.parametrize("case", [
    # (dims of a, dims of b, summed, out): the occupancy site step, a chain with two plates, a scalar-free one
    (("b", "c", "d", "p", "q"), ("a", "d", "p", "q"), ("d",), ("a", "b", "c", "p", "q")),
    (("c", "d", "b", "q"), ("d", "a", "q"), ("d",), ("b", "a", "c", "q")),
    (("d", "e", "a", "q"), ("e", "d", "q"), ("d", "e"), ("a", "q")),
    # a two-valued (enumerated) index summed: multiply-adds instead of a matrix product
    (("b", "d", "c", "p", "q"), ("a", "c", "p", "q"), ("c",), ("a", "b", "d", "p", "q")),
])
@pytest.mark.parametrize("chunk", [None, 5])   # the plate in one chunk, or in many (a partial one at the end)
def test_plate_einsum_is_einsum(monkeypatch, case, chunk):
    """The batched matmul over innermost plates gives torch.einsum's values and gradients."""
    from engine import contract
    from engine.contract import _plate_einsum
    if chunk:
        monkeypatch.setattr(contract._PlateBmm, "_chunk", staticmethod(lambda *blocks: chunk))
    da, db, removed, out = case
    size = {"a": 3, "b": 4, "c": 2, "d": 5, "e": 3, "p": 7, "q": 11}
    g = torch.Generator().manual_seed(5)
    a = torch.rand([size[d] for d in da], generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand([size[d] for d in db], generator=g, dtype=torch.float64, requires_grad=True)
    got = _plate_einsum([a, b], [da, db], removed, out, min_batch=1)
    letter = {d: chr(97 + i) for i, d in enumerate(size)}
    eq = "".join(letter[d] for d in da) + "," + "".join(letter[d] for d in db) + "->" + "".join(letter[d] for d in out)
    want = torch.einsum(eq, a, b)
    torch.testing.assert_close(got, want)
    w = torch.rand(want.shape, generator=g, dtype=torch.float64)
    for x, y in zip(torch.autograd.grad((got * w).sum(), (a, b)), torch.autograd.grad((want * w).sum(), (a, b))):
        torch.testing.assert_close(x, y)
