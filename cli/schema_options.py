"""CLI options generated from the library's config dataclasses, so the command line cannot drift from them.

`config_options(Group(...), ...)` decorates a Typer command: it adds one option per field of each
group's dataclass (name, type and help taken from the field), every option defaulting to None
("not set"), and calls the command with one dict per group holding only the options given. The
command hands that dict to `vea_bench.heads.config.make_config`, the same function an experiment
file's section goes through, so a value means the same thing from either side.

Naming: a group's options are ``--<prefix><field>`` (``--gate-lr``), except its ``plain`` fields
(``--gate-fit``, ``--keep``) and the fields `vea_bench.schema.CLI_NAMES` renames (``--vlm``).
Two groups naming the same option share it: one ``--schedule`` sets both the distill head's and
the gate's. A ``dict`` field takes ``KEY=VALUE`` (repeatable, values read as JSON); a list field
repeats its option; a field with ``words`` takes one of them (``--quant 4bit``). A field without
a default is a required option unless the group lists it as ``optional``.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Optional

import typer

from vea_bench.errors import ConfigError
from vea_bench.schema import CLI_NAMES, field_default, field_help, field_types, field_words


@dataclass(frozen=True)
class Group:
    """The options of one config class on one command."""

    key: str                                   # the keyword the command receives: {field: value given}
    cls: type
    prefix: str = ""                           # option-name prefix ("distill-": --distill-lr)
    plain: tuple[str, ...] = ()                # fields whose option carries no prefix
    exclude: tuple[str, ...] = ()              # fields this command does not take (see NOT_ON_CLI)
    names: dict[str, str] = field(default_factory=dict)   # field -> option name, where the rule does not fit
    help_prefix: str = ""                      # e.g. "gate: " so two groups' --epochs read apart
    optional: tuple[str, ...] = ()             # fields without a default that this command may leave out
    show_defaults: bool = False                # --help shows each field's default (not where a schedule sets it)

    def option(self, name: str) -> str:
        """The option name of field ``name`` (without the leading dashes)."""
        if name in self.names:
            return self.names[name]
        renamed = CLI_NAMES.get((self.cls.__name__, name))
        if renamed is not None:
            return renamed.lstrip("-")
        base = name.replace("_", "-")
        return base if (not self.prefix or name in self.plain) else f"{self.prefix}{base}"


# Option names that read better than the rule gives; one table for every command.
_NAMES = {"head_kwargs": "head-arg"}


def _cli_type(tp: Any) -> tuple[Any, bool]:
    """The Typer type of a field annotation, and whether it is a KEY=VALUE mapping."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _cli_type(inner[0]) if len(inner) == 1 else (str, False)
    if origin is dict or tp is dict:
        return list[str], True
    if origin in (list, tuple):
        return list[args[0] if args else str], False
    return tp, False


def parse_pairs(pairs: list[str], option: str) -> dict[str, Any]:
    """``["k=v", ...]`` as a dict; each value read as JSON when it parses (``3``, ``true``, ``"x"``), else a string."""
    out: dict[str, Any] = {}
    for p in pairs:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise ConfigError(f"--{option} takes KEY=VALUE, got '{p}'")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _shown(default: Any, words: dict[str, Any] | None) -> str:
    """A field default as --help shows it: the word standing for it, a flag's name, or the value."""
    if words:
        return next((w for w, v in words.items() if v == default), str(default))
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        return ", ".join(str(v) for v in default)
    return str(default)


def from_word(cls: type, name: str, value: Any, option: str) -> Any:
    """The field value a word given on the command line stands for (fields with ``words``), else ``value``."""
    words = field_words(cls, name)
    if not words:
        return value
    key = str(value).lower()
    if key not in words:
        raise ConfigError(f"--{option}: '{value}' is not one of {', '.join(words)}")
    return words[key]


def generated_options(*groups: Group) -> dict[str, tuple[str, list[tuple[Group, str]], Any, bool]]:
    """param name -> (option, [(group, field)], typer type, is-mapping), in field order."""
    out: dict[str, tuple[str, list[tuple[Group, str]], Any, bool]] = {}
    for g in groups:
        for name, tp in field_types(g.cls).items():
            if name in g.exclude:
                continue
            opt = g.option(name) if name not in _NAMES else _NAMES[name]
            param = opt.replace("-", "_")
            cli_tp, mapping = (str, False) if field_words(g.cls, name) else _cli_type(tp)
            if param in out:
                if out[param][2] != cli_tp:
                    raise TypeError(f"--{opt} is shared by fields of different types")
                out[param][1].append((g, name))
            else:
                out[param] = (opt, [(g, name)], cli_tp, mapping)
    return out


def config_options(*groups: Group) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add the groups' generated options to a Typer command; it receives one dict per ``Group.key``."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)
        keys = {g.key for g in groups}
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name not in keys]
        gen = generated_options(*groups)
        clash = sorted(set(gen) & {p.name for p in own})
        if clash:
            raise TypeError(f"{fn.__name__}: options {clash} are both hand-written and generated")
        extra = []
        for param, (opt, targets, cli_tp, mapping) in gen.items():
            g, name = targets[0]
            text = field_help(g.cls, name)
            if mapping:
                text = f"{text} KEY=VALUE, repeatable."
            elif typing.get_origin(cli_tp) is list:
                text = f"{text} Repeatable."
            words = field_words(g.cls, name)
            if words:
                text = f"{text} One of: {', '.join(words)}."
            flag = f"--{opt}/--no-{opt}" if cli_tp is bool else f"--{opt}"
            help_text = (g.help_prefix + text) if len(targets) == 1 else text
            required = field_default(g.cls, name) is dataclasses.MISSING and name not in g.optional
            default = field_default(g.cls, name)
            if g.show_defaults and default is not None and default is not dataclasses.MISSING:
                help_text = f"{help_text} \\[default: {_shown(default, words)}]"   # escaped: not rich markup
            ann = Annotated[Optional[cli_tp], typer.Option(flag, help=help_text, show_default=False)]
            extra.append(inspect.Parameter(param, inspect.Parameter.KEYWORD_ONLY, default=... if required else None,
                                           annotation=ann))

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            given: dict[str, dict[str, Any]] = {g.key: {} for g in groups}
            for param, (opt, targets, _tp, mapping) in gen.items():
                value = kwargs.pop(param, None)
                if value is None or (isinstance(value, (list, tuple)) and not value):
                    continue   # not given (a repeatable option left out arrives empty)
                try:
                    if mapping:
                        value = parse_pairs(value, opt)
                    for g, name in targets:
                        given[g.key][name] = from_word(g.cls, name, value, opt)
                except ConfigError as e:
                    from vea_bench_cli.common import fail

                    fail(str(e))
            return fn(**kwargs, **given)

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + extra
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.__schema_groups__ = groups  # type: ignore[attr-defined]
        return wrapper

    return deco


def reachable(groups: tuple[Group, ...]) -> dict[tuple[str, str], str]:
    """(class name, field) -> the option that sets it, for every field the groups expose."""
    out: dict[tuple[str, str], str] = {}
    for _param, (opt, targets, _tp, _m) in generated_options(*groups).items():
        for g, name in targets:
            out[(g.cls.__name__, name)] = f"--{opt}"
    return out
