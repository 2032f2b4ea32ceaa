"""One exception type for everything a user can get wrong."""


class ModelError(ValueError):
    """Bad model, data or request. The message names the node, plate or field at fault."""
