"""`kn serve`: the workbench in browser tabs, one Workbench per session.

Sessions share a workspace folder (the only place the app writes, by plain file name),
a bound on concurrent runs and a time limit per run; loads and runs go off the server's
event loop, so no session blocks the others.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

from engine import ModelError

from . import files as F

WEBSOCKET_BYTES = 3 * F.DATA_BYTES        # an upload travels base64-encoded in one message


def check_listen(address: str, port) -> tuple[str, int]:
    """(address, port) checked (engine.cli's checks, then a trial bind): a ModelError in one
    line unless they can be listened on now."""
    from engine.cli import check_address, check_port
    port, address = check_port(port), check_address(address)
    try:
        infos = socket.getaddrinfo(address or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ModelError(f"--address {address!r}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(sockaddr)
        except OSError as e:
            raise _bind_error(e, address, port) from None
    return address, port


def _bind_error(e: OSError, address: str, port: int) -> ModelError:
    if e.errno == errno.EADDRINUSE:
        return ModelError(f"cannot listen on {address}:{port}: the port is in use (another kn serve?); choose "
                          f"another with --port {port + 1} (make serve PORT={port + 1})")
    if e.errno == errno.EACCES:
        return ModelError(f"port {port}: not allowed for this user (ports below 1024 need privileges); "
                          f"try --port 5006")
    return ModelError(f"cannot listen on {address}:{port} ({e.strerror})")


def serve(model_path=None, port: int = 5006, address: str = "127.0.0.1", show: bool = False,
          workspace=None, max_runs: int | None = None, run_seconds: float | None = 1800.0, **kwargs):
    """Serve the workbench at http://ADDRESS:PORT with `model_path` (a kn-model/1 file the
    operator chose) loaded in every new session, else the radon example. Files are saved
    to and opened from `workspace` (default workbench.files.default_root()). At most
    `max_runs` runs at once (default half the CPU cores, at least 1), each at most
    `run_seconds`. Blocks."""
    if model_path is not None and not Path(model_path).is_file():
        raise ModelError(f"no model file at {str(model_path)!r}")
    ws = F.Workspace(workspace)
    address, port = check_listen(address, port)
    import panel as pn

    from .app import Workbench
    slots = threading.BoundedSemaphore(max_runs or max(1, (os.cpu_count() or 2) // 2))
    hosts = {"localhost", "127.0.0.1", address}
    origins = ["*"] if address in ("0.0.0.0", "::", "") else [f"{h}:{port}" for h in hosts]

    def app():
        return Workbench(model_path, workspace=ws, background=True, slots=slots, time_limit=run_seconds).panel()
    try:
        return pn.serve({"/": app}, port=port, address=address, show=show, title="kn-workbench",
                        websocket_origin=origins, threaded=False, websocket_max_message_size=WEBSOCKET_BYTES,
                        **kwargs)
    except OSError as e:       # lost a race for the port after check_address
        raise _bind_error(e, address, port) from None
