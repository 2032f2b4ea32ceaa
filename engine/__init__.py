"""kn-workbench engine: massively parallel importance weighting on graphical models."""
import os

# OpenMP threads that spin while they wait make torch 20-100x slower on a busy 2-core
# machine (a workbench server thread, another process); waiting passively costs little.
# It must be set before torch loads, and a value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .errors import ModelError
from .model import Model, Node, Param, Plate
from .dists import DISTRIBUTIONS
from .proposal import FAMILIES, Proposal
from .program import Program
from .sample import Sample

__all__ = ["Model", "Node", "Param", "Plate", "ModelError", "DISTRIBUTIONS", "FAMILIES", "Proposal",
           "Program", "Sample"]
