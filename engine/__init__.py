"""kn-workbench engine: massively parallel importance weighting on graphical models."""
import importlib
import os

# OpenMP threads that spin while they wait make torch 20-100x slower on a busy 2-core
# machine (a workbench server thread, another process); waiting passively costs little.
# It must be set before torch loads, and a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import ModelError

# The rest loads torch: imported on first use, so that `import engine.errors` or
# `kn --help` does not pay for it.
_LAZY = {"Model": ".model", "Node": ".model", "Param": ".model", "Plate": ".model", "DISTRIBUTIONS": ".dists",
         "FAMILIES": ".proposal", "Proposal": ".proposal", "Program": ".program", "Sample": ".sample"}

__all__ = ["Model", "Node", "Param", "Plate", "ModelError", "DISTRIBUTIONS", "FAMILIES", "Proposal",
           "Program", "Sample"]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
