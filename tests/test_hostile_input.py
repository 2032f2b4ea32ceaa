"""Hostile and careless input: every bad value gets one ModelError naming the node, plate or
field at fault, reads are bounded and take regular files only, writes are atomic, and
mutated gallery documents either load and run or are refused that way."""
import copy
import errno
import json
import os
import random
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine import Model, ModelError
from engine import cli, safeio
from engine.fit import Fitter
from engine.program import available_memory
from mutations import GALLERY, JUNK, RandomChooser, mutate, outcome   # tests/mutations.py

ROOT = Path(__file__).resolve().parent.parent
HG = GALLERY["hierarchical_gaussian"]


def hg(**changes):
    d = copy.deepcopy(HG)
    d.update(changes)
    return d


def refused(doc, *needles, sample=True, **kw):
    with pytest.raises(ModelError) as e:
        m = Model.from_dict(doc, **kw)
        if sample:
            m.sample(K=3)
    for n in needles:
        assert n in str(e.value), str(e.value)
    return str(e.value)


def node(d, name):
    return next(n for n in d["nodes"] if n["name"] == name)


# ---- the property-based suite ---------------------------------------------------------------------------
class HypothesisChooser(RandomChooser):
    """mutations.mutate's choices from a seed hypothesis draws (spread evenly, where
    hypothesis's own integers lean to the ends of a range), its junk values half from
    hypothesis's strategies (nested JSON of any type, unicode text, huge integers, NaN)."""
    junk_values = st.one_of(
        st.sampled_from(JUNK).map(copy.deepcopy),
        st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(
                         st.sampled_from(["loc", "scale", "param", "name", "size", "in", "dist"]) | st.text(max_size=4),
                         c, max_size=3), max_leaves=6))

    def __init__(self, data):
        super().__init__(random.Random(data.draw(st.integers(0, 2 ** 32 - 1), label="seed")))
        self.data = data

    def junk(self):
        return self.data.draw(self.junk_values) if self.rng.random() < 0.5 else super().junk()


@settings(max_examples=800, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.data())
def test_mutated_gallery_documents_load_and_run_or_name_the_fault(data):
    """Each mutant either loads, samples (and for some, fits two QEM iterations) and
    means what it says, or is refused by a ModelError naming a node, plate, data or field
    of the document: no torch or Python exception, no silent wrong result."""
    name = data.draw(st.sampled_from(sorted(GALLERY)))
    doc, done = mutate(GALLERY[name], HypothesisChooser(data))
    kind, detail = outcome(doc, GALLERY[name], fit=data.draw(st.integers(0, 9)) == 0)
    event(kind)   # pytest --hypothesis-show-statistics: how many loaded, how many were refused
    assert kind in ("ok", "refused"), f"{name}: {'; '.join(done)}: {kind}: {detail}"


# ---- every field type-checked at load ----------------------------------------------------------------------
@pytest.mark.parametrize("change,needles", [
    (lambda d: node(d, "mu")["args"].update(loc={"param": "x"}), ["node 'mu', argument 'loc'", "'x'"]),
    (lambda d: node(d, "mu")["args"].update(loc=["a"]), ["node 'mu', argument 'loc'", "not a number"]),
    (lambda d: node(d, "mu")["args"].update(loc=[1, [2]]), ["node 'mu', argument 'loc'", "ragged"]),
    (lambda d: node(d, "x")["args"].update(loc=[]), ["node 'x', argument 'loc'", "empty list"]),
    (lambda d: node(d, "mu")["args"].update(loc=None), ["node 'mu', argument 'loc'", "got null"]),
    (lambda d: node(d, "mu")["args"].update(loc=float("nan")), ["node 'mu', argument 'loc'", "not finite"]),
    (lambda d: node(d, "mu").update(args=[0, 1]), ["node 'mu'", "args must be an object"]),
    (lambda d: node(d, "mu").update(shape=3), ["node 'mu'", "shape must be a list of positive integers"]),
    (lambda d: node(d, "mu").update(shape="3"), ["node 'mu'", "shape must be"]),
    (lambda d: node(d, "mu").update(shape=[3.5]), ["node 'mu'", "shape must be"]),
    (lambda d: node(d, "mu").update(shape=[0]), ["node 'mu'", "shape must be"]),
    (lambda d: node(d, "mu").update(shape=[-1]), ["node 'mu'", "shape must be"]),
    (lambda d: node(d, "mu").update(plate=["groups"]), ["node 'mu'", "plate must be a plate name"]),
    (lambda d: node(d, "mu").update(kind=["latent"]), ["node 'mu'", "kind must be"]),
    (lambda d: node(d, "mu").update(dist={"Normal": 1}), ["node 'mu'", "dist must be a distribution name"]),
    (lambda d: node(d, "z").update(inn="groups"), ["node 'z'", "unknown field 'inn'"]),
    (lambda d: d["plates"][1].update({"In": "groups"}), ["plate 'obs'", "unknown field 'In'"]),
    (lambda d: d["plates"][1].update({"in": ["groups"]}), ["plate 'obs'", "field 'in'"]),
    (lambda d: d["plates"].append({"name": "groups", "size": 4}), ["plate 'groups' is listed twice"]),
    (lambda d: d["nodes"].append(copy.deepcopy(d["nodes"][0])), ["node 'mu' is listed twice"]),
    (lambda d: d.update(plates={"groups": 10}), ["field 'plates' must be a list"]),
    (lambda d: d.update(nodes={"mu": {}}), ["field 'nodes' must be a list"]),
    (lambda d: d.update(data=[1, 2]), ["field 'data' must be an object"]),
    (lambda d: d.update(name=5), ["field 'name' must be a string"]),
    (lambda d: d["data"].update(x="1.5"), ["data 'x'", "not a number"]),
    (lambda d: d["data"]["x"][3].__setitem__(1, "a"), ["data 'x'", "at index [3, 1]", "not a number"]),
    (lambda d: d["data"]["x"][3].append(0.5), ["data 'x'", "ragged"]),
    (lambda d: d["data"]["x"][3].__setitem__(1, float("inf")), ["data 'x'", "infinite value at index [3, 1]"]),
    (lambda d: d["data"].update(mu=0.5), ["data 'mu'", "latent 'mu' has the same name"]),
    (lambda d: d.update(data_plates="x"), ["field 'data_plates' must be an object"]),
    (lambda d: d.update(data_plates={"x": "groups"}), ["data_plates 'x'", "list of plate names"]),
    (lambda d: d.update(data_plates={"x": [1]}), ["data_plates 'x'", "list of plate names"]),
    (lambda d: d.update(data_plates={"w": ["groups"]}), ["data_plates 'w'", "no data named 'w'"]),
    (lambda d: d.update(proposal={"z": None}), ["proposal for 'z'", "must be \"prior\" or an object"]),
    (lambda d: d.update(proposal={"z": ["Normal"]}), ["proposal for 'z'", "must be \"prior\" or an object"]),
    (lambda d: d.update(proposal={"z": {"dist": "Gaussian"}}), ["proposal for 'z'", "field 'dist'"]),
    (lambda d: d.update(proposal={"z": {"dist": "Normal", "init": {"loc": "0"}}}), ["proposal for 'z', init 'loc'"]),
    (lambda d: d.update(proposal={"z": {"dist": "Normal", "initt": {}}}), ["proposal for 'z'", "unknown field"]),
    (lambda d: d.update(qem={"power": "0.6"}), ["field 'qem'", "'power'"]),
    (lambda d: d.update(qem={"powr": 0.6}), ["field 'qem'", "unknown field 'powr'"]),
    (lambda d: d.update(layout={"mu": [1]}), ["field 'layout'", "'mu'"]),
    (lambda d: d.update(exact=[1]), ["field 'exact' must be an object"]),
    (lambda d: d.update(dtype="float16"), ["field 'dtype' must be \"float32\" or \"float64\""]),
    (lambda d: d.update(dtype=64), ["field 'dtype'"]),
    (lambda d: node(d, "z")["args"].update(loc="pmean(mu, 'obs')"), ["node 'z', argument 'loc'", "'mu' is a latent"]),
    (lambda d: node(d, "z")["args"].update(loc="mu + pmean(mu, 'nope')"), ["node 'z', argument 'loc'",
                                                                          "plate 'nope', which does not exist"]),
    (lambda d: node(d, "z")["args"].update(loc="where(mu, 1)"), ["node 'z', argument 'loc'", "three arguments"]),
    (lambda d: node(d, "z")["args"].update(loc="cumsum(mu)"), ["node 'z', argument 'loc'", "axis -1 is out of range"]),
    (lambda d: node(d, "z")["args"].update(loc="mu in mu"), ["node 'z', argument 'loc'", "comparison In"]),
    (lambda d: node(d, "x").update(shape=[4]), ["data 'x' has shape [] per plate element", "shape [4]"]),
    (lambda d: node(d, "mu").update(dist="HalfStudentT", args={"df": 0, "scale": 1}),
     ["node 'mu', argument 'df'", "HalfStudentT needs df > 0"]),
])
def test_every_field_is_type_checked_at_load(change, needles):
    d = hg()
    change(d)
    refused(d, *needles)


def test_names_that_python_reads_as_other_names_are_refused():
    d = hg()
    node(d, "mu")["name"] = "𝖒𝖚"          # Python's parser reads 𝖒𝖚 in an expression as mu
    refused(d, "'𝖒𝖚' is not in Unicode normal form", "'mu'", sample=False)
    d = hg()
    node(d, "z")["args"]["loc"] = "𝖒𝖚"
    refused(d, "node 'z', argument 'loc'", "not in Unicode normal form", sample=False)
    d = hg()
    d["plates"][0]["name"] = "ｇroups"     # fullwidth g
    refused(d, "plate name", "not in Unicode normal form", sample=False)
    m = Model("ok").add_node("α", "latent", "Normal", {"loc": 0, "scale": 1})   # normalised non-ASCII is fine
    assert m.latents == ["α"]


def test_what_the_readme_and_issue_10_write_is_accepted():
    d = hg(proposal={"z": "prior", "mu": {"dist": "Normal", "init": {"loc": 0, "scale": 1.5}}},
           qem={"power": 0.6, "offset": 2})
    m = Model.from_dict(d)
    assert m.proposal["z"] == {"dist": "prior"}
    assert m.proposal["mu"]["init"] == {"loc": 0, "scale": 1.5}
    assert m.to_dict()["qem"] == {"power": 0.6, "offset": 2}
    assert Model.from_dict(json.loads(json.dumps(m.to_dict()))).to_dict() == m.to_dict()
    f = Fitter(m, "qem", K=3, seed=0)
    assert f.proposal["z"] is None and f.proposal["mu"] is not None
    assert Model.from_dict(hg(proposal=None, data_plates=None, layout=None)).to_dict() == \
        Model.from_dict(HG).to_dict()   # null is the same as absent
    assert Model.from_dict(hg(plates=None, nodes=HG["nodes"][:1], data=None)).latents == ["mu"]


def test_edits_type_check_and_range_check_like_the_loader():
    m = Model.from_dict(hg())
    before = m.to_dict()
    with pytest.raises(ModelError, match=r"node 'x', argument 'scale': Normal needs scale > 0, got -1"):
        m.update_node("x", args={"loc": "z", "scale": -1})
    with pytest.raises(ModelError, match=r"node 'w', argument 'concentration': Dirichlet needs concentration > 0"):
        m.add_node("w", "latent", "Dirichlet", {"concentration": [1.0, -2.0]})
    with pytest.raises(ModelError, match=r"node 'w', argument 'probs': Categorical needs probs to be a vector"):
        m.add_node("w", "latent", "Categorical", {"probs": 0.5})
    with pytest.raises(ModelError, match=r"node 'w', argument 'probs': Bernoulli needs probs in \[0, 1\], got 1.5"):
        m.add_node("w", "latent", "Bernoulli", {"probs": 1.5})
    with pytest.raises(ModelError, match=r"node 'w', argument 'covariance_matrix': .*positive-definite"):
        m.add_node("w", "latent", "MultivariateNormal", {"loc": [0, 0], "covariance_matrix": [[1, 2], [2, 1]]})
    with pytest.raises(ModelError, match=r"node 'w', argument 'scale', initial value: .*> 0"):
        m.add_node("w", "latent", "Normal", {"loc": 0, "scale": {"param": -1.0}})
    with pytest.raises(ModelError, match="node 'mu': shape must be"):
        m.update_node("mu", shape=3)
    with pytest.raises(ModelError, match="node 'mu': no field 'colour'"):
        m.update_node("mu", colour="red")
    assert m.to_dict() == before


# ---- argument ranges at run time --------------------------------------------------------------------------------
def test_an_argument_computed_out_of_range_names_its_own_node():
    m = Model("neg").add_plate("n", 4)
    m.add_node("m", "latent", "Normal", {"loc": -5, "scale": 0.1})
    m.add_node("g", "latent", "Gamma", {"concentration": "m", "rate": 1})
    m.add_node("y", "observed", "Poisson", {"rate": "g"}, plate="n")
    m.set_data("y", [1, 2, 0, 3])
    with pytest.raises(ModelError, match=r"node 'g', argument 'concentration': Gamma needs concentration > 0, "
                                         r"got -5.* \(from 'm'\)"):
        m.sample(K=3)
    # the same on later samples of one program, where only some particles go out of range
    m.update_node("m", args={"loc": 3, "scale": 1})
    p, errors = m.compile(K=10), []
    for seed in range(300):
        try:
            p.sample(seed)
        except ModelError as e:
            errors.append(str(e))
    assert 0 < len(errors) < 300 and all("node 'g', argument 'concentration': Gamma needs" in e for e in errors)
    assert any(e.endswith("for some particles (from 'm')") for e in errors), errors
    # an observed node's argument: named on the first evaluation, with the argument
    m = Model("obs").add_plate("n", 3)
    m.add_node("a", "latent", "Normal", {"loc": 0, "scale": 1})
    m.add_node("y", "observed", "Poisson", {"rate": "a - 100"}, plate="n")
    m.set_data("y", [1, 2, 3])
    with pytest.raises(ModelError, match=r"node 'y', argument 'rate': Poisson needs rate >= 0, got -\d"):
        m.sample(K=3)


def test_values_beyond_the_dtype_say_so():
    d = hg()
    node(d, "mu")["args"]["scale"] = 1e39
    msg = refused(d, "node 'mu', argument 'scale'", "out of the range of float32", "float64")
    assert "zero probability" not in msg
    Model.from_dict(d).sample(K=3, dtype="float64")   # fits float64
    d = hg()
    node(d, "z")["args"]["loc"] = "mu * 1e39"
    refused(d, "node 'z', argument 'loc'", "out of the range of float32")
    d = hg()
    d["data"]["x"][0][0] = 1e39
    refused(d, "data 'x'", "range of float32")
    d = hg()
    node(d, "mu")["args"]["scale"] = 1e-50   # positive as written, 0 in float32
    refused(d, "node 'mu', argument 'scale'", "in float32", "rounds")


def test_an_observation_that_probs_of_0_or_1_makes_impossible_is_refused():
    m = Model("zero").add_plate("n", 3)
    m.add_node("y", "observed", "Bernoulli", {"probs": 0}, plate="n")
    m.set_data("y", [0, 1, 0])
    m.add_node("a", "latent", "Normal", {"loc": 0, "scale": 1})
    with pytest.raises(ModelError, match=r"observed node 'y': value 1.0 at index \[1\] is impossible under "
                                         r"Bernoulli with probs 0 or 1"):
        m.sample(K=3)
    m.set_data("y", [0, 0, 0])
    assert m.sample(K=3).log_marginal() == pytest.approx(0.0, abs=1e-5)
    m.update_node("y", dist="Binomial", args={"total_count": 2, "probs": 1})
    m.set_data("y", [2, 2, 1])
    with pytest.raises(ModelError, match=r"value 1.0 at index \[2\] is impossible under Binomial"):
        m.sample(K=3)
    # probs that a latent sets to 0 or 1: an impossible value is a particle of weight zero, not an error
    occ = Model.from_dict(GALLERY["occupancy"])
    occ.update_node("y", args={"probs": "z"})
    assert np.isfinite(occ.sample(K=3, seed=0).log_marginal())


# ---- expressions --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source,needle", [
    ("-" * 1000 + "mu", "nested more than 100 levels"),
    ("mu" + " + mu" * 800, "characters long, more than 2000"),
    ("exp(" * 150 + "mu" + ")" * 150, "nested more than 100 levels"),
    ("(" * 250 + "mu" + ")" * 250, "cannot parse"),
    ("1" * 310 + " * mu", "too large"),
    ("1e400 * mu", "too large"),
    ("1" * 5000, "characters long"),
])
def test_expression_caps(source, needle):
    d = hg()
    node(d, "z")["args"]["loc"] = source
    refused(d, "node 'z', argument 'loc'", needle, sample=False)


def test_expressions_within_the_caps_still_work():
    d = hg()
    node(d, "z")["args"]["loc"] = "mu" + " + 0 * mu" * 90   # 90 levels deep, 900 characters
    assert np.isfinite(Model.from_dict(d).sample(K=3).log_marginal())


# ---- bounded, safe file IO ------------------------------------------------------------------------------------
def _returns_promptly(fn):
    """fn() run in a thread: what it raised or returned, failing if it blocks."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:   # noqa: BLE001
            out["error"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "blocked"
    return out


@pytest.mark.parametrize("make,needle", [
    (lambda p: os.mkfifo(p), "is a pipe"),
    (lambda p: p.mkdir(), "is a folder"),
    (lambda p: p.symlink_to("/dev/zero"), "is a device"),
])
def test_reads_refuse_what_is_not_a_regular_file_without_blocking(tmp_path, make, needle):
    p = tmp_path / "model.json"
    make(p)
    for fn in (lambda: Model.load(p), lambda: safeio.read_bounded(p, 1000), lambda: safeio.load_npz(p, 1000)):
        out = _returns_promptly(fn)
        assert isinstance(out.get("error"), ModelError) and needle in str(out["error"]), out


def test_reading_dev_stdin_does_not_wait_for_it():
    code = "from engine import Model, ModelError\ntry:\n Model.load('/dev/stdin')\nexcept ModelError as e:\n print(e)"
    r = subprocess.run([sys.executable, "-c", code], stdin=subprocess.PIPE, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "is a pipe" in r.stdout, r


def test_reads_are_bounded(tmp_path):
    p = tmp_path / "big.json"
    p.write_bytes(b" " * 2000)
    with pytest.raises(ModelError, match="2000 bytes, more than the limit of 1000"):
        safeio.read_bounded(p, 1000)
    assert safeio.read_bounded(p, 2000) == b" " * 2000
    with pytest.raises(ModelError, match="no model file at"):
        Model.load(tmp_path / "missing.json")


def test_npz_bounded_before_decompressing_and_never_a_pickle(tmp_path):
    bomb = tmp_path / "bomb.npz"
    np.savez_compressed(bomb, y=np.zeros(50_000_000, dtype=np.uint8))   # 50 MB of zeros in ~50 KB
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ModelError, match="more than the limit of 10000000 bytes"):
        safeio.load_npz(bomb, 10_000_000)
    with pytest.raises(ModelError, match="more than the limit"):
        safeio.load_npz(bomb.read_bytes(), 10_000_000)   # an upload, as bytes
    # a header that claims more than its member holds
    header = tmp_path / "h.npy"
    with open(header, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)})
        f.write(b"\0" * 64)
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as z:
        z.write(header, "y.npy")
    with pytest.raises(ModelError, match="its header claims 8000000000000 bytes"):
        safeio.load_npz(tmp_path / "liar.npz", 10 ** 15)
    np.savez(tmp_path / "pickle.npz", y=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelError, match="dtype object; data must be numbers"):
        safeio.load_npz(tmp_path / "pickle.npz", 10 ** 6)
    np.savez(tmp_path / "ok.npz", a=np.arange(6).reshape(2, 3), b=np.asfortranarray(np.eye(3)), c=np.array(True))
    got = safeio.load_npz(tmp_path / "ok.npz", 10 ** 6)
    assert np.array_equal(got["a"], np.arange(6).reshape(2, 3)) and np.array_equal(got["b"], np.eye(3))
    assert got["c"].dtype == bool and got["c"]


def test_data_file_stays_inside_the_models_folder(tmp_path):
    folder = tmp_path / "models"
    (folder / "sub").mkdir(parents=True)
    x = np.asarray(HG["data"]["x"])
    np.savez(tmp_path / "outside.npz", x=x)
    np.savez(folder / "sub" / "inside.npz", x=x)
    (folder / "link.npz").symlink_to(tmp_path / "outside.npz")
    (folder / "sub" / "inner_link.npz").symlink_to(folder / "sub" / "inside.npz")

    def load(data_file):
        d = hg(data_file=data_file)
        del d["data"]
        (folder / "m.json").write_text(json.dumps(d))
        return Model.load(folder / "m.json")
    assert np.array_equal(load("sub/inside.npz").data["x"], x)
    assert np.array_equal(load("sub/inner_link.npz").data["x"], x)   # a link that stays inside is fine
    for bad, needle in (("../outside.npz", "leads outside the model's folder"),
                        ("sub/../../outside.npz", "leads outside"),
                        ("link.npz", "leads outside"),
                        (str(tmp_path / "outside.npz"), "absolute path"),
                        ("sub", "is a folder"),
                        ("nothing.npz", "no data file at")):
        with pytest.raises(ModelError, match="field 'data_file'") as e:
            load(bad)
        assert needle in str(e.value), str(e.value)
    with pytest.raises(ModelError, match="field 'data_file' is not allowed in a model that is not read from a file"):
        Model.from_dict(hg(data_file="sub/inside.npz"))


def test_writes_are_atomic(tmp_path, monkeypatch):
    m = Model.from_dict(hg())
    path = tmp_path / "m.json"
    m.save(path)
    good = path.read_text()
    path.chmod(0o640)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safeio.os, "fsync", full_disk)
    m.update_node("mu", args={"loc": 1, "scale": 1})
    with pytest.raises(ModelError, match="cannot write .*No space left on device"):
        m.save(path)
    assert path.read_text() == good and os.listdir(tmp_path) == ["m.json"]   # the old file whole, no temp left
    monkeypatch.undo()
    m.save(path)
    assert Model.load(path).node("mu").args["loc"] == 1 and (path.stat().st_mode & 0o777) == 0o640
    with pytest.raises(ModelError, match="cannot write"):
        m.save(tmp_path / "no" / "such" / "folder.json")


# ---- loading a big model is not quadratic ------------------------------------------------------------------
def test_a_2000_node_model_loads():
    """Before: 50 s (86 s listed in reverse order), each node copying the graph and
    re-parsing every expression; benchmarks/load.py measures it. Here only that it loads
    in either order with the same graph."""
    nodes, data = [], {}
    for i in range(1000):
        nodes.append({"name": f"z{i}", "kind": "latent", "dist": "Normal",
                      "args": {"loc": f"z{i - 1}" if i else 0, "scale": 1}})
        nodes.append({"name": f"y{i}", "kind": "observed", "dist": "Normal", "args": {"loc": f"z{i}", "scale": 1}})
        data[f"y{i}"] = 0.5
    doc = {"format": "kn-model/1", "name": "big", "nodes": nodes, "data": data}
    a = Model.from_dict(doc)
    b = Model.from_dict({**doc, "nodes": nodes[::-1]})
    assert a.latents == b.latents == [f"z{i}" for i in range(1000)]
    assert set(a.graph.edges) == set(b.graph.edges) and len(a.graph.edges) == 1999
    assert a.parents("y999") == ["z999"]
    cyclic = copy.deepcopy(doc)
    cyclic["nodes"][0]["args"]["loc"] = "z999"
    with pytest.raises(ModelError, match="cycle"):
        Model.from_dict(cyclic)


# ---- the memory budget sees the container's limit ----------------------------------------------------------
def _fake_proc(tmp_path, cgroup, mountinfo):
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text("MemTotal: 67108864 kB\nMemAvailable: 33554432 kB\n")   # 32 GiB free
    (proc / "self" / "cgroup").write_text(cgroup)
    (proc / "self" / "mountinfo").write_text(mountinfo)
    return str(proc)


def test_memory_budget_respects_cgroup_v2_limits(tmp_path):
    root = tmp_path / "cg2"
    leaf = root / "kubepods" / "pod1"
    leaf.mkdir(parents=True)
    (leaf / "memory.max").write_text("max\n")                      # no limit of its own
    (leaf / "memory.current").write_text(str(3 << 30))
    (leaf / "memory.stat").write_text(f"anon 1\ninactive_file {1 << 30}\n")
    (root / "kubepods" / "memory.max").write_text(str(4 << 30))    # the limit one level up
    (root / "kubepods" / "memory.current").write_text(str(3 << 30))
    (root / "kubepods" / "memory.stat").write_text("inactive_file 0\n")
    proc = _fake_proc(tmp_path, "0::/kubepods/pod1\n",
                      f"30 23 0:26 / {root} rw,nosuid - cgroup2 cgroup2 rw\n")
    assert available_memory(proc) == 1 << 30                      # 4 GiB limit - 3 GiB used
    (root / "kubepods" / "memory.max").write_text("max\n")
    assert available_memory(proc) == 32 << 30                      # no limit anywhere: MemAvailable


def test_memory_budget_respects_cgroup_v1_limits(tmp_path):
    root = tmp_path / "cg1"
    (root / "docker" / "abc").mkdir(parents=True)
    mount = root
    (mount / "memory.limit_in_bytes").write_text(str(2 << 30))
    (mount / "memory.usage_in_bytes").write_text(str(1 << 30))
    (mount / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {512 << 20}\n")
    # the container sees its own cgroup as the root of the mount (mountinfo's root field)
    proc = _fake_proc(tmp_path, "12:memory:/docker/abc\n5:cpu,cpuacct:/docker/abc\n",
                      f"40 31 0:35 /docker/abc {mount} rw - cgroup cgroup rw,memory\n")
    assert available_memory(proc) == (2 << 30) - (1 << 30) + (512 << 20)
    assert available_memory(str(tmp_path / "nowhere")) is None


# ---- the command line ---------------------------------------------------------------------------------------------
def kn(*args, **kw):
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300, **kw)


def test_cli_out_checked_before_the_fit(tmp_path):
    model = tmp_path / "m.json"
    model.write_text(json.dumps(HG))
    before = model.read_text()
    for out, needle in ((tmp_path / "missing" / "r.json", "does not exist"),
                        (tmp_path, "is a folder"),
                        (model, "is the model file"),
                        (tmp_path / "." / "m.json", "is the model file")):
        r = kn("fit", str(model), "--method", "qem", "--iters", "100000", "--out", str(out))
        assert r.returncode == 2 and needle in r.stderr and r.stdout == "", r
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert model.read_text() == before
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:   # root writes anywhere but on a read-only file system
        ro.chmod(0o500)
        r = kn("fit", str(model), "--out", str(ro / "r.json"))
        assert r.returncode == 2 and "cannot write in" in r.stderr, r
    with pytest.raises(ModelError, match="is not a regular file"):
        cli.check_out("/dev/null")


def test_cli_bad_values_give_one_line(tmp_path):
    model = str(ROOT / "assets/models/hierarchical_gaussian.json")
    for args, needle in ((["info", model, "--memory-budget", "nan"], "--memory-budget"),
                         (["fit", model, "--test-data", "/dev/zero"], "--test-data"),
                         (["fit", str(tmp_path)], "is a folder")):
        r = kn(*args)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r
    for bad in ("x", "-1", "65536", "80.5", "", "1e3"):
        with pytest.raises(ModelError, match="--port must be a whole number from 0 to 65535"):
            cli.check_port(bad)
    assert cli.check_port("0") == 0 and cli.check_port(8080) == 8080
    for bad in ("999.1.1.1", "not an address!", "a..b", "-x.com", "x" * 300, "127.0.0.1:80", "1.2.3"):
        with pytest.raises(ModelError, match="--address must be an IP address or a host name"):
            cli.check_address(bad)
    for good in ("127.0.0.1", "::1", "0.0.0.0", "localhost", "kn-1.example.org"):
        assert cli.check_address(good) == good


def test_cli_busy_port_gives_one_line(monkeypatch, capsys):
    import workbench
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]

    def bind(model, port, address, show):   # what a server does first
        socket.create_server((address, port))
    monkeypatch.setattr(workbench, "serve", bind)
    try:
        assert cli.main(["serve", "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert f"cannot listen on 127.0.0.1:{port}" in err and "in use" in err and len(err.splitlines()) == 1
        assert cli.main(["serve", "--port", "http"]) == 2
        assert "--port must be" in capsys.readouterr().err
    finally:
        busy.close()


def test_cli_unexpected_errors_give_one_line(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("something\nbroke")
    monkeypatch.setattr(cli, "info", boom)
    monkeypatch.delenv("KN_DEBUG", raising=False)
    assert cli.main(["info", "x.json"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("kn: internal error: RuntimeError: something broke") and len(err.splitlines()) == 1
