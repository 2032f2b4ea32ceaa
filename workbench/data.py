"""Data to attach to a model: bundled datasets, uploaded .csv/.npz, ragged-group padding."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"


def _csv_columns(text_or_bytes) -> dict[str, np.ndarray]:
    import pandas as pd
    buf = io.BytesIO(text_or_bytes) if isinstance(text_or_bytes, bytes) else io.StringIO(text_or_bytes)
    try:
        df = pd.read_csv(buf)
    except Exception as e:  # pandas raises many kinds
        raise ValueError(f"cannot read the CSV: {e}") from None
    out = {}
    for c in df.columns:
        col = pd.to_numeric(df[c], errors="coerce")
        if col.notna().sum() == 0:
            continue            # text column: skipped
        name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(c)).strip("_") or "col"
        if name[0].isdigit():
            name = "c_" + name
        out[name] = col.to_numpy(dtype=float) if col.isna().any() or (col % 1 != 0).any() \
            else col.to_numpy().astype(np.int64)
    if not out:
        raise ValueError("the CSV has no numeric columns")
    return out


def read_upload(filename: str, content: bytes) -> dict[str, np.ndarray]:
    """Arrays from an uploaded .csv (one per numeric column) or .npz (one per entry)."""
    name = (filename or "").lower()
    if name.endswith(".npz"):
        try:
            with np.load(io.BytesIO(content), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as e:
            raise ValueError(f"cannot read {filename!r} as .npz: {e}") from None
    if name.endswith(".csv") or name.endswith(".txt"):
        return _csv_columns(content)
    raise ValueError(f"{filename!r}: upload a .csv or .npz file")


def _radon() -> dict[str, np.ndarray]:
    import importlib.resources as ir
    d = json.loads((ir.files("arviz") / "data/example_data/code/radon/radon.json").read_text())
    return {"log_radon": np.asarray(d["y"], float), "floor": np.asarray(d["x"], np.int64),
            "county": np.asarray(d["county"], np.int64), "log_uranium": np.asarray(d["u"], float)}


def bundled() -> dict:
    """name -> loader of {column: array}."""
    out = {}
    for p in sorted((ASSETS / "data").glob("*.csv")):
        out[p.stem.replace("_", " ")] = (lambda p=p: _csv_columns(p.read_bytes()))
    out["radon (Minnesota, from ArviZ)"] = _radon
    return out


def group_pad(values, groups) -> np.ndarray:
    """Ragged groups as a (n_groups, max_count) array padded with NaN (missing values),
    the layout of an observed node in a nested plate. Integer group codes 0..G-1 keep
    their order; other codes are sorted."""
    values, groups = np.asarray(values, float), np.asarray(groups)
    if values.shape[0] != groups.shape[0]:
        raise ValueError(f"values ({values.shape[0]} rows) and groups ({groups.shape[0]} rows) differ in length")
    if np.issubdtype(groups.dtype, np.integer) and groups.min() >= 0:
        codes, n = groups.astype(int), int(groups.max()) + 1
    else:
        uniq, codes = np.unique(groups, return_inverse=True)
        n = len(uniq)
    counts = np.bincount(codes, minlength=n)
    out = np.full((n, max(int(counts.max()), 1)), np.nan)
    fill = np.zeros(n, int)
    for v, c in zip(values, codes):
        out[c, fill[c]] = v
        fill[c] += 1
    return out


def describe(arr) -> str:
    a = np.asarray(arr)
    kind = "int" if np.issubdtype(a.dtype, np.integer) else "float"
    miss = int(np.isnan(a).sum()) if np.issubdtype(a.dtype, np.floating) else 0
    return f"{kind} {list(a.shape)}" + (f", {miss} missing" if miss else "")
