"""Benchmarks of the kn-workbench engine: `python -m benchmarks` (see benchmarks/README.md).

KN_BENCH_ENGINE=/path/to/checkout benchmarks the `engine` package of another checkout
(a patched copy, say) instead of the installed one, in this process and in every
subprocess it starts; the report names the engine it measured.
"""
import os as _os
import sys as _sys

_other = _os.environ.get("KN_BENCH_ENGINE")
if _other:
    _sys.path.insert(0, _os.path.abspath(_other))
    # the project's editable install resolves `engine` before sys.path: set it aside
    _sys.meta_path[:] = [f for f in _sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
    for _name in [m for m in _sys.modules if m == "engine" or m.startswith("engine.")]:
        del _sys.modules[_name]
