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
NEVER_IMPORT_CACHE = ("vea_bench.datasets", "vea_bench.records", *FOUNDATION)


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
