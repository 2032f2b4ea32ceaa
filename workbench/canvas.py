"""The model canvas: a panel-reactflow view of the engine Model.

The Model is the source of truth. `canvas_nodes`/`canvas_edges` draw it (variables as
nodes, plates as boxes behind them, one edge per parent -> child), from a positions
dict that only the canvas owns. User gestures come back as plain requests (connect,
move, delete) that the app turns into model edits.
"""
from __future__ import annotations

import json
import subprocess

from .views import OBSERVED_FILL, _graphviz_pure, ess_colour, plate_diagram_dot

NODE_W, NODE_H = 170, 40
PAD, LABEL = 18, 26

STYLES = """
.react-flow__node-latent, .react-flow__node-observed {
  border: 1.5px solid #333; border-radius: 23px; box-shadow: 0 1px 2px rgba(0,0,0,.15);
  font-size: 12.5px; color: #111; width: 170px; height: 40px; text-align: center; white-space: nowrap;
}
.react-flow__node-latent { background: #ffffff; }
.react-flow__node-observed { background: #c8c8c8; }
.react-flow__node-latent.selected, .react-flow__node-observed.selected {
  border-color: #1f6feb; box-shadow: 0 0 0 3px rgba(31,111,235,.35);
}
.react-flow__node-latent .rf-node-content, .react-flow__node-observed .rf-node-content {
  min-width: 0; padding: 10px 8px 0 8px;
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


def free_spot(pos: dict, boxes: dict | None = None) -> tuple[float, float]:
    """The first grid cell, scanning rows inside (then below) what is drawn, that
    overlaps no node and no plate box."""
    rects = [(x, y, x + NODE_W, y + NODE_H) for k, (x, y) in pos.items() if not k.startswith("plate:")]
    rects += list((boxes or {}).values())
    if not rects:
        return (40, 40)
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    x1, y1 = max(r[2] for r in rects), max(r[3] for r in rects)
    step_x, step_y = NODE_W + 30, NODE_H + 30
    y = y0
    while True:
        x = x0
        while x + NODE_W <= max(x1, x0 + NODE_W):
            if not any(x < r[2] + 10 and x + NODE_W > r[0] - 10 and y < r[3] + 10 and y + NODE_H > r[1] - 10
                       for r in rects):
                return (x, y)
            x += step_x
        y += step_y
        if y > y1 + 10 * step_y:
            return (x0, y1 + 30)


def fit_viewport(model, pos: dict, width: int = 860, height: int = 480) -> dict:
    """A React Flow viewport showing everything drawn in a width x height canvas."""
    boxes = plate_boxes(model, pos)
    rects = [(x, y, x + NODE_W, y + NODE_H) for k, (x, y) in pos.items() if k in model.graph]
    rects += list(boxes.values())
    if not rects:
        return {"x": 0, "y": 0, "zoom": 1}
    x0, y0 = min(r[0] for r in rects), min(r[1] for r in rects)
    x1, y1 = max(r[2] for r in rects), max(r[3] for r in rects)
    zoom = max(0.2, min(1.0, (width - 40) / (x1 - x0 + 1), (height - 40) / (y1 - y0 + 1)))
    return {"x": 20 - x0 * zoom, "y": 20 - y0 * zoom, "zoom": zoom}


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
                pos[key] = free_spot({k: v for k, v in pos.items() if not k.startswith("plate:")}, boxes)
            x, y = pos[key]
            boxes[p] = (x, y, x + NODE_W + 2 * PAD, y + NODE_H + 2 * PAD + LABEL)
    return boxes


def plate_at(model, pos: dict, name: str, x: float, y: float) -> str | None:
    """The innermost plate whose box (drawn without `name`) holds the point (x, y)."""
    boxes = plate_boxes(model, dict(pos), exclude=name)
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
                    "label": f"{n.name} ~ {n.dist}", "data": {"kind": n.kind, "dist": n.dist},
                    "zIndex": 10, "style": style})
    return out


def canvas_edges(model) -> list[dict]:
    arrow = {"type": "arrowclosed", "width": 18, "height": 18, "color": "#555"}
    return [{"id": f"{a}->{b}", "source": a, "target": b, "markerEnd": arrow,
             "style": {"strokeWidth": 1.6}} for a, b in model.graph.edges]


def make_flow(model, pos, height=480):
    from panel_reactflow import ReactFlow
    return ReactFlow(nodes=canvas_nodes(model, pos), edges=canvas_edges(model), node_types=node_types(),
                     editable=True, enable_connect=True, enable_delete=True, display_side_bar=False,
                     show_minimap=False, min_zoom=0.2, max_zoom=2, sync_mode="event", stylesheets=[STYLES],
                     editor_mode="side", default_edge_options={}, height=height,
                     sizing_mode="stretch_width")
