"""Bounded file IO: engine.safeio's functions, with a stand-in of the same signatures
until engine/safeio.py is on main (then this module goes and callers import engine.safeio)."""
from __future__ import annotations

try:
    from engine.safeio import atomic_write_text, load_npz, read_bounded
except ImportError:   # stand-in: delete with this module once engine.safeio is merged
    import io
    import os
    import stat
    import tempfile
    import zipfile
    from pathlib import Path

    import numpy as np

    from engine import ModelError

    def read_bounded(path, limit: int) -> bytes:
        """The bytes of a regular file of at most `limit` bytes; FIFOs, devices and larger
        files are refused without blocking."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise ModelError(f"no file named {path.name!r}") from None
        except OSError as e:
            raise ModelError(f"cannot read {path.name!r} ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ModelError(f"{path.name!r} is not a regular file")
            if st.st_size > limit:
                raise ModelError(f"{path.name!r} is {st.st_size:,} bytes, over the limit of {limit:,}")
            chunks, n = [], 0
            while n <= limit:
                b = os.read(fd, min(1 << 20, limit + 1 - n))
                if not b:
                    break
                chunks.append(b)
                n += len(b)
            if n > limit:
                raise ModelError(f"{path.name!r} is over the limit of {limit:,} bytes")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def atomic_write_text(path, text: str) -> None:
        """Write `text` to a temporary file beside `path`, then rename it over `path`."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_npz(source, limit: int) -> dict:
        """Arrays of an .npz (bytes or a path) whose decompressed size is at most `limit`
        bytes; no pickled objects."""
        data = source if isinstance(source, (bytes, bytearray)) else read_bounded(source, limit)
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise ModelError("not an .npz file (not a zip archive)") from None
        out, total = {}, 0
        with zf:
            for info in zf.infolist():
                total += info.file_size
                if total > limit:
                    raise ModelError(f"the .npz decompresses to more than {limit:,} bytes")
                with zf.open(info) as member:
                    raw = member.read(limit - total + info.file_size + 1)
                if len(raw) > info.file_size:
                    raise ModelError(f"the .npz member {info.filename!r} is larger than its header says")
                try:
                    arr = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
                except ValueError as e:
                    raise ModelError(f"the .npz member {info.filename!r}: {e}") from None
                out[info.filename.removesuffix(".npy")] = arr
        return out
