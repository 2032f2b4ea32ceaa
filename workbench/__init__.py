"""kn-workbench's browser/Jupyter app. `Workbench(path)` in a notebook, `serve()` for a tab.

Views (workbench.views) are plain functions of engine objects; the app arranges them.
"""
from .app import Workbench, serve

__all__ = ["Workbench", "serve"]
