"""kn-workbench engine: massively parallel importance weighting on graphical models."""
from .errors import ModelError
from .model import Model, Node, Param, Plate
from .dists import DISTRIBUTIONS
from .proposal import FAMILIES, Proposal
from .program import Program
from .sample import Sample

__all__ = ["Model", "Node", "Param", "Plate", "ModelError", "DISTRIBUTIONS", "FAMILIES", "Proposal",
           "Program", "Sample"]
