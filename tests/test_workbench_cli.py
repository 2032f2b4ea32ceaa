"""`kn serve` comes from the workbench through the `kn.commands` entry point group (the
engine imports no workbench); `kn --help` loads neither torch nor Panel; a busy port, a
bad port or address, a missing model each give one line, not a traceback."""
from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_serve_is_registered_by_the_workbench():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["kn.commands"]
    assert declared == {"serve": "workbench.cli:register"}
    installed = {ep.name: ep.value for ep in entry_points(group="kn.commands")}
    assert installed.get("serve") == "workbench.cli:register", \
        "the installed metadata is stale: reinstall the project (pip install -e .)"
    engine_src = "".join(p.read_text() for p in (ROOT / "engine").glob("*.py"))
    assert "import workbench" not in engine_src and "from workbench" not in engine_src


def test_kn_help_loads_no_panel_and_serve_loads_no_torch():
    code = ("import sys, engine.cli\ntry:\n    engine.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('LOADED', [m for m in ('panel', 'bokeh') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "serve" in out.stdout and "LOADED []" in out.stdout, out.stdout + out.stderr
    code = ("import sys, argparse, engine.cli, workbench.cli\n"
            "workbench.cli.register(argparse.ArgumentParser().add_subparsers())\n"
            "print('LOADED', [m for m in ('torch', 'panel', 'bokeh') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "LOADED []" in out.stdout, out.stdout + out.stderr


def test_serve_refuses_in_one_line(capsys):
    from engine import cli
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cases = {("--port", str(port)): f"cannot listen on 127.0.0.1:{port}: the port is in use",
                 ("--port", "70000"): "--port must be a whole number from 0 to 65535",
                 ("--port", "x"): "--port must be a whole number",
                 ("--address", "bad address!"): "--address must be an IP address or a host name",
                 ("--address", "no-such-host.invalid"): "not an address of this machine",
                 ("/nonexistent/model.json",): "no model file"}
        for args, said in cases.items():
            assert cli.main(["serve", *args]) == 2, args
            err = capsys.readouterr().err
            assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)


def test_make_serve_takes_a_port():
    import shutil
    if not shutil.which("make"):
        pytest.skip("no make")
    out = subprocess.run(["make", "-n", "-o", ".venv/.installed", "serve", "PORT=5099", "WORKSPACE=/tmp/ws"],
                         capture_output=True, text=True, cwd=ROOT)
    assert "kn serve  --port 5099 --workspace /tmp/ws" in out.stdout, out.stdout + out.stderr
