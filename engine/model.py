"""The model: a networkx DiGraph of random variables in a tree of named plates.

The graph is the single source of truth: one node per variable (attribute `node`, a
`Node`), an edge parent -> child for every variable a child's arguments mention. Plates,
data and proposal choices hang off the Model. Every model round-trips through the
versioned JSON document `kn-model/1`.
"""
from __future__ import annotations

import copy
import json
import keyword
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from .dists import DISTRIBUTIONS, check_args, get_spec
from .errors import ModelError
from .expr import Expr

FORMAT = "kn-model/1"
KINDS = ("latent", "observed")
EXTRAS = ("layout", "exact")   # free-form fields for tools: canvas positions, a known posterior


@dataclass(frozen=True)
class Plate:
    name: str
    size: int
    parent: str | None = None


@dataclass(frozen=True)
class Param:
    """A learnable model parameter, written `{"param": init}` in a model file."""
    init: float | list


@dataclass
class Node:
    name: str
    kind: str
    dist: str
    args: dict = field(default_factory=dict)   # name -> number | list | expression str | Param
    plate: str | None = None
    shape: tuple[int, ...] | None = None
    group: str | None = None

    def where(self, arg: str | None = None) -> str:
        return f"node {self.name!r}" + (f", argument {arg!r}" if arg else "")

    def exprs(self) -> dict[str, Expr]:
        return {a: Expr(v, self.where(a)) for a, v in self.args.items() if isinstance(v, str)}

    def mentions(self) -> set[str]:
        return set().union(*[e.names for e in self.exprs().values()])


def _check_size(plate: str, size) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ModelError(f"plate {plate!r}: size must be a positive integer, got {size!r}")


def _check_name(name, what):
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ModelError(f"{what} name {name!r} must be a Python-style identifier")


class Model:
    def __init__(self, name: str = "model"):
        self.name = name
        self.graph = nx.DiGraph()
        self.plates: dict[str, Plate] = {}
        self.data: dict[str, np.ndarray] = {}
        self.data_plates: dict[str, list[str]] = {}   # optional explicit plates of covariates
        self.proposal: dict[str, dict] = {}            # latent -> {"dist": family, "init"?: {param: value}}
        self.qem: dict = {}                            # QEM's step schedule {"power", "offset"}, if set
        self.description = ""
        self.extras: dict = {}   # optional fields the engine keeps but does not read: layout, exact

    # ---- editing -------------------------------------------------------------------
    def add_plate(self, name: str, size: int, parent: str | None = None) -> "Model":
        _check_name(name, "plate")
        if name in self.plates:
            raise ModelError(f"plate {name!r} already exists")
        _check_size(name, size)
        if parent is not None and parent not in self.plates:
            raise ModelError(f"plate {name!r}: the enclosing plate {parent!r} does not exist")
        self.plates[name] = Plate(name, int(size), parent)
        return self

    def resize_plate(self, name: str, size: int) -> "Model":
        if name not in self.plates:
            raise ModelError(f"no plate named {name!r}")
        _check_size(name, size)
        self.plates[name] = Plate(name, int(size), self.plates[name].parent)
        return self

    def remove_plate(self, name: str) -> "Model":
        if name not in self.plates:
            raise ModelError(f"no plate named {name!r}")
        users = [n.name for n in self.nodes if n.plate == name] + \
                [p.name for p in self.plates.values() if p.parent == name]
        if users:
            raise ModelError(f"plate {name!r} still holds {', '.join(users)}; move or remove them first")
        del self.plates[name]
        return self

    def add_node(self, name: str, kind: str, dist: str, args: dict | None = None, plate: str | None = None,
                 shape=None, group: str | None = None) -> "Model":
        _check_name(name, "node")
        if name in self.graph:
            raise ModelError(f"node {name!r} already exists")
        self._put(Node(name, kind, dist, dict(args or {}), plate, tuple(shape) if shape is not None else None, group))
        return self

    def update_node(self, name: str, **changes) -> "Model":
        """Change fields of a node; the graph is left as it was if the change is invalid."""
        old = self.node(name)
        new = copy.deepcopy(old)
        for k, v in changes.items():
            if not hasattr(new, k) or k == "name":
                raise ModelError(f"node {name!r}: no field {k!r}")
            setattr(new, k, tuple(v) if k == "shape" and v is not None else v)
        self._put(new, replace=True)
        return self

    def remove_node(self, name: str) -> "Model":
        self.node(name)
        children = [c for c in self.graph.successors(name)]
        if children:
            raise ModelError(f"node {name!r} is used by {', '.join(sorted(children))}; edit them first")
        self.graph.remove_node(name)
        self.proposal.pop(name, None)
        return self

    def set_data(self, name: str, value, plates: list[str] | None = None) -> "Model":
        _check_name(name, "data")
        arr = np.asarray(value if not isinstance(value, list) else _nulls_to_nan(value))
        if arr.dtype == object:
            raise ModelError(f"data {name!r} is ragged or not numeric; pad ragged groups with null")
        self.data[name] = arr
        if plates is not None:
            self.data_plates[name] = list(plates)
        return self

    def _put(self, node: Node, replace: bool = False) -> None:
        if node.kind not in KINDS:
            raise ModelError(f"{node.where()}: kind must be 'latent' or 'observed', got {node.kind!r}")
        spec = get_spec(node.dist, node.where())
        check_args(spec, set(node.args), node.where())
        if node.plate is not None and node.plate not in self.plates:
            raise ModelError(f"{node.where()}: plate {node.plate!r} does not exist")
        if node.name in self.plates:
            raise ModelError(f"{node.where()}: a plate has the same name")
        for a, v in node.args.items():
            if isinstance(v, dict) and set(v) == {"param"}:
                node.args[a] = v = Param(v["param"])
            if not isinstance(v, (int, float, list, str, Param)) or isinstance(v, bool):
                raise ModelError(f"{node.where(a)}: must be a number, a list, an expression or "
                                 f"{{\"param\": init}}, got {v!r}")
        parents = node.mentions() & set(self.graph.nodes)
        g = self.graph.copy()
        if replace:
            g.remove_edges_from(list(g.in_edges(node.name)))
        g.add_node(node.name, node=node)
        g.add_edges_from((p, node.name) for p in parents)
        g.add_edges_from((node.name, c) for c in g.nodes
                         if c != node.name and node.name in g.nodes[c]["node"].mentions())
        if not nx.is_directed_acyclic_graph(g):
            cycle = " -> ".join(e[0] for e in nx.find_cycle(g)) + f" -> {nx.find_cycle(g)[0][0]}"
            raise ModelError(f"{node.where()}: this makes a cycle {cycle}")
        self.graph = g

    # ---- queries -------------------------------------------------------------------
    def node(self, name: str) -> Node:
        if name not in self.graph:
            raise ModelError(f"no node named {name!r}")
        return self.graph.nodes[name]["node"]

    @property
    def nodes(self) -> list[Node]:
        return [self.graph.nodes[n]["node"] for n in nx.lexicographical_topological_sort(self.graph, key=self._order)]

    def _order(self, name):
        return list(self.graph.nodes).index(name)

    @property
    def latents(self) -> list[str]:
        return [n.name for n in self.nodes if n.kind == "latent"]

    @property
    def observed(self) -> list[str]:
        return [n.name for n in self.nodes if n.kind == "observed"]

    def chain(self, plate: str | None) -> tuple[str, ...]:
        """Plates from the outermost to `plate`."""
        out = []
        while plate is not None:
            out.append(plate)
            plate = self.plates[plate].parent
        return tuple(reversed(out))

    def parents(self, name: str) -> list[str]:
        return sorted(self.graph.predecessors(name), key=self._order)

    # ---- validation ----------------------------------------------------------------
    def validate(self) -> None:
        """Everything that can be checked without running: raises ModelError."""
        if not self.graph.nodes:
            raise ModelError("the model has no nodes")
        for p in self.plates.values():
            seen, q = set(), p.name
            while q is not None:
                if q in seen:
                    raise ModelError(f"plate {p.name!r}: plates nest in a cycle")
                seen.add(q)
                q = self.plates[q].parent
        known = set(self.graph.nodes) | set(self.data)
        for node in self.nodes:
            for a, e in node.exprs().items():
                for name in sorted(e.names - known):
                    raise ModelError(f"{node.where(a)}: {name!r} names no node or data")
            chain = self.chain(node.plate)
            for p in self.parents(node.name):
                pchain = self.chain(self.node(p).plate)
                if chain[: len(pchain)] != pchain:
                    raise ModelError(
                        f"{node.where()}: its plate {node.plate or '(none)'} is not inside parent "
                        f"{p!r}'s plate {pchain[-1]!r}; a node's plates must contain all its "
                        f"parents' plates (plates nest, they never cross)")
            if node.kind == "observed":
                if node.name not in self.data:
                    raise ModelError(f"{node.where()}: observed, but there is no data named {node.name!r}")
                sizes = tuple(self.plates[p].size for p in chain)
                shape = self.data[node.name].shape
                if shape[: len(sizes)] != sizes:
                    raise ModelError(
                        f"data {node.name!r} has shape {shape} but node {node.name!r} lives in plates "
                        f"{'/'.join(f'{p}({self.plates[p].size})' for p in chain)}: its leading dims "
                        f"must be {sizes}")
            if node.group is not None:
                for other in self.nodes:
                    if other.group == node.group and other.plate != node.plate:
                        raise ModelError(f"{node.where()}: group {node.group!r} mixes plates "
                                         f"{node.plate!r} and {other.plate!r}; a group lives in one plate")
                if node.kind != "latent":
                    raise ModelError(f"{node.where()}: only latents can be grouped")
        for name, plates in self.data_plates.items():
            for p in plates:
                if p not in self.plates:
                    raise ModelError(f"data {name!r}: plate {p!r} does not exist")
        for name, prop in self.proposal.items():
            if name not in self.graph or self.node(name).kind != "latent":
                raise ModelError(f"proposal for {name!r}: no latent of that name")
        for name, arr in self.data.items():
            if name in self.graph and self.node(name).kind == "observed":
                continue
            if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
                idx = tuple(int(i) for i in np.argwhere(np.isnan(arr))[0])
                raise ModelError(f"data {name!r} has a missing value at index {idx}; only observed "
                                 f"nodes may have missing values")

    # ---- the kn-model/1 document ---------------------------------------------------
    def to_dict(self) -> dict:
        nodes = []
        for n in self.nodes:
            d = {"name": n.name, "kind": n.kind, "dist": n.dist,
                 "args": {a: ({"param": v.init} if isinstance(v, Param) else v) for a, v in n.args.items()}}
            if n.plate is not None:
                d["plate"] = n.plate
            if n.shape is not None:
                d["shape"] = list(n.shape)
            if n.group is not None:
                d["group"] = n.group
            nodes.append(d)
        doc = {"format": FORMAT, "name": self.name}
        if self.description:
            doc["description"] = self.description
        doc["plates"] = [{"name": p.name, "size": p.size, **({"in": p.parent} if p.parent else {})}
                         for p in self.plates.values()]
        doc["nodes"] = nodes
        doc["data"] = {k: _nan_to_nulls(v) for k, v in self.data.items()}
        if self.data_plates:
            doc["data_plates"] = dict(self.data_plates)
        if self.proposal:
            doc["proposal"] = copy.deepcopy(self.proposal)
        if self.qem:
            doc["qem"] = dict(self.qem)
        doc.update(copy.deepcopy(self.extras))
        return doc

    @classmethod
    def from_dict(cls, doc: dict, base: Path | None = None) -> "Model":
        if not isinstance(doc, dict):
            raise ModelError("a model document must be a JSON object")
        if doc.get("format") != FORMAT:
            raise ModelError(f"field 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
        known = {"format", "name", "description", "plates", "nodes", "data", "data_file", "data_plates", "proposal",
                 "qem", *EXTRAS}
        for k in doc:
            if k not in known:
                raise ModelError(f"unknown field {k!r} (fields: {', '.join(sorted(known))})")
        m = cls(doc.get("name", "model"))
        m.description = doc.get("description", "")
        plates = list(doc.get("plates", []))
        for i, p in enumerate(plates):
            if not isinstance(p, dict) or "name" not in p or "size" not in p:
                raise ModelError(f"plates[{i}] needs 'name' and 'size'")
        pending = {p["name"]: p for p in plates}
        while pending:  # add enclosing plates first, whatever the listed order
            ready = [p for p in pending.values() if p.get("in") is None or p.get("in") in m.plates]
            if not ready:
                p = next(iter(pending.values()))
                raise ModelError(f"plate {p['name']!r}: the enclosing plate {p.get('in')!r} does not exist "
                                 f"or plates nest in a cycle")
            for p in ready:
                m.add_plate(p["name"], p["size"], p.get("in"))
                del pending[p["name"]]
        if "data_file" in doc:
            path = Path(doc["data_file"])
            path = (base / path) if base is not None and not path.is_absolute() else path
            try:
                with np.load(path) as z:
                    for k in z.files:
                        m.set_data(k, z[k])
            except OSError as e:
                raise ModelError(f"field 'data_file': cannot read {str(path)!r} ({e})") from None
        for k, v in (doc.get("data") or {}).items():
            m.set_data(k, v)
        m.data_plates = {k: list(v) for k, v in (doc.get("data_plates") or {}).items()}
        nodes = doc.get("nodes", [])
        for i, n in enumerate(nodes):
            if not isinstance(n, dict) or not {"name", "kind", "dist"} <= set(n):
                raise ModelError(f"nodes[{i}] needs 'name', 'kind' and 'dist'")
            extra = set(n) - {"name", "kind", "dist", "args", "plate", "shape", "group"}
            if extra:
                raise ModelError(f"node {n['name']!r}: unknown field {sorted(extra)[0]!r}")
        # Nodes may be listed in any order: add each once all the nodes it mentions exist.
        names = {n["name"] for n in nodes}
        pending = list(nodes)
        while pending:
            progress = False
            for n in list(pending):
                mentioned = Node(n["name"], n["kind"], n["dist"], dict(n.get("args") or {})).mentions() & names
                if mentioned <= set(m.graph.nodes):
                    m.add_node(n["name"], n["kind"], n["dist"], n.get("args"), n.get("plate"), n.get("shape"),
                               n.get("group"))
                    pending.remove(n)
                    progress = True
            if not progress:
                g = nx.DiGraph()
                for n in pending:
                    for p in Node(n["name"], n["kind"], n["dist"], dict(n.get("args") or {})).mentions() & names:
                        g.add_edge(p, n["name"])
                cyc = [e[0] for e in nx.find_cycle(g)]
                raise ModelError(f"node {cyc[0]!r}: the model has a cycle {' -> '.join(cyc + [cyc[0]])}")
        m.proposal = {k: dict(v) for k, v in (doc.get("proposal") or {}).items()}
        if "qem" in doc:
            from .fit import QEM_SCHEDULE, qem_schedule
            if not isinstance(doc["qem"], dict):
                raise ModelError(f"field 'qem' must be an object {{\"power\": p, \"offset\": t0}}, got {doc['qem']!r}")
            qem_schedule({**QEM_SCHEDULE, **doc["qem"]})   # checked now, not at the first fit
            m.qem = dict(doc["qem"])
        m.extras = {k: copy.deepcopy(doc[k]) for k in EXTRAS if k in doc}
        if m.graph.nodes:
            m.validate()
        return m

    @classmethod
    def load(cls, path) -> "Model":
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"no model file at {str(path)!r}") from None
        except json.JSONDecodeError as e:
            raise ModelError(f"{path.name}: not valid JSON ({e})") from None
        return cls.from_dict(doc, base=path.parent)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    def copy(self) -> "Model":
        return copy.deepcopy(self)

    # ---- inference entry points ------------------------------------------------------
    def compile(self, K: int, **options):
        """The model compiled for K particles: options mode ("mp" or "global"), device,
        dtype, proposal ("prior", "q" or a Proposal), optimize, memory_budget (bytes)."""
        from .program import Program
        return Program(self, K, **options)

    def sample(self, K: int, seed: int = 0, **options):
        """Massively parallel importance sample: K particles for every latent."""
        return self.compile(K, **options).sample(seed)

    def sample_global(self, K: int, seed: int = 0, **options):
        """Classic importance sampling: K joint samples of all latents, one weight each."""
        return self.compile(K, mode="global", **options).sample(seed)

    def __repr__(self):
        return f"Model({self.name!r}: {len(self.latents)} latents, {len(self.observed)} observed, plates {list(self.plates)})"


def _nulls_to_nan(v):
    if isinstance(v, list):
        return [_nulls_to_nan(x) for x in v]
    return np.nan if v is None else v


def _nan_to_nulls(arr: np.ndarray):
    if np.issubdtype(arr.dtype, np.floating):
        obj = arr.astype(object)
        obj[np.isnan(arr)] = None
        return obj.tolist()
    return arr.tolist()


__all__ = ["Model", "Node", "Plate", "Param", "DISTRIBUTIONS"]
