"""The model canvas: a panel-reactflow view of the engine Model.

The Model is the source of truth. `canvas_nodes`/`canvas_edges` draw it (variables as
nodes, plates as boxes behind them, one edge per parent -> child), from a positions
dict that only the canvas owns. User gestures come back as plain requests (connect,
move, delete) that the app turns into model edits.
"""
from __future__ import annotations

import itertools
import json
import subprocess

from .views import OBSERVED_FILL, _graphviz_pure, ess_colour, plate_diagram_dot

NODE_W, NODE_H = 170, 44
PAD, LABEL = 18, 26
EMPTY_PLATE = (NODE_W + 2 * PAD, NODE_H + 2 * PAD + LABEL)   # the box of a plate with nothing in it yet

STYLES = """
.react-flow__node-latent, .react-flow__node-observed {
  border: 1.5px solid #333; border-radius: 23px; box-shadow: 0 1px 2px rgba(0,0,0,.15);
  font-size: 12px; line-height: 1.2; color: #111; width: 170px; height: 44px; text-align: center;
  white-space: pre-line; overflow: hidden; text-overflow: ellipsis;
}
.react-flow__node-latent { background: #ffffff; }
.react-flow__node-observed { background: #c8c8c8; }
.react-flow__node-latent.selected, .react-flow__node-observed.selected {
  border-color: #1f6feb; box-shadow: 0 0 0 3px rgba(31,111,235,.35);
}
.react-flow__node-latent .rf-node-content, .react-flow__node-observed .rf-node-content {
  min-width: 0; padding: 4px 8px 0 8px;
}
.react-flow__node-latent .rf-node-label, .react-flow__node-observed .rf-node-label { margin: 0 !important; }
.react-flow__node-plate {
  border: 2px solid #4a6fa5; border-radius: 10px; background: rgba(74,111,165,.05);
  color: #4a6fa5; font-size: 12px; pointer-events: none;
}
.react-flow__node-plate .rf-node-content { padding: 2px 8px; min-width: 0; }
.react-flow__handle { width: 10px; height: 10px; background: #1f6feb; border: 1.5px solid white; }
.react-flow__edge-path { stroke: #555; }
"""


def node_types():
    from panel_reactflow import NodeType
    return {
        "latent": NodeType(type="latent", label="Latent"),
        "observed": NodeType(type="observed", label="Observed"),
        "plate": NodeType(type="plate", label="Plate", inputs=[], outputs=[]),
    }


def layout_dot(model) -> str:
    """The plate diagram with every node the canvas's size, for Graphviz to lay out."""
    dot = plate_diagram_dot(model, show_data=False)
    w, h = (NODE_W + 30) / 72, (NODE_H + 24) / 72
    dot = dot.replace("rankdir=TB", "rankdir=LR", 1)
    return dot.replace("  node [", f"  node [shape=box, fixedsize=true, width={w:.3f}, height={h:.3f}, ", 1)


def auto_layout(model) -> dict[str, tuple[float, float]]:
    """Top-left corners of every variable, from Graphviz's layout of the plate diagram
    (graphviz-pure), or a layered layout if it is unavailable."""
    pos = {}
    exe = _graphviz_pure()
    if exe and len(model.graph):
        try:
            out = subprocess.run([exe, "-Tjson"], input=layout_dot(model).encode(), capture_output=True, timeout=20)
            doc = json.loads(out.stdout)
            top = float(doc["bb"].split(",")[3])
            for o in doc.get("objects", []):
                if "pos" in o and o.get("name") in model.graph:
                    x, y = map(float, o["pos"].split(","))
                    pos[o["name"]] = (round(x - NODE_W / 2 + 20), round((top - y) - NODE_H / 2 + 20))
        except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
            pos = {}
    if len(pos) < len(model.graph):
        import networkx as nx
        for r, gen in enumerate(nx.topological_generations(model.graph)):
            for c, n in enumerate(sorted(gen)):
                pos.setdefault(n, (40 + r * (NODE_W + 80), 40 + c * 90))
    return pos


def free_spot(pos: dict, boxes: dict | None = None, size: tuple = (NODE_W, NODE_H)) -> tuple[float, float]:
    """The top-left corner of the first grid cell, scanning rows inside (then below) what
    is drawn, where a `size` rectangle overlaps no node and no plate box."""
    w, h = size
    rects = [(x, y, x + NODE_W, y + NODE_H) for k, (x, y) in pos.items() if not k.startswith("plate:")]
    rects += list((boxes or {}).values())
    if not rects:
        return (40, 40)
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    x1, y1 = max(r[2] for r in rects), max(r[3] for r in rects)
    step_x, step_y = NODE_W + 30, NODE_H + 30
    y = y0
    while y <= y1 + 10 * step_y:
        x = x0
        while x + w <= max(x1, x0 + w):
            if not any(x < r[2] + 10 and x + w > r[0] - 10 and y < r[3] + 10 and y + h > r[1] - 10 for r in rects):
                return (x, y)
            x += step_x
        y += step_y
    return (x0, y1 + 30)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def misdrawn(model, pos: dict) -> bool:
    """True if the drawing says something the model does not: a plate's box covers a
    node outside that plate, or the boxes of two plates that do not nest overlap."""
    boxes = plate_boxes(model, pos)
    for n in model.graph:
        if n not in pos:
            continue
        x, y = pos[n]
        rect, chain = (x, y, x + NODE_W, y + NODE_H), model.chain(model.node(n).plate)
        if any(p not in chain and _overlap(rect, b) for p, b in boxes.items()):
            return True
    for p, q in itertools.combinations(boxes, 2):
        if p not in model.chain(q) and q not in model.chain(p) and _overlap(boxes[p], boxes[q]):
            return True
    return False


def plate_boxes(model, pos: dict, exclude: str | None = None) -> dict[str, tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of each plate: around its variables and inner plates. An empty
    plate keeps the box stored in pos['plate:NAME'] (or gets one)."""
    boxes: dict = {}

    def depth(p):
        return len(model.chain(p))
    for p in sorted(model.plates, key=lambda p: -depth(p)):
        items = [(x, y, x + NODE_W, y + NODE_H) for n, (x, y) in pos.items()
                 if n in model.graph and n != exclude and model.node(n).plate == p]
        items += [boxes[q] for q, pl in model.plates.items() if pl.parent == p and q in boxes]
        if items:
            boxes[p] = (min(b[0] for b in items) - PAD, min(b[1] for b in items) - PAD - LABEL,
                        max(b[2] for b in items) + PAD, max(b[3] for b in items) + PAD)
        else:
            key = f"plate:{p}"
            if key not in pos:
                pos[key] = free_spot({k: v for k, v in pos.items() if not k.startswith("plate:")}, boxes,
                                     size=EMPTY_PLATE)
            x, y = pos[key]
            boxes[p] = (x, y, x + EMPTY_PLATE[0], y + EMPTY_PLATE[1])
    return boxes


def plate_at(model, pos: dict, x: float, y: float) -> str | None:
    """The innermost plate whose box, as drawn with positions `pos` (before a drag), holds
    the point (x, y)."""
    boxes = plate_boxes(model, dict(pos))
    inside = [p for p, (x0, y0, x1, y1) in boxes.items() if x0 <= x <= x1 and y0 <= y <= y1]
    return max(inside, key=lambda p: len(model.chain(p))) if inside else None


def canvas_nodes(model, pos: dict, ess: dict | None = None, K: int | None = None) -> list[dict]:
    for n in model.graph:
        if n not in pos:
            pos[n] = free_spot({k: v for k, v in pos.items() if not k.startswith("plate:") and k in model.graph},
                               plate_boxes(model, pos))
    boxes = plate_boxes(model, pos)
    out = []
    for p in sorted(model.plates, key=lambda p: len(model.chain(p))):   # outer plates first, drawn below
        x0, y0, x1, y1 = boxes[p]
        out.append({"id": f"plate:{p}", "type": "plate", "position": {"x": x0, "y": y0},
                    "label": f"{p}  ({model.plates[p].size})", "data": {}, "draggable": False,
                    "selectable": False, "connectable": False, "deletable": False, "focusable": False,
                    "zIndex": -10 + len(model.chain(p)),
                    "style": {"width": x1 - x0, "height": y1 - y0}})
    for n in model.nodes:
        x, y = pos[n.name]
        style = {}
        if n.kind == "latent" and ess is not None and n.name in ess and K:
            from .views import _min_ess
            style = {"background": ess_colour(_min_ess(ess[n.name]) / K)}
        elif n.kind == "observed":
            style = {"background": OBSERVED_FILL}
        out.append({"id": n.name, "type": n.kind, "position": {"x": x, "y": y},
                    "label": f"{n.name}\n~ {n.dist}" + (" ↻ prev" if n.timeseries is not None else ""),
                    "data": {"kind": n.kind, "dist": n.dist},
                    "zIndex": 10, "style": style})
    return out


def canvas_edges(model, rev: int = 0) -> list[dict]:
    """One edge per parent -> child. `rev` changes the edges' data so that the browser
    redraws them even when the list is the same (an edge it drew and the model refused)."""
    arrow = {"type": "arrowclosed", "width": 18, "height": 18, "color": "#555"}
    return [{"id": f"{a}->{b}", "source": a, "target": b, "markerEnd": arrow, "data": {"rev": rev},
             "style": {"strokeWidth": 1.6}} for a, b in model.graph.edges]


def _no_editor(data, schema, **kw):
    """React Flow's own node/edge editors are not used (the forms beside the canvas are);
    its default one is a JSONEditor whose JavaScript Panel does not load."""
    return None


def make_flow(model, pos, height=430):
    from panel_reactflow import ReactFlow
    return ReactFlow(nodes=canvas_nodes(model, pos), edges=canvas_edges(model), node_types=node_types(),
                     editable=True, enable_connect=True, enable_delete=True, display_side_bar=False,
                     show_minimap=False, min_zoom=0.2, max_zoom=2, sync_mode="event", stylesheets=[STYLES],
                     editor_mode="side", default_node_editor=_no_editor, default_edge_editor=_no_editor,
                     default_edge_options={}, height=height, sizing_mode="stretch_width")
