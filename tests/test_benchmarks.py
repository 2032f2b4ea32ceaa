"""Smoke test of the benchmarks at toy sizes: every benchmark runs and reports; no timing
is asserted (the figures at these sizes mean nothing). What is asserted is what makes a
comparison fair: the hand-written torch MP estimator and the engine's agree on the very
same particles."""
import json
import math

import pytest
import torch

from benchmarks import __main__ as cli
from benchmarks.common import loglog_slope, to_markdown
from benchmarks.handwritten import HandQEM, HandVI, engine_agreement, engine_q, mp_weights
from benchmarks.models import hierarchical_gaussian, movielens_like, radon_like
from benchmarks.suite import BENCHMARKS, Config


@pytest.fixture(scope="module")
def toy():
    return Config.make(torch.device("cpu"), toy=True, threads=1)


def test_models_build_and_fit_one_step():
    from engine.fit import Fitter
    for m in (hierarchical_gaussian(3, 2), radon_like(2, 2), radon_like(2, 2, grouped=True), movielens_like(3, 2, 4)):
        f = Fitter(m, "qem", K=3, device="cpu")
        assert math.isfinite(f.step().elbo)


def test_grouped_radon_like_shares_one_k_dim():
    from engine.program import Program
    ungrouped = Program(radon_like(2, 2), 3, device="cpu")
    grouped = Program(radon_like(2, 2, grouped=True), 3, device="cpu")
    assert len(ungrouped.factor_dims["y"]) == 4 + 2
    assert len(grouped.factor_dims["y"]) == 1 + 2


def test_handwritten_matches_engine_on_the_same_particles():
    from engine.fit import Fitter
    f = Fitter(hierarchical_gaussian(5, 3), "qem", K=4, device="cpu", dtype="float64")
    a = engine_agreement(f)
    assert a["abs_diff"] < 1e-8 * max(1.0, abs(a["engine"]))


def test_handwritten_weights_match_engine():
    from engine.fit import Fitter
    f = Fitter(hierarchical_gaussian(5, 3), "qem", K=4, device="cpu", dtype="float64")
    s = f.program.sample(7)
    x = f.program._observed["x"][0].t
    mu, z = s.values["mu"].t.detach(), s.values["z"].t.detach()
    _, w_mu, w_z = mp_weights(x, mu, z, engine_q(f.program))
    assert torch.allclose(w_mu, s.marginal_weights("mu"), atol=1e-10)
    assert torch.allclose(w_z, s.marginal_weights("z"), atol=1e-10)


def test_handwritten_loops_step():
    from engine.fit import Fitter
    f = Fitter(hierarchical_gaussian(4, 3), "qem", K=3, device="cpu")
    x = f.program._observed["x"][0].t
    for cls in (HandQEM, HandVI):
        h = cls(x, 3, engine_q(f.program))
        elbo, ess = h.step()
        elbo2, _ = h.step()
        assert math.isfinite(elbo) and math.isfinite(elbo2)
        assert set(ess) == {"mu", "z"} and ess["z"].shape == (4,)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_runs_at_toy_size(toy, name):
    sec = BENCHMARKS[name](toy)
    assert sec["title"]
    if sec.get("skipped"):   # only Pyro may be missing
        assert name == "pyro" and "pyro" in sec["skipped"]
        return
    assert sec["rows"]
    for row in sec["rows"]:
        assert "error" not in row, row
    keys = {c[0] for c in sec["columns"]}
    assert any(k in keys for k in ("ms", "engine_ms"))
    md = to_markdown({"command": "test", "machine": {"date": "today", "cpu": "x"}, "sections": [sec]})
    assert sec["title"] in md and "|---|" in md


def test_cli_writes_json_and_markdown(tmp_path):
    assert cli.main(["--toy", "--only", "handwritten,examples", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert [s["name"] for s in doc["sections"]] == ["handwritten", "examples"]
    for k in ("cpu", "logical_cores", "torch", "date"):
        assert k in doc["machine"]
    md = (tmp_path / "latest.md").read_text()
    assert "| cpu |" in md and "engine / hand" in md


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real run is not a smoke test")
def test_cuda_missing_is_skipped_gracefully(tmp_path):
    assert cli.main(["--device", "cuda", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["sections"] and all("not available" in s["skipped"] for s in doc["sections"])


def test_loglog_slope():
    assert abs(loglog_slope([10, 100, 1000], [1, 10, 100]) - 1) < 1e-12
    assert abs(loglog_slope([10, 100, 1000], [5, 5, 5])) < 1e-12


@pytest.mark.parametrize("name", ["bus_breakdown", "radon"])
def test_pyro_tmc_is_the_engines_estimator_on_the_paper_models(name):
    """Pyro's TraceTMC_ELBO with the engine's starting Q as its guide estimates log P(data)
    as the engine's log P_MP does: their means over independent draws agree within
    4.5 standard errors (toy sizes, fixed seeds)."""
    from benchmarks.pyro_tmc import available
    if not available()[0]:
        pytest.skip("pyro-ppl is not installed (the bench extra)")
    from benchmarks import pyro_paper
    from engine.fit import Fitter
    torch.manual_seed(0)
    kw = Config.make(torch.device("cpu"), toy=True).paper_sizes[name]
    f = Fitter(pyro_paper.engine_model(name, **kw), "vi", K=3, seed=0, device="cpu")
    p = pyro_paper.PyroTMC(name, f, 3, seed=0, **kw)
    n = 300
    with torch.no_grad():
        pl = torch.tensor([float(p.log_p()) for _ in range(n)], dtype=torch.float64)
        el = torch.tensor([f.program.sample(1000 + i).log_marginal() for i in range(n)], dtype=torch.float64)
    se = math.sqrt((pl.var() + el.var()) / n)
    assert abs(float(el.mean() - pl.mean())) < 4.5 * se
