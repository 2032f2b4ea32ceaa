"""kn-workbench's browser/Jupyter app. `Workbench(path)` in a notebook, `serve()` for a tab.

workbench.editing (the edited model, undo, names), workbench.files (the workspace),
workbench.runs (runs and loads off the event loop) are plain Python; workbench.app is the
Panel layout, workbench.tabs its view tabs; workbench.views and workbench.degeneracy are
plain functions of engine objects. Panel is imported only when Workbench or serve is used.
"""

__all__ = ["Workbench", "serve"]


def __getattr__(name):
    if name == "Workbench":
        from .app import Workbench
        return Workbench
    if name == "serve":
        from .server import serve
        return serve
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
