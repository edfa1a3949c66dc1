"""One generic registry: datasets, VLM backends, teachers, heads and gates each register here.

Adding a thing is one decorated class or function in one file; the CLI's choices and the tests
are generated from the registry. Entries may be lazy (``"module:attr"``) so that `--help` does
not import torch or transformers.

A registry made with ``plugins="vea_bench.gates"`` (say) also loads, on first use, every module that
an installed package names under that entry-point group: a researcher's own head, gate, VLM family
or dataset lives in their own package, one file, with no edit to vea-bench (docs/extending.md).
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Collection, Iterator
from typing import Any, Generic, TypeVar

from vea_bench.errors import VeaError

T = TypeVar("T")


class RegistryError(VeaError):
    """Unknown or duplicate registry name, or an option its factory does not take."""


class Registry(Generic[T]):
    """A name -> object map with aliases, lazy entries, duplicate checks and "did you mean"."""

    def __init__(self, kind: str, *, plugins: str | None = None) -> None:
        self.kind = kind
        self.plugins = plugins
        self._plugins_loaded = plugins is None
        self._entries: dict[str, T | str] = {}
        self._aliases: dict[str, str] = {}

    def load_plugins(self) -> None:
        """Import the modules installed packages declare under the ``plugins`` entry-point group, once.

        Each module registers its entries on import, like the built-in ones. A plugin that fails to
        import is a one-line error naming it and its package, not a traceback from deep inside.
        """
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.plugins or ""):
            try:
                ep.load()
            except RegistryError:
                raise
            except Exception as exc:  # a third-party module: any failure is reported, in one line
                dist = ep.dist.name if ep.dist is not None else "?"
                raise RegistryError(
                    f"{self.kind} plugin '{ep.name}' ({ep.value}, from package {dist}) failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from None

    @staticmethod
    def _norm(name: str) -> str:
        return name.strip().lower().replace("_", "-")

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: ``@REG.register("concat")`` adds the decorated object under ``name``."""

        def deco(obj: T) -> T:
            self.add(name, obj, aliases=aliases)
            return obj

        return deco

    def add(self, name: str, obj: T | str, *, aliases: tuple[str, ...] = ()) -> None:
        """Add ``obj`` (or a lazy ``"module:attr"`` string) under ``name``; duplicates are errors."""
        key = self._norm(name)
        if key in self._entries or key in self._aliases:
            raise RegistryError(f"{self.kind} '{name}' is registered twice")
        self._entries[key] = obj
        for alias in aliases:
            a = self._norm(alias)
            if a in self._entries or a in self._aliases:
                raise RegistryError(f"{self.kind} alias '{alias}' is registered twice")
            self._aliases[a] = key

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases, else a one-line error."""
        self.load_plugins()
        key = self._norm(name)
        key = self._aliases.get(key, key)
        if key not in self._entries:
            choices = self.names()
            close = difflib.get_close_matches(key, choices + list(self._aliases), n=1)
            hint = f"; did you mean '{self._aliases.get(close[0], close[0])}'?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'{hint} (choices: {', '.join(choices)})"
            )
        return key

    def get(self, name: str) -> T:
        """Resolve ``name`` (importing a lazy entry on first use)."""
        key = self.canonical(name)
        obj = self._entries[key]
        if isinstance(obj, str):
            module, _, attr = obj.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._entries[key] = obj
        return obj  # type: ignore[return-value]

    def names(self) -> list[str]:
        """Registered names in registration order (aliases excluded)."""
        self.load_plugins()
        return list(self._entries)

    def aliases(self) -> dict[str, str]:
        """Every alias and the registered name it stands for."""
        self.load_plugins()
        return dict(self._aliases)

    def remove(self, name: str) -> None:
        """Drop an entry and its aliases (a test's temporary registration, say)."""
        key = self.canonical(name)
        del self._entries[key]
        for a in [a for a, k in self._aliases.items() if k == key]:
            del self._aliases[a]

    def items(self) -> Iterator[tuple[str, T]]:
        """``(name, object)`` for every entry, importing lazy ones."""
        for name in self.names():
            yield name, self.get(name)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self.load_plugins()
        key = self._norm(name)
        return key in self._entries or key in self._aliases

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def build(
    registry: Registry[Callable[..., Any]],
    name: str,
    *,
    optional: Collection[str] = (),
    **kwargs: Any,
) -> Any:
    """Call the factory ``name`` with ``kwargs``.

    Every keyword must be one the factory accepts: a misspelt option is a one-line
    `RegistryError` naming it (with a did-you-mean), never silently dropped. Keywords listed in
    ``optional`` are the exception: the caller offers them to every entry (e.g. ``num_classes``
    to tiny-model builders, only some of which build a classifier), and a factory that does not
    take one simply does not get it.
    """
    factory = registry.get(name)
    sig = inspect.signature(factory)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return factory(**kwargs)
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in accepted and k not in optional]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, accepted, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RegistryError(
            f"{registry.kind} '{registry.canonical(name)}' takes no option '{k}'{hint} "
            f"(it takes: {', '.join(accepted) or 'none'})"
        )
    return factory(**{k: v for k, v in kwargs.items() if k in accepted})
