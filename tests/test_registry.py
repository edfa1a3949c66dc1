"""The one registry behind datasets, backends, teachers, heads and gates: names, aliases, lazy
entries, duplicates, did-you-mean, and `build`, which refuses an option its factory does not take.

The last tests run over every registry the package defines (found from the source), so a new
registry or a new entry is checked without a new test.
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

import vea_bench
from vea_bench.errors import VeaError
from vea_bench.registry import Registry, RegistryError, build


def _reg() -> Registry[Any]:
    reg: Registry[Any] = Registry("widget")
    reg.add("alpha", 1, aliases=("a", "first"))
    reg.add("beta_two", 2)
    return reg


def test_names_are_normalised_and_aliases_resolve_to_their_entry() -> None:
    reg = _reg()
    assert reg.names() == ["alpha", "beta-two"]  # registration order, underscores as dashes
    for spelling in ("alpha", "ALPHA", " alpha ", "a", "First"):
        assert reg.canonical(spelling) == "alpha" and reg.get(spelling) == 1
    assert reg.get("beta_two") == reg.get("Beta-Two") == 2
    assert "a" in reg and "beta_two" in reg and "gamma" not in reg and 3 not in reg
    assert len(reg) == 2 and list(reg.items()) == [("alpha", 1), ("beta-two", 2)]
    assert reg.aliases() == {"a": "alpha", "first": "alpha"}


@pytest.mark.parametrize(("name", "aliases"), [("alpha", ()), ("Alpha", ()), ("a", ()), ("gamma", ("first",)),
                                               ("gamma", ("beta-two",))])
def test_a_name_or_alias_registered_twice_is_refused(name: str, aliases: tuple[str, ...]) -> None:
    reg = _reg()
    with pytest.raises(RegistryError, match="registered twice"):
        reg.add(name, 3, aliases=aliases)


def test_the_decorator_registers_and_returns_the_object() -> None:
    reg: Registry[Any] = Registry("widget")

    @reg.register("make-it", aliases=("mk",))
    def make_it() -> str:
        return "made"

    assert make_it() == "made" and reg.get("mk") is make_it


def test_unknown_names_get_one_line_with_a_did_you_mean_and_the_choices() -> None:
    reg = _reg()
    with pytest.raises(RegistryError) as ei:
        reg.get("alhpa")
    msg = str(ei.value)
    assert msg == "unknown widget 'alhpa'; did you mean 'alpha'? (choices: alpha, beta-two)"
    with pytest.raises(RegistryError) as ei:
        reg.get("firts")  # close to an alias: the hint names the entry, not the alias
    assert "did you mean 'alpha'?" in str(ei.value)
    with pytest.raises(RegistryError) as ei:
        reg.get("zzz")
    assert "did you mean" not in str(ei.value) and "choices: alpha, beta-two" in str(ei.value)
    assert isinstance(ei.value, VeaError)  # the CLI prints it on one line


def test_lazy_entries_import_on_first_use_and_stay_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vea_lazy_probe.py").write_text("CALLS = []\ndef thing():\n    return 'lazy'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[Any] = Registry("widget")
    reg.add("thing", "vea_lazy_probe:thing")
    assert "thing" in reg and reg.names() == ["thing"]
    assert "vea_lazy_probe" not in sys.modules  # registering (and listing) imports nothing
    fn = reg.get("thing")
    assert fn() == "lazy" and "vea_lazy_probe" in sys.modules
    del sys.modules["vea_lazy_probe"]
    assert reg.get("thing") is fn  # resolved once, kept


def test_a_lazy_entry_that_names_nothing_fails_on_use() -> None:
    reg: Registry[Any] = Registry("widget")
    reg.add("ghost", "json:no_such_function")
    with pytest.raises(AttributeError):
        reg.get("ghost")


# --------------------------------------------------------------------------------------- build
def _factories() -> Registry[Any]:
    reg: Registry[Any] = Registry("maker")

    @reg.register("plain")
    def plain(out: str, seed: int = 0, *, width: int = 4) -> tuple[str, int, int]:
        return out, seed, width

    @reg.register("open")
    def open_kwargs(out: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        return out, extra

    return reg


def test_build_passes_the_keywords_the_factory_takes() -> None:
    reg = _factories()
    assert build(reg, "plain", out="o", seed=3, width=7) == ("o", 3, 7)
    assert build(reg, "plain", out="o") == ("o", 0, 4)


def test_build_refuses_a_misspelt_keyword_in_one_line_with_a_did_you_mean() -> None:
    reg = _factories()
    with pytest.raises(RegistryError) as ei:
        build(reg, "plain", out="o", sede=3)
    msg = str(ei.value)
    assert msg == "maker 'plain' takes no option 'sede'; did you mean 'seed'? (it takes: out, seed, width)"
    with pytest.raises(RegistryError, match="takes no option 'colour' \\(it takes"):
        build(reg, "plain", out="o", colour="red")


def test_build_drops_only_the_keywords_the_caller_marks_optional() -> None:
    reg = _factories()
    assert build(reg, "plain", optional=("num_classes",), out="o", num_classes=8) == ("o", 0, 4)
    with pytest.raises(RegistryError, match="'sede'"):  # optional does not excuse other names
        build(reg, "plain", optional=("num_classes",), out="o", num_classes=8, sede=1)


def test_build_gives_everything_to_a_factory_with_var_keywords() -> None:
    reg = _factories()
    assert build(reg, "open", optional=("n",), out="o", n=1, anything=2) == ("o", {"n": 1, "anything": 2})


def test_build_of_an_unknown_name_is_the_registrys_error() -> None:
    with pytest.raises(RegistryError, match="unknown maker 'plane'; did you mean 'plain'"):
        build(_factories(), "plane", out="o")


# ------------------------------------------------------------------- every registry, every entry
def _registries() -> list[tuple[str, str]]:
    """(module, attribute) of every module-level ``X = Registry(...)`` in the package."""
    pkg = Path(vea_bench.__file__).parent
    out = []
    for path in sorted(pkg.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
            value = getattr(node, "value", None)
            if (isinstance(target, ast.Name) and isinstance(value, ast.Call)
                    and isinstance(value.func, ast.Name) and value.func.id == "Registry"):
                rel = path.relative_to(pkg.parent).with_suffix("")
                parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
                out.append((".".join(parts), target.id))
    return out


REGISTRIES = _registries()


def test_the_package_defines_the_registries_it_documents() -> None:
    names = {attr for _, attr in REGISTRIES}
    assert {"DATASETS", "HEADS", "GATES", "VLM_BACKENDS", "TEACHER_PRESETS"} <= names, names


@pytest.mark.parametrize(("module", "attr"), REGISTRIES, ids=[f"{m}.{a}" for m, a in REGISTRIES])
def test_every_entry_of_every_registry_resolves_under_its_names(module: str, attr: str) -> None:
    reg = getattr(importlib.import_module(module), attr)
    assert isinstance(reg, Registry) and len(reg) >= 1, f"{module}.{attr} is empty"
    for name in reg.names():
        obj = reg.get(name)  # a lazy entry must import
        assert obj is not None and not isinstance(obj, str), f"{attr} '{name}' resolves to {obj!r}"
        assert reg.canonical(name) == name and name in reg
    for alias, target in reg.aliases().items():
        assert reg.canonical(alias) == target and reg.get(alias) is reg.get(target)
