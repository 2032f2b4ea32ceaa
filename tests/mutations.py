"""Mutations of the gallery's model documents, and what loading one must do.

`mutate(doc, chooser)` applies one to three random edits to a copy of a kn-model/1
document: a value replaced by junk (wrong types, NaN/inf, out-of-range and enormous
numbers, hostile and non-normalised unicode strings, nested junk), a key dropped or
misspelt, a number pushed out of range, a name swapped for another name of the document,
an entry duplicated. `outcome(doc)` loads the result, samples it at K=3 (and, if asked,
runs a QEM Fitter for two iterations) and sorts what happened into

    ok        loaded and sampled, and the model means what the document says
    refused   a ModelError whose message names a node, plate, data or field of the document
    unnamed   a ModelError that names none of them
    raw       any other exception (a torch or Python error), or a hang
    silent    loaded and sampled, but the model does not do what the document says
              (a field dropped or changed on the way in, a likelihood that vanished, a
              non-normalised name, data named like a latent, a NaN estimate)

The property-based suite (test_hostile_input.py) drives the choices with hypothesis; run
this file for counts over seeded random mutations, against any checkout's engine:

    PYTHONPATH=/path/to/checkout python tests/mutations.py --n 2500 --seed 0
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import random
import signal
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GALLERY = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "assets" / "models").glob("*.json"))}
MEMORY_BUDGET = 1 << 30   # the planner refuses (or splits) anything bigger, so no mutant can take the machine's RAM

BOLD = {c: chr(0x1D586 + ord(c) - ord("a")) for c in "abcdefghijklmnopqrstuvwxyz"}   # 𝖆.. : NFKC-normalises to a..
JUNK = [None, True, False, 0, -1, 1.5, -2.5, 1e39, -1e39, 1e-50, 10 ** 310, 2 ** 63, float("nan"), float("inf"),
        -float("inf"), "", "x", "a b", "\u0000", "\u202emu", "𝖒𝖚", "<img src=x onerror=alert(1)>", "1" * 310,
        "-" * 1000 + "x", "(" * 60 + "x" + ")" * 60, "x" * 3000, "__import__('os')", [], [1], ["a"], [1, [2]],
        [[1, 2], [3]], [None], {}, {"param": "x"}, {"param": -1}, {"a": 1}, [[[[[]]]]], {"dist": "Normal"},
        "prior", "Normal", "counties", 3, "3", [3.5], [0], [-1], [3], 1e308, "float64", "float16", "HalfStudentT",
        "where(x, 1)", "pmean(mu, 'groups')", "cumsum(mu)", "mu < 1 < 2"]


class RandomChooser:
    """Choices from a seeded random.Random (the counting script)."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def choice(self, seq):
        return self.rng.choice(list(seq))

    def junk(self):
        if self.rng.random() < 0.7:
            return copy.deepcopy(self.rng.choice(JUNK))
        return self._nested(3)

    def _nested(self, depth):
        r = self.rng.random()
        if depth == 0 or r < 0.3:
            return copy.deepcopy(self.rng.choice(JUNK[:25]))
        if r < 0.65:
            return [self._nested(depth - 1) for _ in range(self.rng.randint(0, 3))]
        return {self.rng.choice(["loc", "scale", "param", "name", "x", "𝖒𝖚"]): self._nested(depth - 1)
                for _ in range(self.rng.randint(0, 3))}


def paths(doc) -> list[tuple]:
    """Every place in the document worth editing: data arrays only at their first, second
    and last entries per dim, the free-form 'exact' field only as a whole."""
    out = []

    def walk(v, path):
        out.append(path)
        if isinstance(v, dict) and path != ("exact",):
            for k, x in v.items():
                walk(x, path + (k,))
        elif isinstance(v, list):
            idx = range(len(v)) if path[:1] != ("data",) else sorted({0, 1, len(v) - 1} & set(range(len(v))))
            for i in idx:
                walk(v[i], path + (i,))
    walk(doc, ())
    return out


def names(doc) -> set[str]:
    """Names of nodes, plates, data, arguments and fields in a (possibly mutated) document."""
    out = set()

    def add(x):
        if isinstance(x, str) and x:
            out.add(x)
    if not isinstance(doc, dict):
        return out
    for k, v in doc.items():
        add(k)
        if isinstance(v, dict):
            for kk, vv in v.items():
                add(kk)
        if isinstance(v, list):
            for e in v:
                if isinstance(e, dict):
                    for kk, vv in e.items():
                        add(kk)
                        if kk in ("name", "in", "plate", "group", "dist", "kind"):
                            add(vv)
                        if kk == "args" and isinstance(vv, dict):
                            for a in vv:
                                add(a)
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _typo(key: str, chooser) -> str:
    ops = [key[:-1] or "x", key + "s", key.upper(), key.capitalize(), key[::-1], "_" + key,
           "".join(BOLD.get(c, c) for c in key), key + " "]
    return chooser.choice([k for k in ops if k != key] or ["x"])


def _other_names(doc) -> list[str]:
    out = []
    for key in ("nodes", "plates"):
        if isinstance(doc.get(key), list):
            out += [e.get("name") for e in doc[key] if isinstance(e, dict)]
    if isinstance(doc.get("data"), dict):
        out += list(doc["data"])
    return [x for x in out if isinstance(x, str)] or ["x"]


def mutate_once(doc, chooser) -> str:
    """Edit `doc` in place; returns what was done."""
    path = chooser.choice(paths(doc)[1:])
    parent, key = _get(doc, path[:-1]), path[-1]
    v = parent[key]
    kinds = ["replace", "replace", "drop", "type"]
    if isinstance(parent, dict):
        kinds += ["rename", "add_key"]
    if isinstance(parent, list):
        kinds += ["duplicate"]
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        kinds += ["number", "number", "number"]
    if isinstance(v, str):
        kinds += ["string", "string", "swap_name"]
    kind = chooser.choice(kinds)
    where = "/".join(map(str, path))
    if kind == "replace":
        new = chooser.junk()
        parent[key] = new
        return f"{where} = {_brief(new)}"
    if kind == "drop":
        del parent[key]
        return f"drop {where}"
    if kind == "type":
        new = chooser.choice([str(v), [v], {"value": v}, None, json.dumps(v, allow_nan=True)])
        parent[key] = new
        return f"{where} = {_brief(new)}"
    if kind == "rename":
        new = _typo(key, chooser)
        parent[new] = parent.pop(key)
        return f"rename {where} -> {new!r}"
    if kind == "add_key":
        new = chooser.choice([_typo(key, chooser), "in", "inn", "Plate", "shape", "init", "extra", "dtype"])
        if new not in parent:
            parent[new] = copy.deepcopy(v) if chooser.choice([0, 1]) else chooser.junk()
            return f"add {'/'.join(map(str, path[:-1]))}/{new}"
        return "no change"
    if kind == "duplicate":
        parent.insert(key, copy.deepcopy(v))
        return f"duplicate {where}"
    if kind == "number":
        scaled = [v * 1e39, v + 0.5, v * 1000] if abs(v) < 1e300 else []
        new = chooser.choice([-v, 0, -1, 1e39, -1e39, 1e-50, float("nan"), float("inf"), -float("inf"), 10 ** 310,
                              True, str(v)[:400], -abs(v) - 1, *scaled])
        parent[key] = new
        return f"{where}: {v!r} -> {_brief(new)}"
    if kind == "string":
        new = chooser.choice([v + "x", v.upper(), "", "".join(BOLD.get(c, c) for c in v), v + " ", "\u202e" + v,
                              v * 300, "<script>alert(1)</script>", v + " + 1e39", v + " ** 1e5",
                              "-" * 400 + v, v + "[99]", f"log({v})", f"-({v})", f"{v} - 1000",
                              f"where({v} > 0, {v}, -{v})", f"cumsum({v})", f"({v} <= 1) * {v}",
                              f"pmean({v}, 'obs')", f"psd({v}, \"groups\", {v})", f"where({v})"])
        parent[key] = new
        return f"{where}: {_brief(v)} -> {_brief(new)}"
    new = chooser.choice(_other_names(doc))
    parent[key] = new
    return f"{where}: {_brief(v)} -> {new!r}"


def mutate(doc, chooser, n: int | None = None) -> tuple[dict, list[str]]:
    doc = copy.deepcopy(doc)
    done = []
    for _ in range(n if n is not None else chooser.choice([1, 1, 2, 3])):
        done.append(mutate_once(doc, chooser))
    return doc, done


def _brief(v, n=50) -> str:
    r = repr(v)
    return r if len(r) <= n else r[:n] + "..."


# ---- what loading a mutant must do ----------------------------------------------------
def _canonical(doc) -> dict:
    """The document as the model should keep it: defaults filled in, lists of named
    entries keyed by name, NaN as null."""
    def nulls(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, (list, tuple)):
            return [nulls(x) for x in v]
        if isinstance(v, dict):
            return {k: nulls(x) for k, x in v.items()}
        return v
    d = {k: v for k, v in doc.items() if v is not None}
    out = {"name": d.get("name", "model"), "description": d.get("description", "")}
    out["plates"] = {p["name"]: {k: v for k, v in p.items() if k != "name" and v is not None}
                     for p in d.get("plates", [])}
    out["nodes"] = {n["name"]: {k: v for k, v in n.items() if k != "name" and v is not None and
                                not (k == "args" and v == {})} for n in d.get("nodes", [])}
    out["data"] = nulls(d.get("data", {}))
    out["data_plates"] = d.get("data_plates", {})
    out["proposal"] = {k: ({"dist": "prior"} if v == "prior" else v) for k, v in d.get("proposal", {}).items()}
    for k in ("exact", "layout", "qem", "dtype"):
        if k in d:
            out[k] = d[k]
    return nulls(out)


def _first_difference(a, b, path="") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}/{k}"
            d = _first_difference(a[k], b[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return path
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{path}/{i}")
            if d:
                return d
        return None
    return None if a == b and type(a == b) is bool else path


def audit(doc, model, sample) -> str | None:
    """Why a model that loaded and sampled does not do what `doc` says (None if it does)."""
    kept = _canonical(json.loads(json.dumps(model.to_dict(), allow_nan=True)))
    try:
        said = _canonical(doc)
    except (KeyError, TypeError, AttributeError) as e:   # the document is malformed, yet loaded
        return f"a malformed document loaded ({type(e).__name__}: {e})"
    diff = _first_difference(said, kept)
    if diff:
        return f"the model does not keep {diff} as the document says"
    taken = set(model.graph) | set(model.plates) | set(model.data) | set(model.proposal) | \
        {n.group for n in model.nodes if n.group}   # not the free-form fields' keys
    for name in taken:
        if unicodedata.normalize("NFKC", name) != name:
            return f"the name {name!r} was taken although an expression reads it as another"
    for node in doc.get("nodes", []):
        for v in (node.get("args") or {}).values():
            if isinstance(v, str) and unicodedata.normalize("NFKC", v) != v:
                return f"the expression {v!r} was taken although Python reads it as another"
    for name in model.latents:
        if name in model.data:
            return f"data {name!r} is named like a latent and ignored"
    for name in model.observed:
        f = sample.factors.get(name)
        if f is not None and bool((f.t == 0).all()):
            return f"the likelihood of {name!r} vanished (its factor is all zeros)"
    for name in model.latents:
        if not bool(sample.mean(name).isfinite().all()):
            return f"the posterior mean of {name!r} is not finite"
    return None


def named(message: str, doc, original) -> bool:
    pool = names(doc) | names(original) | {"format", "name", "plates", "nodes", "data", "args", "size"}
    return any(repr(n) in message or f"{n}[" in message for n in pool)


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang()


def outcome(doc, original, fit: bool = False, seconds: int = 60) -> tuple[str, str]:
    """(kind, detail) of loading `doc` (a mutant of `original`), sampling it and, with
    `fit`, two QEM iterations."""
    from engine import Model, ModelError
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        m = Model.from_dict(doc)
        s = m.sample(K=3, seed=0, memory_budget=MEMORY_BUDGET)
        why = audit(doc, m, s)
        if why:
            return "silent", why
        if fit:
            from engine.fit import Fitter
            for _ in Fitter(m, "qem", K=3, seed=0, memory_budget=MEMORY_BUDGET).run(2):
                pass
        return "ok", ""
    except ModelError as e:
        msg = str(e)
        return ("refused" if named(msg, doc, original) else "unnamed"), msg[:300]
    except Hang:
        return "raw", f"hang: more than {seconds} s"
    except BaseException as e:   # noqa: BLE001 - sorting every other failure is the point
        if isinstance(e, KeyboardInterrupt):
            raise
        return "raw", f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fit-every", type=int, default=10, help="run the Fitter on every n-th mutant")
    ap.add_argument("--show", type=int, default=3, help="examples printed per class of failure")
    ap.add_argument("--dump", help="write one JSON line per mutant here (to compare two engines)")
    args = ap.parse_args(argv)
    import engine
    import torch
    torch.set_num_threads(1)
    print(f"engine: {engine.__file__}")
    rng = random.Random(args.seed)
    counts, examples = collections.Counter(), collections.defaultdict(list)
    dump = open(args.dump, "w") if args.dump else None
    for i in range(args.n):
        name = rng.choice(sorted(GALLERY))
        doc, done = mutate(GALLERY[name], RandomChooser(rng))
        kind, detail = outcome(doc, GALLERY[name], fit=args.fit_every > 0 and i % args.fit_every == 0)
        counts[kind] += 1
        cls = detail.split(":")[0] if kind == "raw" else detail[:60]
        examples[(kind, cls)].append(f"{name}: {'; '.join(done)} -> {detail[:200]}")
        if dump:
            dump.write(json.dumps({"i": i, "model": name, "done": done, "kind": kind, "detail": detail}) + "\n")
    print(f"{args.n} mutants (seed {args.seed}): " + ", ".join(f"{k} {counts[k]}" for k in
                                                              ("ok", "refused", "unnamed", "raw", "silent")))
    for (kind, cls), ex in sorted(examples.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
        if kind in ("ok", "refused"):
            continue
        print(f"[{kind}] {len(ex)} x {cls}")
        for e in ex[:args.show]:
            print(f"    {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
