"""python -m workbench [MODEL.json] [--port N] [--address A] [--show]"""
import argparse
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m workbench", description="Serve the kn-workbench app.")
    ap.add_argument("model", nargs="?", help="a kn-model/1 JSON file (default: the radon example)")
    ap.add_argument("--port", type=int, default=5006)
    ap.add_argument("--address", default="127.0.0.1")
    ap.add_argument("--show", action="store_true", help="open a browser tab")
    a = ap.parse_args(argv)
    from engine import ModelError
    from workbench import serve
    print(f"kn-workbench at http://{a.address}:{a.port}", flush=True)
    try:
        serve(a.model, port=a.port, address=a.address, show=a.show)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
