"""File input and output that a hostile or careless path cannot abuse.

Reads are bounded in size and take regular files only: a FIFO, a device (/dev/zero,
/dev/stdin), a socket or a directory is refused without blocking on it (the file is
opened non-blocking and checked by fstat before a byte is read). An `.npz` archive is
read member by member, each `.npy` header checked before anything is decompressed: plain
numeric arrays only (no pickles, no object arrays), and the total size of the arrays
bounded, whatever the archive's own sizes claim. Writes go to a temporary file in the
target's folder, then os.replace it: a full disk or a kill never leaves half a file
where a good one was.
"""
from __future__ import annotations

import io
import os
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from .errors import ModelError

MODEL_LIMIT = 64 << 20   # bytes of a model JSON file
DATA_LIMIT = 1 << 30     # bytes of the arrays of one .npz, decompressed
_MAX_MEMBERS = 10_000


def _open_regular(path, what: str) -> tuple[int, int]:
    """(fd, size) of `path` opened for reading, if it is a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ModelError(f"no {what} at {str(path)!r}") from None
    except IsADirectoryError:
        raise ModelError(f"{what}: {str(path)!r} is a folder, not a file") from None
    except OSError as e:
        raise ModelError(f"{what}: cannot open {str(path)!r} ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a pipe" if stat.S_ISFIFO(st.st_mode) else \
            "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file"
        raise ModelError(f"{what}: {str(path)!r} is {kind}; only regular files are read")
    return fd, st.st_size


def read_bounded(path, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file `path`, refused if it holds more than `limit`."""
    fd, size = _open_regular(path, what)
    try:
        if size > limit:
            raise ModelError(f"{what}: {str(path)!r} is {size} bytes, more than the limit of {limit}")
        chunks, total = [], 0
        while True:   # in chunks: the file may have grown since fstat, and /proc files say size 0
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise ModelError(f"{what}: {str(path)!r} is more than the limit of {limit} bytes")
    finally:
        os.close(fd)
    return b"".join(chunks)


def atomic_write_text(path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and os.replace:
    the old file stays whole until the new one is complete."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise ModelError(f"cannot write {str(path)!r} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600: keep the mode of the file replaced, else 0644
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise ModelError(f"cannot write {str(path)!r} ({e.strerror or e})") from None
        raise


def load_npz(source, limit: int, what: str = "data file") -> dict[str, np.ndarray]:
    """The arrays of an `.npz` (a path, or its bytes as uploaded), at most `limit` bytes
    of them in all; numeric and boolean arrays only, never a pickle."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw, name = bytes(source), what
        if len(raw) > limit:
            raise ModelError(f"{what}: {len(raw)} bytes, more than the limit of {limit}")
    else:
        raw, name = read_bounded(source, limit, what), f"{what} {str(source)!r}"
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelError(f"{name}: not an .npz archive ({e})") from None
    out, total = {}, 0
    with zf:
        infos = zf.infolist()
        if len(infos) > _MAX_MEMBERS:
            raise ModelError(f"{name}: {len(infos)} members, more than {_MAX_MEMBERS}")
        for info in infos:
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise ModelError(f"{name}: array {key!r} is compressed by a method .npz does not use")
            total += info.file_size
            if total > limit:
                raise ModelError(f"{name}: its arrays hold more than the limit of {limit} bytes")
            try:
                with zf.open(info) as f:
                    out[key] = _read_npy(f, info.file_size, f"{name}: array {key!r}")
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
                raise ModelError(f"{name}: array {key!r} cannot be read ({e})") from None
    return out


def _read_npy(f, member_size: int, where: str) -> np.ndarray:
    """One `.npy` from a file object, its header checked before its data is read."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise ModelError(f"{where}: unknown .npy version {version}")
    if dtype.hasobject or dtype.kind not in "biuf" or dtype.fields is not None:
        raise ModelError(f"{where}: has dtype {dtype}; data must be numbers or booleans")
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    if nbytes > member_size:
        raise ModelError(f"{where}: its header claims {nbytes} bytes but the archive holds {member_size}")
    buf = f.read(nbytes)
    if len(buf) != nbytes:
        raise ModelError(f"{where}: truncated ({len(buf)} of {nbytes} bytes)")
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return arr.reshape(shape, order="F" if fortran else "C").copy()
