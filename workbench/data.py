"""Data to attach to a model: bundled datasets, CSV and typed or pasted tables, ragged-group
padding. (Uploads, bounded, are workbench.files.data_from_upload.)"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from engine import ModelError

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"


MISSING = {"", "na", "nan", "null", "none", "n/a", "-"}


def _column_name(c, i: int) -> str:
    name = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in str(c)).strip("_") or f"col{i + 1}"
    return "c_" + name if name[0].isdigit() else name


def columns(header: list, rows: list[list[str]]) -> dict[str, np.ndarray]:
    """Numeric columns of a table of text cells. A column with no number in it (labels,
    say) is left out; a cell that is neither a number nor empty/NA in a numeric column is
    refused, naming its row and column; empty/NA cells are missing values (NaN)."""
    out = {}
    width = len(header)
    for r, row in enumerate(rows):
        if len(row) != width:
            raise ModelError(f"row {r + 1} has {len(row)} cells, the header {width}")
    for j, h in enumerate(header):
        cells = [row[j].strip() for row in rows]
        vals, bad = [], None
        for r, c in enumerate(cells):
            if c.lower() in MISSING:
                vals.append(np.nan)
                continue
            try:
                vals.append(float(c))
            except ValueError:
                vals.append(None)
                bad = bad or (r, c)
        if all(v is None or np.isnan(v) for v in vals):
            continue                      # a text column: not data for the model
        if bad is not None:
            raise ModelError(f"column {str(h)[:40]!r}, row {bad[0] + 1}: {bad[1][:40]!r} is not a number "
                             f"(leave the cell empty for a missing value)")
        a = np.asarray(vals, float)
        whole = np.isfinite(a).all() and (a % 1 == 0).all()
        out[_column_name(h, j)] = a.astype(np.int64) if whole else a
    if not out:
        raise ModelError("the table has no numeric columns")
    return out


def read_csv(content) -> dict[str, np.ndarray]:
    """Numeric columns of CSV text (or bytes), the first row a header: see columns()."""
    import csv
    text = content.decode("utf-8-sig", "replace") if isinstance(content, (bytes, bytearray)) else content
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    rows = [r for r in csv.reader(io.StringIO(text), dialect) if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ModelError("the CSV needs a header row and at least one row of values")
    return columns(rows[0], rows[1:])


def parse_table(text: str, name: str | None = None) -> dict[str, np.ndarray]:
    """Numbers typed or pasted (from a spreadsheet: tabs, commas or spaces between cells).
    A first row with a non-number in it is the header (column names); else the columns
    are called `name` (one column) or `name_1`, `name_2`, ..."""
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    if not lines:
        raise ModelError("type or paste some numbers first")
    sep = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
    rows = [[c for c in (ln.split(sep) if sep else ln.split())] for ln in lines]
    if len(rows) == 1 and sep is None and name:
        rows = [[c] for c in rows[0]]     # one line of numbers: a column
    head = rows[0]

    def number(c):
        try:
            float(c)
            return True
        except ValueError:
            return c.strip().lower() in MISSING
    if all(number(c) for c in head):
        stem = name or "x"
        header = [stem] if len(head) == 1 else [f"{stem}_{j + 1}" for j in range(len(head))]
        body = rows
    else:
        header, body = head, rows[1:]
    if not body:
        raise ModelError("the table has a header but no numbers")
    return columns(header, body)


def _radon() -> dict[str, np.ndarray]:
    import importlib.resources as ir
    d = json.loads((ir.files("arviz") / "data/example_data/code/radon/radon.json").read_text())
    return {"log_radon": np.asarray(d["y"], float), "floor": np.asarray(d["x"], np.int64),
            "county": np.asarray(d["county"], np.int64), "log_uranium": np.asarray(d["u"], float)}


def bundled() -> dict:
    """name -> loader of {column: array}."""
    out = {}
    for p in sorted((ASSETS / "data").glob("*.csv")):
        out[p.stem.replace("_", " ")] = (lambda p=p: read_csv(p.read_bytes()))
    out["radon (Minnesota, from ArviZ)"] = _radon
    return out


def group_pad(values, groups) -> np.ndarray:
    """Ragged groups as a (n_groups, max_count) array padded with NaN (missing values),
    the layout of an observed node in a nested plate. Integer group codes 0..G-1 keep
    their order; other codes are sorted."""
    values, groups = np.asarray(values, float), np.asarray(groups)
    if values.shape[0] != groups.shape[0]:
        raise ModelError(f"values ({values.shape[0]} rows) and groups ({groups.shape[0]} rows) differ in length")
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
