"""python -m workbench [MODEL.json] [--port N] [--address A] [--workspace DIR] [--show]: `kn serve`."""
import argparse
import sys


def main(argv=None) -> int:
    from engine import ModelError

    from .cli import add_arguments, run
    ap = argparse.ArgumentParser(prog="python -m workbench", description="Serve the kn-workbench app.")
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except ModelError as e:
        print(f"kn serve: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
