"""The model format, the expression language, bad input and the contraction's numerics."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import betaln

from engine import Model, ModelError
from engine.contract import Step, logspace_einsum
from engine.named import Named

ROOT = Path(__file__).resolve().parent.parent
RADON_DOC = {
    "format": "kn-model/1", "name": "radon",
    "plates": [{"name": "counties", "size": 2}, {"name": "houses", "size": 2, "in": "counties"}],
    "nodes": [
        {"name": "g0", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 10}},
        {"name": "g1", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 10}},
        {"name": "b", "kind": "latent", "dist": "Normal", "args": {"loc": 0, "scale": 10}},
        {"name": "sigma_a", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 1}},
        {"name": "sigma_y", "kind": "latent", "dist": "HalfNormal", "args": {"scale": 1}},
        {"name": "a", "kind": "latent", "dist": "Normal", "args": {"loc": "g0 + g1 * log_u", "scale": "sigma_a"},
         "plate": "counties"},
        {"name": "y", "kind": "observed", "dist": "Normal", "args": {"loc": "a + b * basement", "scale": "sigma_y"},
         "plate": "houses"}],
    "data": {"y": [[1.2, None], [0.4, 0.9]], "basement": [[0, 1], [1, 0]], "log_u": [0.1, -0.3]}}


def doc(**changes):
    d = json.loads(json.dumps(RADON_DOC))
    d.update(changes)
    return d


def test_issue_document_loads_and_round_trips(tmp_path):
    m = Model.from_dict(RADON_DOC)
    assert m.latents == ["g0", "g1", "b", "sigma_a", "sigma_y", "a"] and m.observed == ["y"]
    assert set(m.graph.predecessors("y")) == {"a", "b", "sigma_y"}
    assert m.chain("houses") == ("counties", "houses")
    again = Model.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.to_dict() == m.to_dict()
    assert m.to_dict()["data"]["y"] == [[1.2, None], [0.4, 0.9]]
    path = tmp_path / "m.json"
    m.save(path)
    assert Model.load(path).to_dict() == m.to_dict()
    s = m.sample(K=5, seed=0)
    assert s.marginal_weights("a").shape == (5, 2)
    assert torch.allclose(s.marginal_weights("a").sum(0), torch.ones(2, dtype=torch.float64))


def test_missing_values_are_masked():
    """A null observation contributes nothing: same estimate as a model without it."""
    a = Model.from_dict(RADON_DOC).sample(K=5, seed=4, dtype="float64").log_marginal()
    d = doc()
    d["data"]["y"] = [[1.2, float("nan")], [0.4, 0.9]]   # NaN in an array is the same as null
    b = Model.from_dict(d).sample(K=5, seed=4, dtype="float64").log_marginal()
    assert a == pytest.approx(b)
    # and removing the masked house changes nothing either
    one = Model("one").add_plate("h", 1)
    two = Model("two").add_plate("h", 2)
    for mm, y in ((one, [0.5]), (two, [0.5, None])):
        mm.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
        mm.add_node("y", "observed", "Normal", {"loc": "mu", "scale": 1}, plate="h")
        mm.set_data("y", y)
    assert one.sample(K=7, seed=1).log_marginal() == pytest.approx(two.sample(K=7, seed=1).log_marginal(), abs=1e-5)


def test_data_file_npz(tmp_path):
    np.savez(tmp_path / "d.npz", basement=np.array([[0, 1], [1, 0]]), log_u=np.array([0.1, -0.3]))
    d = doc(data_file="d.npz")
    d["data"] = {"y": RADON_DOC["data"]["y"]}
    (tmp_path / "m.json").write_text(json.dumps(d))
    m = Model.load(tmp_path / "m.json")
    assert m.data["log_u"].tolist() == [0.1, -0.3]
    m.sample(K=3)


def test_expressions_vector_index_and_reductions():
    m = Model("mix").add_plate("n", 4)
    m.add_node("w", "latent", "Dirichlet", {"concentration": [1.0, 1.0, 1.0]})
    m.add_node("mus", "latent", "Normal", {"loc": 0, "scale": 3}, shape=[3])
    m.add_node("c", "latent", "Categorical", {"probs": "w"}, plate="n")
    m.add_node("x", "observed", "Normal", {"loc": "mus[c] + 0 * sum(w, -1)", "scale": 1}, plate="n")
    m.add_node("v", "latent", "Normal", {"loc": 0, "scale": 1}, shape=[2])
    m.add_node("u", "observed", "Normal", {"loc": "v @ feats + mus[idx]", "scale": 1}, plate="n")
    m.set_data("x", [0.0, 1.0, 5.0, -2.0])
    m.set_data("feats", np.ones((4, 2)))
    m.set_data("idx", [0, 1, 2, 0])
    m.set_data("u", [1.0, 2.0, 3.0, 4.0])
    s = m.sample(K=6, seed=0)
    assert s.mean("mus").shape == (3,) and s.mean("c").shape == (4,) and s.mean("w").shape == (3,)
    assert np.isfinite(s.log_marginal())


def test_discrete_latents_sample_like_any_other():
    m = Model("occupancy").add_plate("sites", 5).add_plate("visits", 3, "sites")
    m.add_node("psi", "latent", "Beta", {"concentration1": 1, "concentration0": 1})
    m.add_node("z", "latent", "Bernoulli", {"probs": "psi"}, plate="sites")
    m.add_node("y", "observed", "Bernoulli", {"probs": "0.6 * z"}, plate="visits")
    m.set_data("y", [[1, 0, 1], [0, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1]])
    s = m.sample(K=20, seed=0)
    mean_z = s.mean("z").numpy()
    assert np.allclose(mean_z[[0, 2, 4]], 1.0, atol=1e-5)   # detected sites are occupied for certain
    # undetected sites 1 and 3, by enumeration with psi integrated out (Beta-Bernoulli):
    # P(z1, z3 | y) ~ B(4 + z1 + z3, 3 - z1 - z3) 0.4^(3 (z1 + z3))
    w = {(a, b): math.exp(betaln(4 + a + b, 3 - a - b)) * 0.4 ** (3 * (a + b)) for a in (0, 1) for b in (0, 1)}
    p = (w[1, 0] + w[1, 1]) / sum(w.values())
    ess = s.ess("z").numpy()[[1, 3]]
    assert np.all(np.abs(mean_z[[1, 3]] - p) < 4 * np.sqrt(p * (1 - p) / ess)), (mean_z, p, ess)


@pytest.mark.parametrize("change,needle", [
    (lambda d: d["nodes"][0]["args"].update(loc="a"), "cycle"),
    (lambda d: d["nodes"].append({"name": "q", "kind": "latent", "dist": "Normal", "args": {"loc": "y", "scale": 1}}),
     "not inside parent 'y'"),
    (lambda d: d["plates"].append({"name": "films", "size": 2}) or d["nodes"][6].update(plate="films"),
     "never cross"),
    (lambda d: d["nodes"][0].update(dist="Nromal"), "unknown distribution 'Nromal'"),
    (lambda d: d["nodes"][0]["args"].update(mean=1), "Normal has no argument 'mean'"),
    (lambda d: d["nodes"][0]["args"].pop("scale"), "needs argument 'scale'"),
    (lambda d: d["nodes"][5]["args"].update(loc="g0 + nothing"), "'nothing' names no node or data"),
    (lambda d: d["nodes"][5]["args"].update(loc="g0.real"), "Attribute"),
    (lambda d: d["nodes"][5]["args"].update(loc="__import__('os')"), "function '__import__'"),
    (lambda d: d["nodes"][5]["args"].update(loc="(lambda: 1)()"), "calling something other than"),
    (lambda d: d["nodes"][5]["args"].update(loc="[x for x in g0]"), "ListComp"),
    (lambda d: d["nodes"][5]["args"].update(loc="open('f')"), "function 'open'"),
    (lambda d: d["nodes"][5]["args"].update(loc="g0 +"), "cannot parse"),
    (lambda d: d["data"].update(y=[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), "data 'y' has shape (3, 3)"),
    (lambda d: d["plates"][0].update(size=0), "plate 'counties': size must be a positive integer"),
    (lambda d: d["plates"][1].update({"in": "nowhere"}), "plate 'houses'"),
    (lambda d: d["nodes"][6].update(plate="streets"), "plate 'streets' does not exist"),
    (lambda d: d.update(format="kn-model/0"), "field 'format'"),
    (lambda d: d["nodes"][0].update(kind="hidden"), "kind must be"),
    (lambda d: d["data"].update(log_u=[0.1, None]), "data 'log_u' has a missing value"),
])
def test_bad_models_get_one_clear_error(change, needle):
    d = doc()
    change(d)
    with pytest.raises(ModelError, match=None) as e:
        Model.from_dict(d).sample(K=2)
    assert needle in str(e.value), str(e.value)


def test_bad_requests():
    m = Model.from_dict(RADON_DOC)
    for K in (0, -3, 2.5, True):
        with pytest.raises(ModelError, match="K must be a positive integer"):
            m.sample(K=K)
    with pytest.raises(ModelError, match="dtype"):
        m.sample(K=2, dtype="float16")
    with pytest.raises(ModelError, match="'zz' is not a latent"):
        m.sample(K=2).mean("zz")


def test_observed_value_outside_support_names_node_and_index():
    m = Model("counts").add_plate("n", 3)
    m.add_node("rate", "latent", "Gamma", {"concentration": 2, "rate": 1})
    m.add_node("y", "observed", "Poisson", {"rate": "rate"}, plate="n")
    m.set_data("y", [1, 2.5, 3])
    with pytest.raises(ModelError, match=r"observed node 'y': value 2.5 at index \[1\] is outside the support of Poisson"):
        m.sample(K=3)
    m.set_data("y", [1, -1, 3])
    with pytest.raises(ModelError, match=r"index \[1\]"):
        m.sample(K=3)


def test_edits_that_fail_leave_the_model_unchanged():
    m = Model.from_dict(RADON_DOC)
    before = m.to_dict()
    with pytest.raises(ModelError, match="cycle"):
        m.update_node("g0", args={"loc": "a", "scale": 1})
    with pytest.raises(ModelError, match="unknown distribution"):
        m.update_node("g0", dist="Gaussian")
    assert m.to_dict() == before
    with pytest.raises(ModelError, match="used by"):
        m.remove_node("a")


def test_nodes_may_be_added_before_what_they_mention():
    m = Model("later")
    m.add_node("x", "observed", "Normal", {"loc": "mu", "scale": 1})
    m.add_node("mu", "latent", "Normal", {"loc": 0, "scale": 1})
    m.set_data("x", 0.5)
    assert list(m.graph.edges) == [("mu", "x")]
    assert m.latents == ["mu"]


def test_logspace_einsum_survives_maxima_at_different_indices():
    """log values [0, -200] and [-200, 0] summed over their shared index: -199.3, not -inf."""
    def step(ins, removed, out_dims, eq):
        return Step(tuple(range(len(ins))), tuple(x.dims for x in ins), removed, out_dims, eq)
    dot = lambda ins: logspace_einsum(ins, step(ins, ("k",), (), "a,a->"))
    a = Named(torch.tensor([0.0, -200.0]), ("k",))
    b = Named(torch.tensor([-200.0, 0.0]), ("k",))
    out = dot([a, b])
    assert torch.isfinite(out.t) and float(out.t) == pytest.approx(-200 + math.log(2), abs=1e-4)
    c = Named(torch.tensor([0.0, -2000.0]), ("k",))   # beyond float64: the exact fallback
    d = Named(torch.tensor([-2000.0, 0.0]), ("k",))
    assert float(dot([c, d]).t) == pytest.approx(-2000 + math.log(2), abs=1e-3)
    e = Named(torch.tensor([0.0, -math.inf]), ("k",))   # a genuine zero stays zero
    f = Named(torch.tensor([-math.inf, 0.0]), ("k",))
    assert float(dot([e, f]).t) == -math.inf
    # the same in a chain step 'ik,kj->ij' (no operand holds every index: an einsum of
    # shifted exponentials, redone in float64, then exactly for what still underflows)
    for gap, tol in ((200.0, 1e-4), (2000.0, 1e-3), (math.inf, 0)):
        a = Named(torch.tensor([[0.0, -gap], [0.0, 0.0]]), ("i", "k"))
        b = Named(torch.tensor([[-gap], [0.0]]), ("k", "j"))
        out = logspace_einsum([a, b], step([a, b], ("k",), ("i", "j"), "ik,kj->ij")).t
        assert out.dtype == torch.float32 and out.shape == (2, 1)
        assert float(out[1, 0]) == pytest.approx(math.log(1 + math.exp(-gap)), abs=1e-6)
        assert float(out[0, 0]) == (-math.inf if gap == math.inf else pytest.approx(-gap + math.log(2), abs=tol))


def test_einsum_plans_are_cached_and_described():
    m = Model.from_dict(RADON_DOC)
    p1, p2 = m.compile(K=4), m.compile(K=4)
    c1 = p1.plan.levels[1].components[0]
    c2 = p2.plan.levels[1].components[0]
    assert c1.info is c2.info        # planned once per (equation, shapes)
    desc = m.sample(K=4).einsum_path()
    glob = [d for d in desc if d["plate"] == "(global)"][0]
    assert glob["optimized_flops"] <= glob["naive_flops"]
    assert set(glob["sums_out"]) == {"K:g0", "K:g1", "K:b", "K:sigma_a", "K:sigma_y"}


def test_groups_share_a_k_dim():
    d = doc()
    for n in d["nodes"][:3]:
        n["group"] = "coef"
    m = Model.from_dict(d)
    p = m.compile(K=4)
    assert p.kdim["g0"] == p.kdim["g1"] == p.kdim["b"] == "K:coef"
    assert np.isfinite(m.sample(K=4).log_marginal())
    d["nodes"][5]["group"] = "coef"
    with pytest.raises(ModelError, match="group 'coef' mixes plates"):
        Model.from_dict(d)


def test_cli_info_and_fit(tmp_path):
    kn = [sys.executable, "-m", "engine.cli"]
    model = str(ROOT / "assets/models/hierarchical_gaussian.json")
    out = subprocess.run(kn + ["info", model, "--K", "30"], capture_output=True, text=True, check=True).stdout
    assert "plates:" in out and "einsum plan at K=30" in out and "estimated peak memory" in out
    res = tmp_path / "r.json"
    subprocess.run(kn + ["fit", model, "--method", "is", "--K", "30", "--seed", "0", "--out", str(res)],
                   check=True, capture_output=True)
    r = json.loads(res.read_text())
    assert r["format"] == "kn-result/1" and math.isfinite(r["log_marginal"])
    assert len(r["latents"]["z"]["mean"]) == 10 and len(r["latents"]["z"]["ess"]) == 10
    assert isinstance(r["latents"]["mu"]["sd"], float)
    bad = subprocess.run(kn + ["fit", str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no model file" in bad.stderr and "Traceback" not in bad.stderr


def test_split_runs_give_identical_results_and_impossible_ones_are_refused():
    """A memory budget below the plan's estimate splits a plate into chunks (computed
    under checkpointing); estimates, weights and gradients do not change, with the prior
    as proposal or with Q (whose parameters are sliced per chunk)."""
    m = Model.load(ROOT / "assets/models/radon.json")
    for proposal in ("q", "prior"):
        whole = m.compile(K=4, dtype="float64", proposal=proposal)
        split = m.compile(K=4, dtype="float64", proposal=whole.proposal if proposal == "q" else "prior",
                          memory_budget=whole.memory_estimate() // 3)
        assert whole.split is None and split.split is not None
        params = whole.proposal.parameters()   # Q's (none for the prior), shared by both programs
        for p in params:
            p.requires_grad_()
        a, b = whole.sample(5, reparam=bool(params)), split.sample(5, reparam=bool(params))
        assert a.log_marginal() == pytest.approx(b.log_marginal(), rel=1e-12)
        for name in m.latents:
            assert torch.allclose(a.marginal_weights(name), b.marginal_weights(name), atol=1e-10)
        for ga, gb in zip(a.gradients(params), b.gradients(params)):   # MP VI's, through chunks and Q's slices
            assert torch.allclose(ga, gb, atol=1e-9)
    draws = b.posterior_samples(2000, seed=0)["a"]
    assert draws.shape == (2000, 85)
    assert torch.all((draws.mean(0) - b.mean("a")).abs() < 5 * b.sd("a") / math.sqrt(2000) + 1e-6)
    with pytest.raises(ModelError, match=r"needs about .* but the memory budget is .*Remedies: a smaller K"):
        m.compile(K=4, memory_budget=1000)


def test_plate_editing_and_free_form_fields_round_trip():
    d = doc(layout={"g0": [10, 20]}, exact={"g0": {"dist": "Normal", "args": {"loc": 0, "scale": 1}}})
    m = Model.from_dict(d)
    assert m.to_dict()["layout"] == {"g0": [10, 20]} and "exact" in m.to_dict()
    m.resize_plate("houses", 3)
    with pytest.raises(ModelError, match=r"data 'y' has shape \(2, 2\)"):
        m.validate()
    with pytest.raises(ModelError, match="still holds"):
        m.remove_plate("counties")
    empty = Model.from_dict({"format": "kn-model/1", "name": "new"})
    assert empty.latents == []
    with pytest.raises(ModelError, match="no nodes"):
        empty.sample(K=2)


def test_matmul_semantics_with_named_batch_dims():
    from engine.expr import Env, Expr
    rank = {"K:a": 0, "K:b": 1, "users": 2}
    a = Named(torch.randn(3, 4, 5), ("K:a", "users"))          # a vector per particle and user
    M = Named(torch.randn(4, 5, 2), ("users",))                # a matrix per user
    b = Named(torch.randn(6, 5), ("K:b",))
    env = Env({"a": a, "M": M, "b": b}, rank, "cpu", torch.float32)
    dot = Expr("a @ b", "test")(env)
    assert dot.dims == ("K:a", "K:b", "users")
    assert torch.allclose(dot.t, torch.einsum("kui,ji->kju", a.t, b.t), atol=1e-5)
    vm = Expr("a @ M", "test")(env)
    assert torch.allclose(vm.t, torch.einsum("kui,uij->kuj", a.t, M.t), atol=1e-5)
    env.values["X"] = Named(torch.tensor([[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]]), ())   # integer data
    ix = Expr("X @ b", "test")(env)
    assert torch.allclose(ix.t, b.t @ env.values["X"].t.float().T, atol=1e-5)
    mv = Expr("sum(M, 1) @ sum(M, 1)", "test")(env)
    assert torch.allclose(mv.t, (M.t.sum(2) ** 2).sum(-1), atol=1e-4)   # axis 1 of the event (5, 2)


def test_index_data_out_of_range_is_an_error():
    m = Model("idx").add_plate("n", 3)
    m.add_node("alpha", "latent", "Normal", {"loc": 0, "scale": 1}, shape=[2])
    m.add_node("y", "observed", "Normal", {"loc": "alpha[group]", "scale": 1}, plate="n")
    m.set_data("y", [0.1, 0.2, 0.3])
    m.set_data("group", [0, 1, 1])
    assert np.isfinite(m.sample(K=4).log_marginal())
    m.set_data("group", [0, 2, 1])
    with pytest.raises(ModelError, match=r"node 'y', argument 'loc': index data in 'alpha\[group\]' must lie in 0..1"):
        m.sample(K=4)


def test_particles_of_zero_probability_get_weight_zero_not_nan():
    """theta ~ U(0, 2), z_g ~ U(0, theta) with a Beta Q for z: a theta particle below every z
    particle of a group makes that group's whole slice -inf. log P_MP and the weights must be
    the exact ones (brute force over the factors), and the dead particles' weight exactly 0:
    torch's own logsumexp backward gives NaN for such a slice."""
    m = Model.from_dict({
        "format": "kn-model/1", "name": "dead", "plates": [{"name": "g", "size": 3}],
        "nodes": [{"name": "theta", "kind": "latent", "dist": "Uniform", "args": {"low": 0, "high": 2}},
                  {"name": "z", "kind": "latent", "dist": "Uniform", "args": {"low": 0, "high": "theta"},
                   "plate": "g"},
                  {"name": "x", "kind": "observed", "dist": "Normal", "args": {"loc": "z", "scale": 0.5},
                   "plate": "g"}],
        "data": {"x": [0.3, 0.5, 0.9]}, "proposal": {"z": {"dist": "Beta"}}})
    for dtype in ("float64", "float32"):
        s = m.sample(K=6, seed=17, dtype=dtype, proposal="q")
        f = {k: v.t.detach().double() for k, v in s.factors.items()}   # (K:theta), (K:theta, K:z, g), (K:z, g)
        inner = torch.logsumexp(f["z"] + f["x"][None], 1) - math.log(6)
        joint = f["theta"] + inner.sum(-1)
        dead = torch.isneginf(joint)
        assert 1 <= int(dead.sum()) < 6   # the case under test: some particles dead, not all
        assert s.log_marginal() == pytest.approx(float(torch.logsumexp(joint, 0) - math.log(6)), abs=1e-5)
        w = s.marginal_weights("theta").double()
        assert torch.isfinite(w).all() and torch.all(w[dead] == 0)
        torch.testing.assert_close(w, torch.softmax(joint, 0), atol=1e-5, rtol=1e-5)
        assert torch.isfinite(s.marginal_weights("z")).all()


def test_vector_normal_over_three_k_dims_matches_the_direct_log_density():
    """z_u ~ N(mu, exp(psi)) with mu, psi and z on three K-dims: the factor is computed by
    the expanded square (never broadcasting all three times the event size) and must
    equal torch's Normal log-density summed over the 5 event entries, to float32 rounding;
    so must its gradient."""
    m = Model("vector")
    m.add_plate("users", 7)
    m.add_node("mu", "latent", "Normal", {"loc": 0.0, "scale": 3.0}, shape=[5])
    m.add_node("psi", "latent", "Normal", {"loc": 0.0, "scale": 1.0}, shape=[5])
    m.add_node("z", "latent", "Normal", {"loc": "mu", "scale": "exp(psi)"}, plate="users", shape=[5])
    m.add_node("y", "observed", "Normal", {"loc": "sum(z)", "scale": 1.0}, plate="users")
    m.set_data("y", np.linspace(-2, 2, 7).astype(np.float32))
    prog = m.compile(K=4, device="cpu")
    assert prog._expanded == {"mu": False, "psi": False, "z": True, "y": False}
    values = prog._draw(3, reparam=False)
    values["mu"] = Named(values["mu"].t.requires_grad_(), values["mu"].dims)
    lp = prog._log_prob(prog.model.node("z"), values)
    assert lp.dims == ("K:mu", "K:psi", "K:z", "users")
    mu, psi, z = (values[n].t.double() for n in ("mu", "psi", "z"))
    direct = torch.distributions.Normal(mu[:, None, None, None], psi.exp()[None, :, None, None]) \
        .log_prob(z[None, None]).sum(-1)
    torch.testing.assert_close(lp.t.double(), direct, atol=1e-4, rtol=1e-5)
    g = torch.autograd.grad(lp.t.sum(), values["mu"].t)[0].double()
    torch.testing.assert_close(g, torch.autograd.grad(direct.sum(), values["mu"].t)[0].double(), atol=1e-3, rtol=1e-4)
    # far from the origin, in float64: the expanded square is centred, so nothing cancels
    from engine.dists import _expanded_square
    gen = torch.Generator().manual_seed(0)
    loc = 1e8 + torch.randn(3, 1, 4, generator=gen, dtype=torch.float64)        # (K:mu, K:z, event)
    value = 1e8 + torch.randn(1, 5, 4, generator=gen, dtype=torch.float64)
    scale = 1e-3 * torch.rand(3, 1, 4, generator=gen, dtype=torch.float64) + 1e-3
    exact = torch.distributions.Normal(loc, scale).log_prob(value).sum(-1)
    torch.testing.assert_close(_expanded_square(value, loc, scale, 1, None), exact, rtol=1e-9, atol=1e-6)
