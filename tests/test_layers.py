"""The package's layering, read from the import statements of every module (no import is run).

Why: a lower layer that imports a higher one (the datasets reaching up into the cache) makes a
newcomer's one-file extension drag in the whole stack, and a module that imports another
package's private names breaks when that package is refactored. The rules:

- the foundation modules (errors, hashing, registry, versions, splits, labels, progress, devices)
  import no other vea_bench layer above them;
- datasets and run records never import the cache;
- outside `vea_bench/cache/`, nothing imports a private ``_name`` from `vea_bench.cache.*`;
- the library never imports the CLI package (`vea_bench_cli`).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import vea_bench

PKG = Path(vea_bench.__file__).resolve().parent
ROOT = PKG.parent

# module -> the vea_bench modules it may import (prefixes); anything else is a layering error.
FOUNDATION: dict[str, tuple[str, ...]] = {
    "vea_bench.errors": (),
    "vea_bench.hashing": (),
    "vea_bench.versions": ("vea_bench",),  # only the package's __version__
    "vea_bench.splits": (),
    "vea_bench.registry": ("vea_bench.errors",),
    "vea_bench.progress": (),
    "vea_bench.devices": ("vea_bench.errors",),
}
NEVER_IMPORT_CACHE = ("vea_bench.datasets", "vea_bench.results", *FOUNDATION)


@dataclass(frozen=True)
class Import:
    module: str  # the module imported from (absolute)
    names: tuple[str, ...]  # names taken from it (empty for ``import x``)
    line: int


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> list[Import]:
    """Every import in the file, function-local ones included, with relative ones made absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend(Import(a.name, (), node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append(Import(base, tuple(a.name for a in node.names), node.lineno))
    return out


def _library_modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


MODULES = {_module_name(p): p for p in _library_modules()}


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _vea_imports(module: str) -> list[Import]:
    """Imports of vea_bench modules; ``from vea_bench import x`` counts as importing vea_bench.x
    when x is a submodule."""
    out = []
    for imp in _imports(MODULES[module]):
        if not _within(imp.module, "vea_bench"):
            continue
        if imp.module == "vea_bench" and imp.names:
            for n in imp.names:
                sub = f"vea_bench.{n}"
                out.append(Import(sub if sub in MODULES or any(_within(m, sub) for m in MODULES) else "vea_bench",
                                  (), imp.line))
        else:
            out.append(imp)
    return out


def test_the_parser_sees_the_imports_these_rules_are_about() -> None:
    """Guard against a rule that passes because nothing was parsed."""
    assert len(MODULES) > 40 and "vea_bench.cache.store" in MODULES and "vea_bench.datasets.base" in MODULES
    ops = {i.module for i in _vea_imports("vea_bench.cache.ops")}
    assert "vea_bench.cache.store" in ops
    # relative and function-local imports are resolved too
    local = [i for i in _imports(MODULES["vea_bench.extract"]) if i.module == "vea_bench.cache.store"]
    assert local, "function-local imports must be seen"


@pytest.mark.parametrize("module", sorted(FOUNDATION))
def test_foundation_modules_import_nothing_above_them(module: str) -> None:
    allowed = FOUNDATION[module]
    bad = [f"line {i.line}: {i.module}" for i in _vea_imports(module)
           if not any(i.module == a or (a != "vea_bench" and _within(i.module, a)) for a in allowed)]
    assert not bad, f"{module} may import only {allowed or 'no vea_bench module'}; found {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if any(_within(m, p) for p in NEVER_IMPORT_CACHE)))
def test_lower_layers_never_import_the_cache(module: str) -> None:
    bad = [f"line {i.line}: {i.module}" for i in _vea_imports(module) if _within(i.module, "vea_bench.cache")]
    assert not bad, f"{module} must not import vea_bench.cache (move what it needs below it): {bad}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _within(m, "vea_bench.cache")))
def test_no_private_cache_names_outside_the_cache(module: str) -> None:
    bad = [f"line {i.line}: {i.module}.{n}" for i in _vea_imports(module) if _within(i.module, "vea_bench.cache")
           for n in i.names if n.startswith("_")]
    assert not bad, f"{module} imports private cache names (ask FeatureCache for a public method): {bad}"


def test_cache_ops_uses_only_the_stores_public_names() -> None:
    """`ops` is built on the store's public surface, so the file format can change under it."""
    bad = [f"line {i.line}: {n}" for i in _imports(MODULES["vea_bench.cache.ops"])
           if _within(i.module, "vea_bench.cache") for n in i.names if n.startswith("_")]
    text = MODULES["vea_bench.cache.ops"].read_text(encoding="utf-8")
    tree = ast.parse(text)
    private_attrs = sorted({f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree)
                            if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")})
    assert not bad and not private_attrs, bad + private_attrs


@pytest.mark.parametrize("module", sorted(MODULES))
def test_the_library_never_imports_the_cli(module: str) -> None:
    bad = [f"line {i.line}" for i in _imports(MODULES[module]) if _within(i.module, "vea_bench_cli")]
    assert not bad, f"{module} imports vea_bench_cli ({bad}); the CLI sits on top of the library"


# ----------------------------------------------------------------------------- layers, cycles and sizes

# The package's layers, bottom first. A module may import its own layer and those below it, never
# one above: a low layer stays usable (and testable) without the stack above it. Every module must
# sit in one layer (the longest matching prefix places it), so a new package is placed on purpose.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("vea_bench", "vea_bench.errors", "vea_bench.hashing", "vea_bench.progress", "vea_bench.versions",
     "vea_bench.splits"),
    ("vea_bench.registry", "vea_bench.devices", "vea_bench.labels", "vea_bench.schema", "vea_bench.distributed"),
    ("vea_bench.cache", "vea_bench.results", "vea_bench.tracking"),
    ("vea_bench.datasets", "vea_bench.prompts", "vea_bench.metrics"),
    ("vea_bench.models",),
    ("vea_bench.train",),
    ("vea_bench.lineage",),
    ("vea_bench.extract", "vea_bench.heads"),
    ("vea_bench.report",),
    ("vea_bench.pipeline",),
)

MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 500
LENGTH_CAPPED = ("vea_bench/cache/", "vea_bench/report/tables.py")   # modules that must stay readable whole


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if _within(module, prefix) and (best is None or len(prefix) > best[1]):
                best = (i, len(prefix))
    return None if best is None else best[0]


def _edges(module: str) -> set[str]:
    """The vea_bench modules ``module`` imports: ``from pkg import sub`` names the submodule, any
    other name the module it comes from (a function-local import counts like a top-level one)."""
    out: set[str] = set()
    for imp in _vea_imports(module):
        subs = [n for n in imp.names if f"{imp.module}.{n}" in MODULES]
        out.update(f"{imp.module}.{n}" for n in subs)
        if len(subs) < len(imp.names) or not imp.names:
            target = imp.module
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target:
                out.add(target)
    out.discard(module)
    return out


def _is_face(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _cycles() -> list[frozenset[str]]:
    """Import cycles among the package's modules. A package's face (``__init__``) gathers its
    modules to register them, so the edges out of a face are not followed: a module may import its
    own package to have the registry filled."""
    return _strongly_connected({m: (set() if _is_face(m) else _edges(m)) for m in MODULES})


def _strongly_connected(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Groups of two or more nodes that reach each other (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(frozenset(group))

    for m in sorted(graph):
        if m not in index:
            visit(m)
    return out


def test_every_module_sits_in_a_layer() -> None:
    unplaced = sorted(m for m in MODULES if _layer(m) is None)
    assert not unplaced, f"place these in LAYERS (tests/test_layers.py): {unplaced}"


def test_imports_never_run_up_the_layers() -> None:
    up = {(m, d) for m in MODULES for d in _edges(m)
          if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)}  # type: ignore[operator]
    assert not up, f"imports running up the layers: {sorted(up)}"


def test_no_import_cycles_lazy_imports_included() -> None:
    found = set(_cycles())
    assert not found, f"import cycles: {[sorted(c) for c in found]}"


def test_the_cycle_finder_sees_lazy_imports_and_loops() -> None:
    """The rules above are only as good as the finder: function-local imports are edges, and a
    loop of any length is one group while a chain is none."""
    local = [i for i in _imports(MODULES["vea_bench.extract"]) if i.module == "vea_bench.cache.store"]
    assert local and "vea_bench.cache.store" in _edges("vea_bench.extract")
    assert _edges("vea_bench.cache.ops") >= {"vea_bench.cache.store", "vea_bench.errors"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _strongly_connected(graph) == [frozenset({"a", "b", "c"})]


def _long_functions() -> set[tuple[str, str]]:
    out = set()
    for path in _library_modules():
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                    out.add((rel, node.name))
    return out


def test_no_function_is_over_100_lines() -> None:
    long = _long_functions()
    assert not long, f"split these (over {MAX_FUNCTION_LINES} lines): {sorted(long)}"


def test_cache_modules_and_the_tables_module_stay_under_500_lines() -> None:
    long = set()
    for path in _library_modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(LENGTH_CAPPED) and len(path.read_text(encoding="utf-8").splitlines()) > MAX_MODULE_LINES:
            long.add(rel)
    assert not long, f"split these (over {MAX_MODULE_LINES} lines): {sorted(long)}"
