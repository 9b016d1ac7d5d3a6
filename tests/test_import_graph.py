"""The import graph of the lrscope package, built from its source with `ast`: no cycle among
module-level imports (the ones that run when a module is imported, so a cycle there breaks
depending on which module is imported first). Imports inside functions run later and are kept
apart: they are how a module reaches a heavier or higher one lazily."""

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]  # the repository root is the package
NOT_PACKAGE = {"tests", "benchmarks", "examples", "scripts", "docs"}


def modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if rel.parts[0] in NOT_PACKAGE or any(part.startswith(".") for part in rel.parts):
            continue
        parts = [package, *rel.with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _targets(mod: str, is_pkg: bool, node, known) -> list[str]:
    """The package modules an import statement in `mod` imports (the deepest known one of each name)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = here[:len(here) - node.level + 1] if node.level else []
        tgt = ".".join(base + (node.module.split(".") if node.module else []))
        names = [f"{tgt}.{a.name}" if f"{tgt}.{a.name}" in known else tgt for a in node.names]
    out = []
    for t in names:
        while t and t not in known:
            t = t.rpartition(".")[0]
        if t and t != mod:
            out.append(t)
    return out


def import_graph(root: Path = ROOT, package: str = "lrscope") -> tuple[dict, dict]:
    """(module-level edges, function-level edges): module -> set of package modules it imports.
    Module level: the module body, class bodies and any block in them but `if TYPE_CHECKING:`."""
    known = modules(root, package)
    top: dict[str, set] = {m: set() for m in known}
    inner: dict[str, set] = {m: set() for m in known}

    def walk(mod, is_pkg, node, at_top):
        for c in ast.iter_child_nodes(node):
            if isinstance(c, (ast.Import, ast.ImportFrom)):
                (top if at_top else inner)[mod].update(_targets(mod, is_pkg, c, known))
            elif isinstance(c, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(mod, is_pkg, c, False)
            elif isinstance(c, ast.If) and "TYPE_CHECKING" in ast.unparse(c.test):
                walk(mod, is_pkg, c, False)
            else:
                walk(mod, is_pkg, c, at_top)

    for mod, path in known.items():
        walk(mod, path.name == "__init__.py", ast.parse(path.read_text(), str(path)), True)
    return top, inner


def cycles(edges: dict[str, set]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = iter(range(10**9))

    def visit(v):
        index[v] = low[v] = next(counter)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_level_import_cycles():
    top, _ = import_graph()
    assert len(top) > 50 and top["lrscope.train.loop"] >= {"lrscope.train.step", "lrscope.train.recorder"}
    assert cycles(top) == [], "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles(top))


def test_training_modules_import_one_way():
    """The loop, its step and its recorder: the loop uses the other two, neither reaches back,
    not even from inside a function."""
    top, inner = import_graph()
    both = {m: top[m] | inner[m] for m in top}
    for low in ("lrscope.train.recorder", "lrscope.train.step", "lrscope.train.optim"):
        assert not both[low] & {"lrscope.train.loop", "lrscope.train.batched"}, low
    assert "lrscope.train.loop" not in both["lrscope.train.recorder"]


def test_the_check_sees_cycles(tmp_path):
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import c\n"
                                      "def f():\n    from ..a import x\n")
    (pkg / "c.py").write_text("class C:\n    from . import a\n")
    top, inner = import_graph(pkg, "p")
    assert top["p.a"] == {"p.sub.b"} and top["p.c"] == {"p.a"} and top["p.sub.b"] == set()
    assert inner["p.sub.b"] == {"p.a", "p.c"}
    assert cycles(top) == []
    assert cycles({m: top[m] | inner[m] for m in top}) == [["p.a", "p.c", "p.sub.b"]]
    (pkg / "sub" / "b.py").write_text("import p.c\n")
    top, _ = import_graph(pkg, "p")
    assert cycles(top) == [["p.a", "p.c", "p.sub.b"]]


# DESIGN.md's dependency rule, package by package (module- and function-level imports alike): what
# each subpackage may import besides itself and the root's small shared modules (errors, parallel,
# machine). store reaches probe only for the probe declarations (probe/registry.py,
# probe/declare.py: names, descriptions, per-run coordinates; no computation), train only for a
# plugin's ProbeEntry type (train/plugins.py).
ALLOWED = {
    "store": {"probe.registry", "probe.declare"},
    "train": {"store", "probe.registry", "probe.declare"},
    "probe": {"store", "train"},
    "viz": {"store", "probe", "train"},
    "cli": {"store", "probe", "train", "viz"},
}


def test_packages_depend_as_design_md_says():
    top, inner = import_graph()
    bad = []
    for mod in top:
        parts = mod.split(".")
        if len(parts) < 3 or parts[1] not in ALLOWED:
            continue
        for tgt in top[mod] | inner[mod]:
            t = tgt.split(".")[1:]
            if not t or t[0] == parts[1] or t[0] in ("errors", "parallel", "machine"):
                continue
            ok = ALLOWED[parts[1]]
            if not (t[0] in ok or ".".join(t[:2]) in ok):
                bad.append(f"{mod} -> {tgt}")
    assert not bad, "imports against DESIGN.md's dependency rule:\n" + "\n".join(sorted(bad))
