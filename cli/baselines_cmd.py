"""`vea-bench baselines`: VLM alone, teacher alone, distill head alone, probes, ensemble, oracle, Figure 1."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from vea_bench_cli.common import console, echo_path, run_guarded


def register(app: typer.Typer) -> None:
    """Add this module's top-level commands to ``app``."""

    @app.command("baselines")
    def baselines(
        cache: Annotated[Path, typer.Option("--cache", help="HDF5 feature cache.")],
        only: Annotated[Optional[str], typer.Option(
            "--only", help="comma list of: vlm, teacher, distill, probes, ensemble, oracle, complementarity.")] = None,
        vlm: Annotated[Optional[str], typer.Option("--vlm", help="VLM source key.")] = None,
        teacher: Annotated[Optional[str], typer.Option("--teacher", help="teacher source key.")] = None,
        visual: Annotated[Optional[str], typer.Option("--visual", help="visual source key for its probe.")] = None,
        backbone: Annotated[Optional[str], typer.Option("--backbone", help="backbone keys to probe (comma list; default all).")] = None,
        vlm_input: Annotated[str, typer.Option("--vlm-input", help="ensemble's VLM input: onehot or logprobs.")] = "onehot",
        distill: Annotated[Optional[str], typer.Option("--distill", help="saved distill run (id or folder) to evaluate alone.")] = None,
        probe_l2: Annotated[float, typer.Option("--probe-l2", help="L2 penalty of the linear probes.")] = 1e-4,
        probe_iters: Annotated[int, typer.Option("--probe-iters", help="L-BFGS iterations of the linear probes.")] = 100,
        device: Annotated[str, typer.Option("--device", help="device for the probes: cpu or cuda.")] = "cpu",
        results: Annotated[Path, typer.Option("--results", help="folder for run records.")] = Path("results"),
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the record paths.")] = False,
    ) -> None:
        """Every cache baseline the cache's sources allow, one run record each."""

        def go() -> None:
            from rich.table import Table

            from vea_bench.cache.store import FeatureCache
            from vea_bench.heads.baselines import run_baselines
            from vea_bench.heads.data import load_head_data
            from vea_bench.heads.pipeline import load_distill_run
            from vea_bench.devices import resolve_device
            from vea_bench.results import ResultsStore
            from vea_bench_cli.common import RichProgress

            dev = str(resolve_device(device))
            want = [w.strip() for w in only.split(",") if w.strip()] if only else None
            with FeatureCache.open(cache) as c:
                head, hdata = None, None
                if distill is not None:
                    hdata = load_head_data(c, visual=visual, teacher=teacher, need=("visual", "teacher"))
                    head = load_distill_run(distill, results, hdata)
                bkeys = [b.strip() for b in backbone.split(",") if b.strip()] if backbone else None
                outs, skipped = run_baselines(c, only=want, vlm=vlm, teacher=teacher, visual=visual, backbones=bkeys,
                                              vlm_input=vlm_input, distill=head, distill_data=hdata,
                                              probe_l2=probe_l2, probe_iters=probe_iters, device=dev,
                                              progress=RichProgress("baseline", quiet=quiet))
            paths = ResultsStore(results).save_all(outs)
            recs = [o.record for o in outs]
            if quiet:
                for p in paths:
                    echo_path(p, True)
                return
            t = Table(title=f"cache baselines on {recs[0].dataset}")
            for col in ("baseline", "val acc", "test acc", "detail"):
                t.add_column(col)
            for r in recs:
                acc = lambda s: f"{100 * r.metrics[s]['accuracy']:.2f}" if s in r.metrics else "-"  # noqa: E731
                detail = ""
                if r.kind == "complementarity" and "test" in r.metrics:
                    detail = ", ".join(f"{k}={v}" for k, v in r.metrics["test"]["extra"].items())
                elif r.method == "ensemble":
                    detail = f"teacher weight {r.config['teacher_weight']} (picked on {r.config['weight_picked_on']})"
                t.add_row(r.method, acc("val"), acc("test"), detail)
            console.print(t)
            for s in skipped:
                console.print(f"[yellow]skipped[/] {s}")
            console.print(f"{len(paths)} records in {results}/")

        run_guarded(go)
