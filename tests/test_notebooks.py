"""Every tutorial notebook runs top to bottom (at CI sizes: KN_SMALL=1), and the committed
notebooks are exactly what notebooks/make_notebooks.py writes, with outputs cleared."""
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "notebooks"))


def test_notebooks_are_generated_and_cleared():
    import make_notebooks
    assert [p.stem for p in NOTEBOOKS] == list(make_notebooks.NOTEBOOKS)
    for p in NOTEBOOKS:
        on_disk = nbformat.read(p, as_version=4)
        made = make_notebooks.nb(make_notebooks.NOTEBOOKS[p.stem])
        assert [c.source for c in on_disk.cells] == [c.source for c in made.cells], f"{p.name}: rerun make_notebooks.py"
        for c in on_disk.cells:
            assert c.cell_type == "markdown" or (not c.outputs and c.execution_count is None), f"{p.name}: clear outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("KN_SMALL", "1")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    start = time.time()
    client.execute()      # raises CellExecutionError, with the cell and traceback, on any error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    shown = "".join(v for c in nb.cells if c.cell_type == "code" for o in c.outputs
                    for v in (o.get("data") or {}).values() if isinstance(v, str))
    for cdn in ("https://cdn.bokeh.org/bokeh/release", "https://cdn.holoviz.org/panel/"):
        assert cdn not in shown, f"{path.name} loads code from {cdn}: it would not render offline"
    print(f"{path.name}: {time.time() - start:.0f} s")
