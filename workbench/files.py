"""Where the workbench reads and writes models: one workspace folder, by plain file name.

The served app is multi-user and never touches a path a browser typed: a model is opened
from the workspace's list or the gallery's (read-only), saved into the workspace under a
plain file name (no folders, no `..`), never over an existing file without `overwrite`,
and every read is bounded and refuses anything but a regular file. Uploads are bounded
too (an .npz by its decompressed size) and may not name a `data_file`. No Panel here.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from engine import Model, ModelError, datasets

from engine.safeio import atomic_write_text, load_npz, read_bounded

# A served app holds many sessions: its bounds are tighter than engine.safeio's for the CLI.
MODEL_BYTES = 8 << 20        # a model document (JSON)
DATA_BYTES = 16 << 20        # an uploaded .csv / .npz
NPZ_BYTES = 64 << 20         # an .npz, decompressed
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-. ]{0,99}")


class Exists(ModelError):
    """Saving would replace a file: ask, then save again with overwrite=True."""

    def __init__(self, name: str):
        super().__init__(f"{name!r} already exists in the workspace")
        self.name = name


def default_root() -> Path:
    """The workspace of a user who names none: kn-workbench's folder in the user's data dir."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "kn-workbench" / "workspace"


def plain_name(name, suffix: str = ".json") -> str:
    """`name` as a file name in the workspace (with `suffix` added if missing), or a
    ModelError: letters, digits, `_ - . space`, no folder separators, no `..`."""
    n = str(name or "").strip()
    if n and not n.lower().endswith(suffix):
        n += suffix
    if not NAME.fullmatch(n) or ".." in n:
        raise ModelError(f"{str(name)[:60]!r} is not a plain file name: use letters, digits, '_', '-', '.' and "
                         f"spaces, no folders (e.g. my_model{suffix})")
    return n


class Workspace:
    """The folder a session saves to and opens from, and the read-only gallery. Its
    messages name files, never the server's folders."""

    def __init__(self, root=None, gallery: dict | None = None):
        self.root = Path(root) if root is not None else default_root()    # made at the first save
        self.gallery = datasets.gallery() if gallery is None else dict(gallery)
        shelf = {p.resolve().parent for p in self.gallery.values()}
        if self.root.resolve() in shelf:
            raise ModelError(f"the workspace {str(self.root)!r} is the gallery's folder, which is read-only")

    def names(self) -> list[str]:
        """The model files in the workspace (regular *.json files, no links)."""
        out = []
        if not self.root.is_dir():
            return out
        with os.scandir(self.root) as it:
            for e in it:
                if e.name.endswith(".json") and NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                    out.append(e.name)
        return sorted(out)

    def _path(self, name: str, suffix: str = ".json") -> Path:
        return self.root / plain_name(name, suffix)

    def exists(self, name: str) -> bool:
        return os.path.lexists(self._path(name))

    def _private(self, e: ModelError) -> ModelError:
        msg = str(e)
        for folder in {self.root, *(p.parent for p in self.gallery.values())}:
            for form in {str(folder), str(folder.resolve())}:
                msg = msg.replace(form + os.sep, "").replace(form, "the workspace")
        return ModelError(msg)

    def load(self, name: str) -> Model:
        """A model from the workspace, by file name; its data_file, if any, from beside it."""
        try:
            return self._load(name)
        except ModelError as e:
            raise self._private(e) from None

    def _load(self, name: str) -> Model:
        path = self._path(name)
        if path.is_symlink():
            raise ModelError(f"{path.name!r} is a link; the workspace opens regular files only")
        doc = self._parse(read_bounded(path, MODEL_BYTES, "model file"), path.name)
        return Model.from_dict(doc, base=self.root)         # a data_file only from inside the workspace

    def load_gallery(self, name: str) -> Model:
        if name not in self.gallery:
            raise ModelError(f"no example named {str(name)[:60]!r} (examples: {', '.join(self.gallery)})")
        try:
            return Model.load(self.gallery[name])
        except ModelError as e:
            raise self._private(e) from None

    def save(self, name: str, model: Model, overwrite: bool = False) -> str:
        """Write `model` as workspace file `name`; Exists if it is there and not `overwrite`.
        Returns the file name written."""
        path = self._path(name)
        self.root.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ModelError(f"{path.name!r} in the workspace is not a regular file; choose another name")
        if path.exists() and not overwrite:
            raise Exists(path.name)
        try:
            atomic_write_text(path, json.dumps(model.to_dict(), indent=1))
        except (ModelError, OSError) as e:
            raise self._private(ModelError(str(e))) from None
        return path.name

    @staticmethod
    def _parse(content: bytes, label: str):
        try:
            return json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ModelError(f"{label[:60]!r} is not valid JSON ({str(e)[:120]})") from None


def model_from_upload(filename: str, content: bytes) -> Model:
    """A model from an uploaded kn-model/1 document: bounded; the engine refuses a
    data_file in a document that was not read from a folder."""
    if len(content) > MODEL_BYTES:
        raise ModelError(f"the upload is {len(content):,} bytes, over the limit of {MODEL_BYTES:,}")
    return Model.from_dict(Workspace._parse(content, filename or "the upload"))


def data_from_upload(filename: str, content: bytes) -> dict[str, np.ndarray]:
    """Arrays from an uploaded .npz (bounded, decompressed too) or .csv: see workbench.data."""
    from .data import read_csv
    if len(content) > DATA_BYTES:
        raise ModelError(f"the upload is {len(content):,} bytes, over the limit of {DATA_BYTES:,}")
    name = (filename or "").lower()
    if name.endswith(".npz"):
        return load_npz(bytes(content), NPZ_BYTES, "the upload")
    if name.endswith((".csv", ".txt", ".tsv")):
        return read_csv(content)
    raise ModelError(f"{str(filename)[:60]!r}: upload a .csv or .npz file")
