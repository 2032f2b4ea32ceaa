"""The workspace (workbench.files, no Panel): the served app reads and writes only there,
by plain file names; never over a file without overwrite, never into the gallery; reads
and uploads bounded (an .npz by its decompressed size), non-regular files refused without
blocking, uploads with a data_file refused. Tables typed, pasted or uploaded as CSV are
numbers or a clear refusal."""
from __future__ import annotations

import io
import json
import os
import threading
import zipfile

import numpy as np
import pytest

from engine import Model, ModelError, datasets
from workbench import data as D
from workbench import files as F

from test_workbench_views import nested_model


@pytest.fixture
def ws(tmp_path):
    return F.Workspace(tmp_path / "ws")


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/b", "..", "...json", ".hidden", "x\x00y", "C:\\x",
                                 "x" * 200, "", "  ", "~/x", "$HOME"])
def test_only_plain_file_names(bad):
    with pytest.raises(ModelError, match="not a plain file name"):
        F.plain_name(bad)


def test_plain_names_get_the_suffix():
    assert F.plain_name("my model") == "my model.json" and F.plain_name("m.json") == "m.json"
    assert F.plain_name("d", ".npz") == "d.npz"


def test_save_open_list_and_no_silent_overwrite(ws):
    m = nested_model()
    assert ws.names() == [] and not ws.root.exists()         # made at the first save
    assert ws.save("first", m) == "first.json" and ws.names() == ["first.json"]
    with pytest.raises(F.Exists):
        ws.save("first.json", Model("other"))
    assert ws.load("first").name == "nested"
    ws.save("first", Model("other"), overwrite=True)
    assert ws.load("first.json").name == "other"
    assert not list(ws.root.glob(".*tmp"))                   # written atomically, nothing left over
    with pytest.raises(ModelError, match="not a plain file name"):
        ws.save("../escape", m)
    with pytest.raises(ModelError, match="not a plain file name"):
        ws.load("/etc/passwd")
    assert not (ws.root.parent / "escape.json").exists()


def test_the_gallery_is_read_only():
    gallery = datasets.gallery()
    folder = next(iter(gallery.values())).parent
    with pytest.raises(ModelError, match="read-only"):
        F.Workspace(folder)
    assert F.Workspace(folder.parent / "ws-never-made").load_gallery("radon").name == "radon"
    with pytest.raises(ModelError, match="no example named"):
        F.Workspace(folder.parent / "ws-never-made").load_gallery("../models/radon")


def test_links_fifos_devices_and_big_files_are_refused_quickly(ws, tmp_path):
    ws.save("ok", nested_model())
    secret = tmp_path / "secret.json"
    nested_model().save(secret)
    os.symlink(secret, ws.root / "link.json")
    os.symlink("/dev/zero", ws.root / "zero.json")
    os.mkfifo(ws.root / "fifo.json")
    (ws.root / "big.json").write_bytes(b" " * (F.MODEL_BYTES + 1))
    assert ws.names() == ["big.json", "ok.json"]             # links and FIFOs are not listed
    outcome = {}

    def try_all():
        for name in ("link.json", "zero.json", "fifo.json", "big.json"):
            try:
                ws.load(name)
                outcome[name] = "loaded"
            except ModelError as e:
                outcome[name] = str(e)
    t = threading.Thread(target=try_all, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "a read blocked"
    assert "link" in outcome["link.json"] and "link" in outcome["zero.json"]
    assert "regular file" in outcome["fifo.json"] and "limit" in outcome["big.json"]
    assert not any(str(tmp_path) in m for m in outcome.values())        # names, never the server's folders
    with pytest.raises(ModelError, match="not a regular file"):
        ws.save("fifo", nested_model(), overwrite=True)


def test_a_workspace_model_reads_its_data_file_from_beside_it_only(ws, tmp_path):
    doc = nested_model().to_dict()
    y = doc["data"].pop("y")
    np.savez(tmp_path / "outside.npz", y=np.asarray(y))
    ws.root.mkdir(parents=True)
    np.savez(ws.root / "y.npz", y=np.asarray(y))
    (ws.root / "good.json").write_text(json.dumps({**doc, "data_file": "y.npz"}))
    assert ws.load("good").data["y"].shape == (3, 4)
    os.symlink(tmp_path / "outside.npz", ws.root / "link.npz")
    for bad in ("../outside.npz", str(tmp_path / "outside.npz"), "link.npz"):
        (ws.root / "bad.json").write_text(json.dumps({**doc, "data_file": bad}))
        with pytest.raises(ModelError, match="data_file") as e:
            ws.load("bad")
        said = str(e.value).replace(bad, "")                      # the document's own text aside,
        assert str(tmp_path) not in said                          # it names no server folder


def test_uploads_are_bounded_and_carry_no_data_file():
    doc = nested_model().to_dict()
    assert F.model_from_upload("m.json", json.dumps(doc).encode()).name == "nested"
    with pytest.raises(ModelError, match="data_file"):
        F.model_from_upload("m.json", json.dumps({**doc, "data_file": "/srv/secret.npz"}).encode())
    with pytest.raises(ModelError, match="over the limit"):
        F.model_from_upload("m.json", b" " * (F.MODEL_BYTES + 1))
    with pytest.raises(ModelError, match="not valid JSON"):
        F.model_from_upload("m.json", b"\xff\xfe")
    with pytest.raises(ModelError, match="over the limit"):
        F.data_from_upload("d.csv", b"x\n" + b"1\n" * (F.DATA_BYTES // 2))


def test_an_npz_is_bounded_by_its_decompressed_size():
    buf = io.BytesIO()
    np.savez_compressed(buf, y=np.arange(3))
    assert F.data_from_upload("d.npz", buf.getvalue())["y"].tolist() == [0, 1, 2]
    bomb = io.BytesIO()                                          # ~100 MB of zeros in a few hundred KB
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("y.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                     "shape": (100 << 17,)})
            block = bytes(1 << 20)
            for _ in range(100):
                f.write(block)
    assert len(bomb.getvalue()) < 1 << 20
    with pytest.raises(ModelError, match="more than the limit|decompresses to more than"):
        F.data_from_upload("bomb.npz", bomb.getvalue())
    obj = io.BytesIO()
    np.savez(obj, o=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelError):
        F.data_from_upload("o.npz", obj.getvalue())             # no pickles


def test_csv_and_typed_tables():
    cols = D.read_csv(b"value,group,name\n1.5,0,a\n2.5,1,b\n,0,c\n")
    assert set(cols) == {"value", "group"} and np.isnan(cols["value"][2]) and cols["group"].dtype == np.int64
    with pytest.raises(ModelError, match=r"column 'value', row 2: 'abc' is not a number"):
        D.read_csv("value\n1\nabc\n")
    assert D.parse_table("28 8 -3 7 -1 1 18 12", "y")["y"].tolist() == [28, 8, -3, 7, -1, 1, 18, 12]
    two = D.parse_table("y\tsigma\n28\t15\n8\t10\n")                 # pasted from a spreadsheet
    assert two["y"].tolist() == [28, 8] and two["sigma"].tolist() == [15, 10]
    cols = D.parse_table("1, 2\n3, 4", "m")
    assert list(cols) == ["m_1", "m_2"] and cols["m_1"].tolist() == [1, 3] and cols["m_2"].tolist() == [2, 4]
    with pytest.raises(ModelError, match="row 2 has 1 cells"):
        D.parse_table("a b\n1 2\n3")
    with pytest.raises(ModelError, match="type or paste"):
        D.parse_table("  ")
