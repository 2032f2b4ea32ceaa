"""Sweeps on Dask: a grid on an embedded cluster of two workers, a cell's row the same on
either worker and in this process, a failing cell reported while the others finish,
resume from the file, stop, atomic writes, the `kn sweep` command."""
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from engine import Model, ModelError
from engine import cli
from engine import sweep as sw
from engine.fit import Fitter

MODELS = Path(__file__).resolve().parent.parent / "assets" / "models"
HG, ES, OCC = (str(MODELS / f"{n}.json") for n in ("hierarchical_gaussian", "eight_schools_noncentered", "occupancy"))


@pytest.fixture(scope="module")
def client():
    from distributed import Client
    with sw.local_cluster(n_workers=2) as cluster, Client(cluster) as c:
        c.wait_for_workers(2)
        yield c


def _events():
    seen = []
    return seen, lambda event, info: seen.append((event, info))


def test_eight_cells_on_an_embedded_cluster_of_two_workers(tmp_path, monkeypatch):
    out = tmp_path / "sweep.json"
    monkeypatch.setattr(sw, "WRITE_EVERY", 0.0)      # the file after every cell
    seen, on_event = _events()

    def progress(event, info):
        on_event(event, info)
        if event == "row":
            info["in_file"] = len(sw.load(out)["rows"])
    doc = sw.run_sweep({"hg": HG, "es": ES}, methods=("qem", "is"), Ks=(2, 3), seeds=(0,), iters=3, out=out,
                       n_workers=2, progress=progress)
    cells = sw.grid(["hg", "es"], ("qem", "is"), (2, 3), (0,))
    assert len(cells) == 8
    assert sorted(sw.cell_key(r) for r in doc["rows"]) == sorted(cells)
    assert all(r["status"] == "ok" for r in doc["rows"]), sw.failed(doc)
    assert json.loads(out.read_text()) == doc
    assert doc["format"] == "kn-sweep/1" and doc["settings"]["iters"] == 3
    assert set(doc["models"]) == {"hg", "es"}
    assert len({r["worker"] for r in doc["rows"]}) == 2            # both workers took cells
    assert seen[0][0] == "start" and seen[0][1]["total"] == 8 and "2 workers" in seen[0][1]["cluster"]
    rows = [info for event, info in seen if event == "row"]
    assert [i["done"] for i in rows] == list(range(1, 9)) and rows[-1]["eta"] == 0
    assert [i["in_file"] for i in rows] == list(range(1, 9))
    assert all(i["eta"] >= 0 for i in rows)
    # each row is the engine's own result for that cell, computed here
    docs = {"hg": Model.load(HG).to_dict(), "es": Model.load(ES).to_dict()}
    for r in doc["rows"]:
        here = sw.run_cell(docs[r["model"]], r["method"], r["K"], r["seed"], iters=3, label=r["model"])
        assert sw.without_timing(r) == sw.without_timing(here)
        assert r["iterations"] == 3 and r["final_elbo"] == r["history"]["elbo"][-1]
        for name, d in r["latents"].items():
            assert r["ess"][name]["min"] == pytest.approx(min(_flat(d["ess"])))
            # pooled over the result's samples: between 1 and S * K; each MCSE reported beside its mean
            assert 1 - 1e-4 <= r["ess"][name]["min"] <= r["K"] * d["n_samples"] * (1 + 1e-4)
            assert np.shape(d["mcse_mean"]) == np.shape(d["mean"]) and np.all(np.asarray(d["mcse_mean"]) >= 0)


def _flat(x):
    return [v for item in x for v in _flat(item)] if isinstance(x, list) else [x]


def test_a_row_holds_the_fitters_result():
    model = Model.load(HG)
    row = sw.run_cell(model.to_dict(), "rws", 4, 1, iters=5)
    f = Fitter(model, "rws", K=4, seed=1)
    list(f.run(5))
    r = f.result().to_dict()
    assert row["log_marginal"] == r["log_marginal"] and row["history"]["elbo"] == r["history"]["elbo"]
    assert row["latents"] == r["latents"]
    assert row.get("warnings") == r.get("warnings")
    assert (row["model"], row["method"], row["K"], row["seed"]) == ("hierarchical_gaussian", "rws", 4, 1)


def test_a_cell_gives_the_same_row_on_either_worker(client):
    doc = Model.load(HG).to_dict()
    settings = {"iters": 6, "lr": 0.03, "device": "cpu", "dtype": "float32"}
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    assert len(workers) == 2
    futures = [client.submit(sw._task, doc, "rws", 5, 7, settings, "hg", workers=[w], allow_other_workers=False,
                             pure=False) for w in workers]
    a, b = client.gather(futures)
    assert a["status"] == b["status"] == "ok"
    assert a["worker"] != b["worker"]
    assert sw.without_timing(a) == sw.without_timing(b)
    other = client.submit(sw._task, doc, "rws", 5, 8, settings, "hg", pure=False).result()
    assert other["log_marginal"] != a["log_marginal"]       # the seed matters, so equality above means something


def test_a_failing_cell_is_reported_and_the_others_finish(client, tmp_path, capsys):
    out = tmp_path / "s.json"
    occ = json.loads(Path(OCC).read_text())          # z sampled, not enumerated: VI cannot take it
    next(n for n in occ["nodes"] if n["name"] == "z")["enumerate"] = False
    (tmp_path / "occupancy.json").write_text(json.dumps(occ))
    rc = cli.main(["sweep", HG, str(tmp_path / "occupancy.json"), "--methods", "qem,vi", "--K", "3", "--seeds", "0", "--iters", "3",
                   "--out", str(out), "--scheduler", client.scheduler.address])
    assert rc == 1
    doc = sw.load(out)
    by = {(r["model"], r["method"]): r for r in doc["rows"]}
    assert len(by) == 4
    bad = by[("occupancy", "vi")]
    assert bad["status"] == "error" and bad["error_type"] == "ModelError"
    assert "'vi'" in bad["error"] and "'z'" in bad["error"] and "discrete" in bad["error"]
    assert all(by[k]["status"] == "ok" for k in by if k != ("occupancy", "vi"))
    captured = capsys.readouterr()
    assert "failed cells: 1" in captured.out and "occupancy vi K=3 seed=0" in captured.out
    assert "[4/4]" in captured.err and "ETA" in captured.err and "FAILED" in captured.err


def test_resume_skips_done_cells_and_reruns_failed_ones(client, tmp_path):
    out = tmp_path / "s.json"
    kw = dict(methods=("qem",), seeds=(0, 1), iters=3, out=out, scheduler=client)
    first = sw.run_sweep({"hg": HG}, Ks=(2,), **kw)
    assert len(first["rows"]) == 2
    # mark one row as failed: a resumed sweep runs that cell again
    doc = sw.load(out)
    doc["rows"][1] = sw.error_row("hg", "qem", 2, 1, RuntimeError("worker lost"))
    sw.write_atomic(out, doc)
    seen, progress = _events()
    second = sw.run_sweep({"hg": HG}, Ks=(2, 3), progress=progress, **kw)
    assert seen[0] == ("start", {"total": 3, "skipped": 1, "cluster": seen[0][1]["cluster"]})
    ran = sorted(sw.cell_key(i["row"]) for e, i in seen if e == "row")
    assert ran == [("hg", "qem", 2, 1), ("hg", "qem", 3, 0), ("hg", "qem", 3, 1)]
    kept = next(r for r in second["rows"] if sw.cell_key(r) == ("hg", "qem", 2, 0))
    assert kept == first["rows"][0]                        # not run again: even its timing is the file's
    assert len(second["rows"]) == 4 and not sw.failed(second)
    rerun = next(r for r in second["rows"] if sw.cell_key(r) == ("hg", "qem", 2, 1))
    assert sw.without_timing(rerun) == sw.without_timing(first["rows"][1])
    seen, progress = _events()
    third = sw.run_sweep({"hg": HG}, Ks=(2, 3), progress=progress, **kw)
    assert seen == [("start", {"total": 0, "skipped": 4, "cluster": seen[0][1]["cluster"]})]
    assert third == second


def test_resume_refuses_other_settings_or_another_model(client, tmp_path):
    out = tmp_path / "s.json"
    sw.run_sweep({"hg": HG}, methods=("is",), Ks=(2,), seeds=(0,), iters=2, out=out, scheduler=client)
    with pytest.raises(ModelError, match="iters = 2.*asks for 3"):
        sw.run_sweep({"hg": HG}, methods=("is",), Ks=(2,), seeds=(0,), iters=3, out=out, scheduler=client)
    with pytest.raises(ModelError, match="model 'hg' is not the one"):
        sw.run_sweep({"hg": ES}, methods=("is",), Ks=(2,), seeds=(0,), iters=2, out=out, scheduler=client)


def test_stop_cancels_the_cells_not_yet_finished(client, tmp_path):
    out = tmp_path / "s.json"
    stop = threading.Event()
    doc = sw.run_sweep({"hg": HG}, methods=("qem",), Ks=(5,), seeds=range(6), iters=150, out=out, scheduler=client,
                       progress=lambda event, info: event == "row" and stop.set(), stop=stop)
    assert 1 <= len(doc["rows"]) < 6
    assert sw.load(out) == doc


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "s.json"
    sw.write_atomic(path, {"format": sw.FORMAT, "rows": [1]})
    with pytest.raises(TypeError):
        sw.write_atomic(path, {"format": sw.FORMAT, "rows": [object()]})
    assert json.loads(path.read_text()) == {"format": sw.FORMAT, "rows": [1]}

    def killed(*a):       # a kill between writing the new text and renaming it
        raise KeyboardInterrupt
    monkeypatch.setattr(sw.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        sw.write_atomic(path, {"format": sw.FORMAT, "rows": [2]})
    assert json.loads(path.read_text()) == {"format": sw.FORMAT, "rows": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_bad_requests_name_what_is_wrong(tmp_path, capsys):
    with pytest.raises(ModelError, match="methods must be among.*'nuts'"):
        sw.grid(["hg"], ("qem", "nuts"), (3,), (0,))
    with pytest.raises(ModelError, match="K must be integers >= 1, got 0"):
        sw.grid(["hg"], ("qem",), (0,), (0,))
    with pytest.raises(ModelError, match="seeds: give at least one"):
        sw.grid(["hg"], ("qem",), (3,), ())
    with pytest.raises(ModelError, match="--K: expected a comma-separated list"):
        sw.parse_list("3,x", "--K")
    with pytest.raises(ModelError, match="two models are called 'hierarchical_gaussian'"):
        sw.labels_for([HG, HG])
    with pytest.raises(ModelError, match="iters must be a positive integer"):
        sw.run_sweep({"hg": HG}, iters=0)
    with pytest.raises(ModelError, match="cannot write the sweep file"):
        sw.run_sweep({"hg": HG}, iters=1, out=tmp_path / "no" / "such" / "dir.json")
    (tmp_path / "junk.json").write_text('{"rows": []}')
    with pytest.raises(ModelError, match="not a kn-sweep/1 file"):
        sw.load(tmp_path / "junk.json")
    assert cli.main(["sweep", HG, "--K", "3,,x", "--out", str(tmp_path / "o.json")]) == 2
    assert "--K: expected a comma-separated list" in capsys.readouterr().err
    assert cli.main(["sweep", HG, "--out", str(tmp_path / "o.json"), "--scheduler", "bogus://x"]) == 2
    assert "cannot reach a Dask scheduler at 'bogus://x'" in capsys.readouterr().err
