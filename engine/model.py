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
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from .dists import DISTRIBUTIONS, check_args, check_constant, get_spec
from .errors import ModelError
from .expr import Expr
from .safeio import DATA_LIMIT, MODEL_LIMIT, atomic_write_text, load_npz, read_bounded

FORMAT = "kn-model/1"
KINDS = ("latent", "observed")
EXTRAS = ("layout", "exact")   # fields the engine keeps for tools: canvas positions, a known posterior
FIELDS = ("format", "name", "description", "plates", "nodes", "data", "data_file", "data_plates", "proposal",
          "qem", "dtype", *EXTRAS)
DTYPES = ("float32", "float64")   # the model's `dtype`: the default float type of its runs
PLATE_FIELDS = ("name", "size", "in")
NODE_FIELDS = ("name", "kind", "dist", "args", "plate", "shape", "group", "timeseries", "enumerate")
ENUMERABLE = ("Bernoulli", "Categorical", "Binomial")   # discrete latents whose support can be summed exactly
TIMESERIES_FIELDS = ("plate", "init")
PREV = "prev"   # in a time-series latent's arguments: its own value at the previous element of its plate
PROPOSAL_FIELDS = ("dist", "init")
MAX_NAME = 100          # characters of a name
MAX_SIZE = 10 ** 9      # elements of a plate, or of a latent's shape
MAX_RANK = 16           # dims of a constant or a data array


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
    timeseries: dict | None = None   # {"init": number or expression}: the node depends on its own `prev`
    enumerate: bool | None = None    # a discrete latent summed over its support (None: if it is small)
    _names: tuple | None = field(default=None, init=False, repr=False, compare=False)   # mentions(), by args

    def where(self, arg: str | None = None) -> str:
        return f"node {self.name!r}" + (f", argument {arg!r}" if arg else "")

    def exprs(self) -> dict[str, Expr]:
        return {a: Expr(v, self.where(a)) for a, v in self.args.items() if isinstance(v, str)}

    def init_expr(self) -> Expr | None:
        """A time-series latent's value before the first element of its plate, if an expression."""
        v = (self.timeseries or {}).get("init")
        return Expr(v, f"node {self.name!r}, field 'timeseries.init'") if isinstance(v, str) else None

    def mentions(self) -> set[str]:
        """The names the node's expressions mention (parsed once per change of its arguments),
        less a time-series latent's own `prev`."""
        key = (tuple((a, v) for a, v in self.args.items() if isinstance(v, str)),
               (self.timeseries or {}).get("init"))
        if self._names is None or self._names[0] != key:
            init = self.init_expr()
            names = frozenset().union(*[e.names for e in self.exprs().values()], init.names if init else ())
            self._names = (key, names - {PREV} if self.timeseries is not None else names)
        return set(self._names[1])


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _check_size(plate: str, size) -> None:
    if not isinstance(size, (int, np.integer)) or isinstance(size, (bool, np.bool_)) or not 1 <= size <= MAX_SIZE:
        raise ModelError(f"plate {plate!r}: size must be a positive integer of at most {MAX_SIZE}, got {size!r}")


def _check_name(name, what):
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise ModelError(f"{what} name {_short(name)} must be a Python-style identifier")
    if len(name) > MAX_NAME:
        raise ModelError(f"{what} name {_short(name)} is longer than {MAX_NAME} characters")
    normal = unicodedata.normalize("NFKC", name)
    if normal != name:   # Python's parser reads the name in an expression as `normal`
        raise ModelError(f"{what} name {name!r} is not in Unicode normal form: an expression reads it as "
                         f"{normal!r}; name it {normal!r}")


def _short(v, n: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


def _shape(shape, where: str):
    if shape is None:
        return None
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK or not all(
            isinstance(s, (int, np.integer)) and not isinstance(s, (bool, np.bool_)) and s >= 1 for s in shape):
        raise ModelError(f"{where}: shape must be a list of positive integers, like [3], got {_short(shape)}")
    if math.prod(shape) > MAX_SIZE:
        raise ModelError(f"{where}: shape {list(shape)} has more than {MAX_SIZE} entries")
    return tuple(int(s) for s in shape)


def _type_name(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number" if _is_number(v) else type(v).__name__)


def _field(doc: dict, key: str, kind: type, where: str, default=None):
    """doc[key] if it is a `kind` (dict, list or str); `default` if absent."""
    v = doc.get(key)
    if v is None:   # absent, or null
        return default
    if not isinstance(v, kind):
        want = {dict: "an object", list: "a list", str: "a string"}[kind]
        raise ModelError(f"{where}field {key!r} must be {want}, got {_type_name(v)}")
    return v


def _unknown(d: dict, allowed, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ModelError(f"{where}: unknown field {_short(k)} (fields: {', '.join(allowed)})")


def _constant(v, where: str) -> np.ndarray:
    """A constant written in a model (a number or nested lists of numbers) as a float64
    array: rectangular, not empty, finite."""
    shape = _rectangle(v, where, numbers_only=True)
    if 0 in shape:
        raise ModelError(f"{where}: an empty list is not a value")
    arr = np.asarray(v, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ModelError(f"{where}: {_short(v)} is not finite")
    return arr


def _rectangle(v, where: str, numbers_only: bool, index=()) -> tuple[int, ...]:
    """The shape of nested lists `v`, refusing anything but numbers (and null, for data)
    at the leaves and lists of unequal lengths."""
    at = f" at index {list(index)}" if index else ""
    if isinstance(v, (list, tuple)):
        if len(index) >= MAX_RANK:
            raise ModelError(f"{where}: nested more than {MAX_RANK} lists deep")
        shapes = [_rectangle(x, where, numbers_only, (*index, i)) for i, x in enumerate(v)]
        for i, s in enumerate(shapes[1:], 1):
            if s != shapes[0]:
                raise ModelError(f"{where}: ragged lists{at}: entry {i} has shape {s} but entry 0 has {shapes[0]}"
                                 + ("" if numbers_only else "; pad ragged groups with null"))
        return (len(v), *(shapes[0] if shapes else ()))
    if _is_number(v) or (not numbers_only and (v is None or isinstance(v, bool))):
        if isinstance(v, (int, np.integer)) and not -2 ** 63 <= v < 2 ** 63:
            raise ModelError(f"{where}: the integer{at} is too large")
        return ()
    raise ModelError(f"{where}: {_type_name(v)}{at} ({_short(v, 30)}) is not a number")


def _data_array(value, where: str) -> np.ndarray:
    """Data as a numeric array: nested lists or an array of numbers, booleans and null
    (missing, NaN); rectangular, not empty, nothing infinite."""
    if isinstance(value, np.ndarray):
        arr = value
        if arr.dtype.kind not in "biuf":
            raise ModelError(f"{where}: has dtype {arr.dtype}; data must be numbers")
    else:
        _rectangle(value, where, numbers_only=False)
        arr = np.asarray(_nulls_to_nan(value))
        if arr.dtype.kind not in "biuf":   # e.g. integers that do not fit one dtype
            raise ModelError(f"{where}: its values do not fit one numeric type")
    if arr.ndim > MAX_RANK:
        raise ModelError(f"{where}: has {arr.ndim} dims, more than {MAX_RANK}")
    if 0 in arr.shape:
        raise ModelError(f"{where}: is empty (shape {arr.shape})")
    if arr.dtype.kind == "f" and np.isinf(arr).any():
        idx = tuple(int(i) for i in np.argwhere(np.isinf(arr))[0])
        raise ModelError(f"{where}: has an infinite value at index {list(idx)}")
    return arr


class Model:
    def __init__(self, name: str = "model"):
        self.name = name
        self.graph = nx.DiGraph()
        self.plates: dict[str, Plate] = {}
        self.data: dict[str, np.ndarray] = {}
        self.data_plates: dict[str, list[str]] = {}   # optional explicit plates of covariates
        self.proposal: dict[str, dict] = {}            # latent -> {"dist": family[, "init": {param: value}]}
        self.qem: dict = {}                            # QEM's step schedule {"power", "offset"}, if set
        self.dtype: str | None = None                  # float type of its runs unless one is asked for
        self.description = ""
        self.extras: dict = {}   # optional fields the engine keeps but does not read: layout, exact
        self._order: dict | None = None   # node -> topological position; None after a change

    # ---- editing -------------------------------------------------------------------
    def add_plate(self, name: str, size: int, parent: str | None = None) -> "Model":
        _check_name(name, "plate")
        if name in self.plates:
            raise ModelError(f"plate {name!r} already exists")
        _check_size(name, size)
        if parent is not None and (not isinstance(parent, str) or parent not in self.plates):
            raise ModelError(f"plate {name!r}: the enclosing plate {_short(parent)} does not exist")
        if name in self.graph:
            raise ModelError(f"plate {name!r}: a node has the same name")
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
                 shape=None, group: str | None = None, timeseries: dict | None = None,
                 enumerate: bool | None = None) -> "Model":
        """timeseries: {"init": value} makes the latent depend on its own previous element
        along `plate`, written `prev` in its arguments; at the first element prev is `init`
        (a number or an expression of nodes outside the plate). enumerate: sum a Bernoulli,
        Categorical or Binomial latent over its support exactly instead of sampling K
        particles (None, the default: when the support has at most 16 values)."""
        _check_name(name, "node")
        if name in self.graph:
            raise ModelError(f"node {name!r} already exists")
        self._put(self._new_node(name, kind, dist, args, plate, shape, group, timeseries, enumerate))
        return self

    def update_node(self, name: str, **changes) -> "Model":
        """Change fields of a node; the graph is left as it was if the change is invalid."""
        old = self.node(name)
        fields = {k: getattr(old, k) for k in NODE_FIELDS}
        for k, v in changes.items():
            if k not in NODE_FIELDS or k == "name":
                raise ModelError(f"node {name!r}: no field {_short(k)}")
            fields[k] = copy.deepcopy(v)
        self._put(self._new_node(**fields), replace=True)
        return self

    def remove_node(self, name: str) -> "Model":
        self.node(name)
        children = [c for c in self.graph.successors(name)]
        if children:
            raise ModelError(f"node {name!r} is used by {', '.join(sorted(children))}; edit them first")
        self.graph.remove_node(name)
        self._order = None
        self.proposal.pop(name, None)
        return self

    def set_data(self, name: str, value, plates: list[str] | None = None) -> "Model":
        _check_name(name, "data")
        self.data[name] = _data_array(value, f"data {name!r}")
        if plates is not None:
            self.data_plates[name] = _plate_list(plates, f"data_plates {name!r}")
        return self

    def _new_node(self, name, kind, dist, args, plate, shape, group, timeseries=None, enumerate=None) -> Node:
        """A Node whose every field has the right type and whose constant arguments are in
        range (what can be checked without the rest of the model)."""
        _check_name(name, "node")
        where = f"node {name!r}"
        if not isinstance(kind, str) or kind not in KINDS:
            raise ModelError(f"{where}: kind must be 'latent' or 'observed', got {_short(kind)}")
        if not isinstance(dist, str):
            raise ModelError(f"{where}: dist must be a distribution name, got {_type_name(dist)}")
        spec = get_spec(dist, where)
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ModelError(f"{where}: args must be an object of arguments, got {_type_name(args)}")
        for a in args:
            if not isinstance(a, str):
                raise ModelError(f"{where}: argument name {_short(a)} is not a string")
        check_args(spec, set(args), where)
        if plate is not None and not isinstance(plate, str):
            raise ModelError(f"{where}: plate must be a plate name, got {_type_name(plate)}")
        if group is not None:
            _check_name(group, f"{where}: group")
        if enumerate is not None and not isinstance(enumerate, bool):
            raise ModelError(f"{where}: field 'enumerate' must be true or false, got {_short(enumerate)}")
        if enumerate and (kind != "latent" or dist not in ENUMERABLE or shape not in (None, [], ())):
            raise ModelError(f"{where}: only a scalar {', '.join(ENUMERABLE)} latent can be enumerated "
                             f"(field 'enumerate')")
        node = Node(name, kind, dist, {}, plate, _shape(shape, where), group, _timeseries(timeseries, plate, where),
                    enumerate)
        for a, v in args.items():
            node.args[a] = _argument(spec, a, v, node.where(a))
        node.mentions()   # parses every expression, or says why one cannot be
        return node

    def _put(self, node: Node, replace: bool = False) -> None:
        """Insert a checked node (or replace the one of its name); refused if it would make a cycle."""
        if node.plate is not None and node.plate not in self.plates:
            raise ModelError(f"{node.where()}: plate {node.plate!r} does not exist")
        if node.name in self.plates:
            raise ModelError(f"{node.where()}: a plate has the same name")
        parents = node.mentions() & set(self.graph.nodes)
        g = self.graph.copy()
        if replace:
            g.remove_edges_from(list(g.in_edges(node.name)))
        g.add_node(node.name, node=node)
        g.add_edges_from((p, node.name) for p in parents)
        if not replace:   # nodes added before the node they mention
            g.add_edges_from((node.name, c) for c in g.nodes
                             if c != node.name and node.name in g.nodes[c]["node"].mentions())
        if not nx.is_directed_acyclic_graph(g):
            cycle = " -> ".join(e[0] for e in nx.find_cycle(g)) + f" -> {nx.find_cycle(g)[0][0]}"
            raise ModelError(f"{node.where()}: this makes a cycle {cycle}")
        self.graph = g
        self._order = None

    def _add_nodes(self, nodes: list[Node]) -> None:
        """Insert many checked nodes at once, in any order: one graph, one acyclicity check."""
        for n in nodes:
            if n.plate is not None and n.plate not in self.plates:
                raise ModelError(f"{n.where()}: plate {n.plate!r} does not exist")
            if n.name in self.plates:
                raise ModelError(f"{n.where()}: a plate has the same name")
        g = self.graph.copy()
        g.add_nodes_from((n.name, {"node": n}) for n in nodes)
        for n in g.nodes:
            node = g.nodes[n]["node"]
            g.add_edges_from((p, n) for p in node.mentions() if p in g)
        if not nx.is_directed_acyclic_graph(g):
            cyc = [e[0] for e in nx.find_cycle(g)]
            raise ModelError(f"node {cyc[0]!r}: the model has a cycle {' -> '.join(cyc + [cyc[0]])}")
        self.graph = g
        self._order = None

    # ---- queries -------------------------------------------------------------------
    def node(self, name: str) -> Node:
        if not isinstance(name, str) or name not in self.graph:
            raise ModelError(f"no node named {_short(name)}")
        return self.graph.nodes[name]["node"]

    def _topological(self) -> dict:
        """Node -> position in the topological order (ties broken by order of insertion)."""
        if self._order is None:
            added = {n: i for i, n in enumerate(self.graph)}
            self._order = {n: i for i, n in enumerate(nx.lexicographical_topological_sort(
                self.graph, key=added.__getitem__))}
        return self._order

    @property
    def nodes(self) -> list[Node]:
        return [self.graph.nodes[n]["node"] for n in self._topological()]

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
        return sorted(self.graph.predecessors(name), key=self._topological().__getitem__)

    # ---- validation ----------------------------------------------------------------
    def validate(self) -> None:
        """Everything that can be checked without running: raises ModelError."""
        if not self.graph.nodes:
            raise ModelError("the model has no nodes (field 'nodes' is empty)")
        for p in self.plates.values():
            seen, q = set(), p.name
            while q is not None:
                if q in seen:
                    raise ModelError(f"plate {p.name!r}: plates nest in a cycle")
                seen.add(q)
                q = self.plates[q].parent
        known = set(self.graph.nodes) | set(self.data)
        group_plate = {}
        for node in self.nodes:
            own = {PREV} if node.timeseries is not None else set()
            for a, e in node.exprs().items():
                for name in sorted(e.names - known - own):
                    raise ModelError(f"{node.where(a)}: {name!r} names no node or data")
                for fname, plate, inside in e.reductions:
                    self._check_reduction(node.where(a), fname, plate, inside)
            init = node.init_expr()
            for name in sorted(init.names - known if init else ()):
                raise ModelError(f"node {node.name!r}, field 'timeseries.init': {name!r} names no node or data")
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
                if node.shape is not None and shape[len(sizes):] != node.shape:
                    raise ModelError(f"data {node.name!r} has shape {list(shape[len(sizes):])} per plate element, "
                                     f"but node {node.name!r} has shape {list(node.shape)}")
            elif node.name in self.data:
                raise ModelError(f"data {node.name!r}: latent {node.name!r} has the same name (data for a "
                                 f"node makes it observed: set its kind to 'observed')")
            if node.timeseries is not None:
                self._check_timeseries(node)
            if node.group is not None:
                if node.kind != "latent":
                    raise ModelError(f"{node.where()}: only latents can be grouped")
                other = group_plate.setdefault(node.group, node.plate)
                if other != node.plate:
                    raise ModelError(f"{node.where()}: group {node.group!r} mixes plates "
                                     f"{node.plate!r} and {other!r}; a group lives in one plate")
        for g in group_plate:
            if g in self.graph and self.node(g).group != g:
                raise ModelError(f"group {g!r}: node {g!r} has the same name but is not in it; rename the group")
        for name, plates in self.data_plates.items():
            if name not in self.data:
                raise ModelError(f"data_plates {name!r}: there is no data named {name!r}")
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

    def _check_timeseries(self, node: Node) -> None:
        if node.kind != "latent":
            raise ModelError(f"{node.where()}: only a latent can be a time series (field 'timeseries')")
        if node.group is not None:
            raise ModelError(f"{node.where()}: a time-series latent cannot be in a group")
        if PREV in self.graph or PREV in self.data:
            raise ModelError(f"{node.where()}: a node or data named {PREV!r} would hide the time series' own "
                             f"previous value, {PREV!r} in its arguments; rename it")
        init = node.init_expr()
        chain = self.chain(node.plate)
        for name in sorted(init.names if init else ()):
            if name in self.graph:
                plates = self.chain(self.node(name).plate)
            elif name in self.data_plates:
                plates = tuple(self.data_plates[name])
            else:   # as the engine reads a covariate: the node's plates that its leading dims match
                shape = self.data[name].shape
                plates = next((chain[:j] for j in range(len(chain), 0, -1)
                               if shape[:j] == tuple(self.plates[p].size for p in chain[:j])), ())
            if node.plate in plates:
                raise ModelError(f"node {node.name!r}, field 'timeseries.init': {name!r} lives in plate "
                                 f"{node.plate!r}, the plate the series runs along; the value before its first "
                                 f"element must come from outside it")

    def _check_reduction(self, where: str, fname: str, plate: str, inside) -> None:
        """pmean/psd reduce a plate of data: the plate exists, and what they read is data."""
        if plate not in self.plates:
            raise ModelError(f"{where}: {fname}() reduces plate {plate!r}, which does not exist")
        for name in sorted(inside):
            if name in self.graph and self.node(name).kind == "latent":
                raise ModelError(f"{where}: {fname}() reduces a plate of data, but {name!r} is a latent (a latent's "
                                 f"mean over a plate is not data: write it into the model as a node)")
            arr = self.data.get(name)
            if arr is not None and np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
                raise ModelError(f"{where}: {fname}() reads {name!r}, which has missing values (null) that it "
                                 f"cannot average")

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
            if n.timeseries is not None:
                d["timeseries"] = copy.deepcopy(n.timeseries)
            if n.enumerate is not None:
                d["enumerate"] = n.enumerate
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
        if self.dtype is not None:
            doc["dtype"] = self.dtype
        doc.update(copy.deepcopy(self.extras))
        return doc

    @classmethod
    def from_dict(cls, doc: dict, base: Path | None = None) -> "Model":
        """The model of a kn-model/1 document. `base` is the folder of the file it was read
        from: its `data_file` must lie inside it. Without one (an upload) `data_file` is refused."""
        if not isinstance(doc, dict):
            raise ModelError("a model document must be a JSON object")
        if doc.get("format") != FORMAT:
            raise ModelError(f"field 'format' must be {FORMAT!r}, got {_short(doc.get('format'))}")
        _unknown(doc, FIELDS, "the document")
        m = cls(_field(doc, "name", str, "", "model"))
        m.description = _field(doc, "description", str, "", "")
        plates = _field(doc, "plates", list, "", [])
        pending = {}
        for i, p in enumerate(plates):
            if not isinstance(p, dict) or "name" not in p or "size" not in p:
                raise ModelError(f"plates[{i}] must be an object with 'name' and 'size'")
            _check_name(p["name"], f"plates[{i}]: plate")
            _unknown(p, PLATE_FIELDS, f"plate {p['name']!r}")
            if p["name"] in pending:
                raise ModelError(f"plate {p['name']!r} is listed twice")
            if p.get("in") is not None and not isinstance(p["in"], str):
                raise ModelError(f"plate {p['name']!r}: field 'in' must be the name of a plate, got "
                                 f"{_type_name(p['in'])}")
            pending[p["name"]] = p
        while pending:  # add enclosing plates first, whatever the listed order
            ready = [p for p in pending.values() if p.get("in") is None or p.get("in") in m.plates]
            if not ready:
                p = next(iter(pending.values()))
                raise ModelError(f"plate {p['name']!r}: the enclosing plate {_short(p.get('in'))} does not "
                                 f"exist or plates nest in a cycle")
            for p in ready:
                m.add_plate(p["name"], p["size"], p.get("in"))
                del pending[p["name"]]
        if doc.get("data_file") is not None:
            for k, v in _read_data_file(doc["data_file"], base).items():
                m.set_data(k, v)
        for k, v in _field(doc, "data", dict, "", {}).items():
            m.set_data(k, v)
        for k, v in _field(doc, "data_plates", dict, "", {}).items():
            _check_name(k, "data_plates: data")
            m.data_plates[k] = _plate_list(v, f"data_plates {k!r}")
        nodes, names = [], set()
        for i, n in enumerate(_field(doc, "nodes", list, "", [])):
            if not isinstance(n, dict) or not {"name", "kind", "dist"} <= set(n):
                raise ModelError(f"nodes[{i}] must be an object with 'name', 'kind' and 'dist'")
            _check_name(n["name"], f"nodes[{i}]: node")
            _unknown(n, NODE_FIELDS, f"node {n['name']!r}")
            if n["name"] in names:
                raise ModelError(f"node {n['name']!r} is listed twice")
            names.add(n["name"])
            nodes.append(m._new_node(n["name"], n["kind"], n["dist"], n.get("args"), n.get("plate"),
                                     n.get("shape"), n.get("group"), n.get("timeseries"), n.get("enumerate")))
        m._add_nodes(nodes)
        for k, v in _field(doc, "proposal", dict, "", {}).items():
            m.proposal[k] = _proposal_entry(k, v)
        if doc.get("qem") is not None:
            m.qem = _qem(doc["qem"])
        m.dtype = _dtype(doc.get("dtype"))
        if doc.get("layout") is not None:
            _layout(doc["layout"])
        _field(doc, "exact", dict, "")
        m.extras = {k: copy.deepcopy(doc[k]) for k in EXTRAS if doc.get(k) is not None}
        if m.graph.nodes:
            m.validate()
        return m

    @classmethod
    def load(cls, path) -> "Model":
        """A model file: a regular file of at most safeio.MODEL_LIMIT bytes; its data_file
        (an .npz) must lie in the same folder or below it."""
        path = Path(path)
        raw = read_bounded(path, MODEL_LIMIT, "model file")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ModelError(f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ModelError(f"{path.name}: not valid JSON ({e})") from None
        except (ValueError, RecursionError) as e:   # an integer of over 4300 digits; arrays nested too deep
            raise ModelError(f"{path.name}: not a JSON document this reader accepts ({type(e).__name__}: "
                             f"{str(e)[:100]})") from None
        return cls.from_dict(doc, base=path.parent)

    def save(self, path) -> None:
        """Write the kn-model/1 document atomically (the old file stays whole until the new one is)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

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


def _argument(spec, arg: str, v, where: str):
    """A node argument as the model keeps it: a number, a list (a constant array), an
    expression string or a Param; constants (and a Param's initial value) in range."""
    if isinstance(v, dict):
        if set(v) != {"param"}:
            raise ModelError(f"{where}: an object argument must be {{\"param\": init}}, got keys "
                             f"{', '.join(map(_short, v))}")
        check_constant(spec, arg, _constant(v["param"], f"{where}, initial value"), f"{where}, initial value")
        return Param(v["param"])
    if isinstance(v, Param):
        check_constant(spec, arg, _constant(v.init, f"{where}, initial value"), f"{where}, initial value")
        return v
    if isinstance(v, str):   # parsed by the node's mentions()
        return v
    if _is_number(v) or isinstance(v, (list, tuple)):
        check_constant(spec, arg, _constant(v, where), where)
        return list(v) if isinstance(v, tuple) else v
    raise ModelError(f"{where}: must be a number, a list, an expression or {{\"param\": init}}, "
                     f"got {_type_name(v)}")


def _timeseries(v, plate, where: str) -> dict | None:
    """A node's "timeseries" field: {"plate"?: its own plate, "init": number, list or expression}."""
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ModelError(f"{where}: field 'timeseries' must be an object like {{\"init\": 0}}, got {_type_name(v)}")
    _unknown(v, TIMESERIES_FIELDS, f"{where}, field 'timeseries'")
    if plate is None:
        raise ModelError(f"{where}: a time series runs along a plate, but the node has none")
    if v.get("plate", plate) != plate:
        raise ModelError(f"{where}: field 'timeseries.plate' must be the node's own plate {plate!r} (a series "
                         f"runs along its innermost plate), got {_short(v.get('plate'))}")
    if "init" not in v:
        raise ModelError(f"{where}: field 'timeseries' needs 'init', the value before the first element")
    init = v["init"]
    if isinstance(init, str):
        Expr(init, f"{where}, field 'timeseries.init'")
    elif _is_number(init) or isinstance(init, list):
        _constant(init, f"{where}, field 'timeseries.init'")
    else:
        raise ModelError(f"{where}: field 'timeseries.init' must be a number, a list or an expression, got "
                         f"{_type_name(init)}")
    return {"init": copy.deepcopy(init)}


def _plate_list(v, where: str) -> list[str]:
    if not isinstance(v, (list, tuple)) or not all(isinstance(p, str) for p in v):
        raise ModelError(f"{where}: must be a list of plate names, got {_short(v)}")
    if len(set(v)) != len(v):
        raise ModelError(f"{where}: names a plate twice")
    return list(v)


def _proposal_entry(name, v) -> dict:
    """A proposal entry: "prior", or {["dist": family][, "init": {parameter: number or list}]}."""
    if not isinstance(name, str):
        raise ModelError(f"proposal for {_short(name)}: not a latent name")
    where = f"proposal for {name!r}"
    if v == "prior":
        return {"dist": "prior"}
    if not isinstance(v, dict):
        raise ModelError(f"{where}: must be \"prior\" or an object like {{\"dist\": \"Normal\"}}, "
                         f"got {_type_name(v)}")
    _unknown(v, PROPOSAL_FIELDS, where)
    from .proposal import FAMILIES
    if "dist" in v and (not isinstance(v["dist"], str) or v["dist"] not in ("prior", *FAMILIES)):
        raise ModelError(f"{where}: field 'dist' must be one of prior, {', '.join(FAMILIES)}; "
                         f"got {_short(v.get('dist'))}")   # absent: the default family for the latent
    init = v.get("init", {})
    if not isinstance(init, dict):
        raise ModelError(f"{where}: field 'init' must be an object of numbers or lists, got {_type_name(init)}")
    for k, x in init.items():
        if not isinstance(k, str):
            raise ModelError(f"{where}: field 'init' has a key {_short(k)} that is not a string")
        _constant(x, f"{where}, init {k!r}")
    return copy.deepcopy(v)


def _qem(v) -> dict:
    """The model file's QEM step schedule, checked now rather than at the first fit."""
    from .fit import QEM_SCHEDULE, qem_schedule
    if not isinstance(v, dict):
        raise ModelError(f"field 'qem' must be an object {{\"power\": p, \"offset\": t0}}, got {_type_name(v)}")
    qem_schedule({**QEM_SCHEDULE, **v}, "field 'qem'")
    return dict(v)


def _dtype(v) -> str | None:
    if v is not None and (not isinstance(v, str) or v not in DTYPES):
        raise ModelError(f"field 'dtype' must be \"float32\" or \"float64\", got {_short(v)}")
    return v


def _layout(v) -> None:
    if not isinstance(v, dict):
        raise ModelError(f"field 'layout' must be an object of positions, got {_type_name(v)}")
    for k, x in v.items():
        if not (isinstance(x, list) and len(x) == 2 and all(_is_number(c) and math.isfinite(c) for c in x)):
            raise ModelError(f"field 'layout': the position of {_short(k)} must be [x, y], got {_short(x)}")


def _read_data_file(name, base) -> dict:
    """The arrays of `data_file`, which must lie inside the folder `base` (after resolving
    `..` and symlinks); refused where there is no folder (a document that was uploaded)."""
    if not isinstance(name, str) or not name:
        raise ModelError(f"field 'data_file' must be the name of an .npz file, got {_short(name)}")
    if base is None:
        raise ModelError("field 'data_file' is not allowed in a model that is not read from a file (an "
                         "upload): put the arrays in its 'data' field")
    if Path(name).is_absolute():
        raise ModelError(f"field 'data_file': {name!r} is an absolute path; name a file in the model's folder")
    try:
        root = Path(base).resolve()
        path = (root / name).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise ModelError(f"field 'data_file': cannot resolve {name!r} ({e})") from None
    if not path.is_relative_to(root):
        raise ModelError(f"field 'data_file': {name!r} leads outside the model's folder")
    try:
        return load_npz(path, DATA_LIMIT, "data file")
    except ModelError as e:
        raise ModelError(f"field 'data_file': {e}") from None


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
