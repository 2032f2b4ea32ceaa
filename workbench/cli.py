"""`kn serve`, registered with the `kn` command through the `kn.commands` entry point
group (pyproject.toml), so that the engine never imports the workbench. Nothing heavy is
imported until the command runs: `kn --help` stays fast."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a kn-model/1 JSON file every new session opens (default: the radon "
                                            "example)")
    p.add_argument("--port", default="5006")
    p.add_argument("--address", default="127.0.0.1", help="the address to listen on (0.0.0.0: every interface)")
    p.add_argument("--workspace", default=None,
                   help="the folder the app saves to and opens from, by file name (default: "
                        "~/.local/share/kn-workbench/workspace); the app touches no other path")
    p.add_argument("--max-runs", type=int, default=None, help="runs at once over all sessions (default: half "
                                                               "the CPU cores)")
    p.add_argument("--run-seconds", type=float, default=1800.0, help="a run stops after this many seconds")
    p.add_argument("--show", action="store_true", help="open a browser tab")


def register(sub) -> None:
    """Add `serve` to the `kn` command's subparsers."""
    p = sub.add_parser("serve", help="open the workbench in the browser")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from engine import ModelError

    from .server import check_listen, serve
    if args.model is not None and not Path(args.model).is_file():
        raise ModelError(f"no model file at {args.model!r}")
    address, port = check_listen(args.address, args.port)
    print(f"kn-workbench at http://{address}:{port}  (Ctrl-C stops it)", flush=True)
    serve(args.model, port=port, address=address, show=args.show, workspace=args.workspace,
          max_runs=args.max_runs, run_seconds=args.run_seconds)
    return 0
