"""`vea-bench models ...`: what can be loaded (VLM backends, teachers, tiny kinds) and tiny offline models."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vea_bench_cli.common import console, echo_path, run_guarded

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    help="List VLM backends and teachers; build tiny offline models.",
)


@app.command("list")
def list_cmd() -> None:
    """List VLM backends (and the config model types they serve), teacher presets, tiny model kinds
    and the architecture presets that build on the meta device.

    [bold]Example[/]: vea-bench models list
    """
    run_guarded(_list)


def _list() -> None:
    from rich.table import Table

    from vea_bench.models.generic import families
    from vea_bench.models.teacher import TEACHER_PRESETS
    from vea_bench.models.tiny import TINY_BUILDERS

    t = Table(title="VLM backends (--vlm picks one from the model's config.model_type)")
    t.add_column("backend", style="bold cyan")
    t.add_column("model types")
    t.add_column("transformers class")
    t.add_column("bundled checkpoint config")
    t.add_column("embed dim", justify="right")
    t.add_column("pooled embedding")
    real = _real_checkpoints()
    for name, fam in families().items():
        rows = [r for r in real if r[1] in fam.model_types] or [("", "", None)]
        for hub_id, _, config in rows:
            dim = "" if config is None else str(fam.embed_dim(config))
            t.add_row(name, ", ".join(fam.model_types), fam.model_class, hub_id, dim, fam.pooling)
    console.print(t)

    t = Table(title="teachers (--teacher CKPT from `vea-bench train teacher --arch NAME`; any timm name works)")
    t.add_column("preset", style="bold cyan")
    t.add_column("timm architecture")
    t.add_column("table row")
    t.add_column("note")
    for name, preset in TEACHER_PRESETS.items():
        t.add_row(name, preset.arch, preset.method, preset.note)
    console.print(t)

    t = Table(title="tiny kinds (`vea-bench models make-tiny KIND OUT`)")
    t.add_column("kind", style="bold cyan")
    t.add_column("what")
    for name in TINY_BUILDERS.names():
        doc = _first_line(TINY_BUILDERS.get(name))
        t.add_row(name, doc)
    console.print(t)

    from vea_bench.models.arch import HUB_IDS, PRESETS

    t = Table(title="architecture presets (built on the meta device, no weights)")
    t.add_column("preset", style="bold cyan")
    t.add_column("config")
    t.add_column("hub checkpoint")
    for name, cfg in PRESETS.items():
        t.add_row(name, str(cfg), HUB_IDS.get(name, ""))
    console.print(t)


def _real_checkpoints() -> list[tuple[str, str, Any]]:
    """(hub id, model type, config) of every bundled architecture preset (configs only, no weights)."""
    from vea_bench.models.arch import HUB_IDS, PRESETS, load_arch_config

    out = []
    for name in PRESETS:
        config = load_arch_config(name)
        out.append((HUB_IDS.get(name, name), str(config.model_type), config))
    return out


def _first_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


@app.command("make-tiny")
def make_tiny_cmd(
    kind: Annotated[str, typer.Argument(help="A tiny kind from `vea-bench models list` (qwen2-vl, gemma3, teacher, ...).")],
    out: Annotated[Path, typer.Argument(help="Folder to write the model into.")],
    seed: Annotated[int, typer.Option("--seed", help="Weight seed (same seed, same bytes).")] = 0,
    num_classes: Annotated[int, typer.Option("--num-classes", help="Classes of a tiny teacher.")] = 8,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the output folder.")] = False,
) -> None:
    """Build a tiny random-weight model of the real class, offline in seconds (tests, demo).

    [bold]Example[/]: vea-bench models make-tiny qwen2-vl models/tiny-qwen2-vl
    """
    from vea_bench.models.tiny import make_tiny

    path = run_guarded(make_tiny, kind, out, seed=seed, num_classes=num_classes)
    if quiet:
        echo_path(path, True)
    else:
        console.print(f"tiny {kind} written to [bold]{path}[/]")
