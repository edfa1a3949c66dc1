"""Heads and gates: default vs reference schedule at several dataset sizes; the alpha sweep in fp32 vs bf16.

    python benchmarks/heads.py --skip-sweep --dim 64 --threads 1 --early-stops val-loss,smoothed-acc   # the README's table
    python benchmarks/heads.py --quick                          # a smoke run of the whole table (about a minute)
    python benchmarks/heads.py --device cuda                    # the same on a GPU

Part 1 (schedules). A synthetic cache (see `vea_bench.heads.synthetic_cache`; ``--caches``: the
complementary one, teacher right on 60 % of images and VLM on another 60 %, and/or one where the VLM
alone is the stronger input) is built through the cache API at each of ``--sizes`` train rows (by
default Emotion6's ~1,600, 1,200 and FI's ~18,000; val an eighth of train, test ``--test-rows``).
On each, for the distill head and each of the five gates, both schedules train 3 seeds on the same
arrays: the reference (batch 1, lr 1e-5 / 1e-4, 5 / 10 epochs, last epoch, gates over the raw
distill logits) and the default (mini-batches, a budget of 60 epochs but at least 3,000 optimiser
steps for the distill head, early stopping on val, best epoch restored, gates over the distill
head's log-softmax). The cache's val rows are twice train / 8: the first half ("val") selects
epochs, the second ("val2") is read by nothing during training. ``--early-stops a,b`` trains the
default schedule again under each further early-stop signal (on its own distill heads) and prints
its val2 and test accuracy next to the default's val2: that comparison is how the default signal is
chosen, on validation data. Printed side by side in one table: test accuracy mean
± std over seeds, the VLM alone and the distill head alone, the wall time of each, the epochs each
default run trained of its budget and how many ended at their budget still improving. The
reference members of a row are trained as one batched model (each member's numbers are those of a
run alone, as tests/test_heads.py checks), so its time is that of the batched run, far below the
reference code's one-at-a-time time; ``--reference-max-rows`` skips it on larger caches (at FI size
its batch-1 gates are 180,000 steps each, minutes each on a CPU). Targets checked: default >= reference -
0.5 points and no default run ending still improving, on every row; Concat & Linear (default) >=
the better of its two inputs. An extra row fits Concat & Linear exactly (L-BFGS, no schedule).

Part 2 (alpha sweep). 11 alphas x 3 seeds (``--sweep-alphas``) x 5 epochs on ``--sweep-rows`` x
``--sweep-dim`` (20,000 x 3584 by default), one stacked model, fixed epochs, in fp32 and in bf16;
with ``--sweep-steps K`` only K steps are timed and the whole sweep's time is extrapolated (said
so). Achieved GFLOP/s (the sweep's useful FLOPs) are printed against a bare ``bmm`` of the same
shapes in the same precision, measured in the same run. Accuracy fp32 vs bf16 comes from training
the same members fully on ``--acc-rows`` x ``--acc-dim``.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

CACHES = {
    "complementary": dict(teacher_part=(0.0, 0.6), vlm_part=(0.35, 0.95)),
    "vlm-stronger": dict(teacher_part=(0.0, 0.45), vlm_part=(0.2, 1.0)),
}


def _ms(v: list[float]) -> str:
    a = np.asarray(v) * 100
    return f"{a.mean():.2f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.2f}"


def _vlm_acc(sa: Any) -> float:
    return float(((sa.vlm.sum(1) > 0) & (sa.vlm.argmax(1) == sa.y)).mean())


def _batched_reference(cfg: Any, kind: str) -> Any:
    """The reference schedule's numbers (pinned by apply_schedule), grouped with its seeds in one model."""
    from vea_bench.heads.pipeline import apply_schedule

    return replace(apply_schedule(replace(cfg, schedule="reference"), kind), schedule="default")


def _cache_data(args: argparse.Namespace, tmp: Path, name: str, rows: int) -> Any:
    """The synthetic cache ``name`` with ``rows`` train rows (val: an eighth of them, at least 100), read back."""
    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads.data import load_head_data
    from vea_bench.heads.synthetic_cache import make_complementary_cache

    path = tmp / f"{name}-{rows}.h5"
    n_val = max(100, rows // 8)
    make_complementary_cache(path, n_train=rows, n_val=2 * n_val, n_test=args.test_rows, dim=args.dim,
                             seed=args.cache_seed, backbones=(), with_logprobs=False, **CACHES[name])
    with FeatureCache.open(path) as c:
        data = load_head_data(c, need=("visual", "teacher", "vlm"))
    # half of the val rows select epochs ("val"); the other half ("val2") is read by nothing during
    # training and judges the early-stop signals, so that choice is made on validation data too
    va = data.splits["val"]
    halves = {"val": slice(0, n_val), "val2": slice(n_val, None)}
    data.splits = {"train": data.splits["train"],
                   **{k: replace(va, **{f: getattr(va, f)[sl] for f in ("y", "x", "teacher", "vlm", "rows")
                                        if getattr(va, f) is not None}) for k, sl in halves.items()},
                   "test": data.splits["test"]}
    return data


def _timed(fn: Any, *a: Any, **kw: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def _row(where: dict[str, Any], label: str, res: dict[str, list[Any]], times: dict[str, float]) -> dict[str, Any]:
    """One printed row: test accuracy per schedule, times, and how each default run ended.

    Keys of ``res`` other than "reference" and "default" are the default schedule under another
    early-stop signal ("default:SIGNAL"); their accuracy on the held-out val2 split is what chooses
    between signals.
    """
    acc = {k: [r.metrics["test"]["accuracy"] for r in v] for k, v in res.items()}
    val = {k: [r.metrics["val2"]["accuracy"] for r in v] for k, v in res.items() if k != "reference"}
    defaults = [k for k in res if k != "reference"]
    first = [r.convergence for r in res["default"]]
    row = {**where, "row": label, "reference": acc.get("reference"), "default": acc["default"],
           "reference_s": times.get("reference"), "default_s": times["default"],
           "val": val, "test": {k: acc[k] for k in defaults}, "times": {k: times.get(k) for k in defaults},
           "epochs_run": [c.get("epochs_run") for c in first], "max_epochs": [c.get("max_epochs") for c in first],
           "still_improving": sum(bool(c.get("still_improving")) for c in first),
           "alt_still_improving": sum(bool(r.convergence.get("still_improving")) for k in defaults[1:] for r in res[k])}
    ref_txt = f"reference {_ms(acc['reference'])} ({times['reference']:.1f} s), " if "reference" in acc else ""
    alt = "".join(f", {k} val2 {_ms(val[k])} test {_ms(acc[k])}" for k in defaults[1:])
    print(f"[{where['cache']} {where['rows']}] {label}: {ref_txt}default {_ms(acc['default'])} "
          f"({times['default']:.1f} s), epochs {row['epochs_run']} of {row['max_epochs']}{alt}", flush=True)
    return row


def schedules_at(args: argparse.Namespace, tmp: Path, seeds: list[int], name: str, rows: int) -> list[dict[str, Any]]:
    """Both schedules on one cache size: the distill head, then every gate over each schedule's heads."""
    from vea_bench.heads.gates import GATES, gate_display_name
    from vea_bench.heads.pipeline import DistillConfig, GateConfig, train_distill, train_gates

    data = _cache_data(args, tmp, name, rows)
    where = {"cache": name, "rows": rows, "vlm": _vlm_acc(data.splits["test"])}
    heads: dict[str, list[Any]] = {}
    times: dict[str, float] = {}
    signals = [v.strip() for v in args.early_stops.split(",") if v.strip()]
    stop = {"default": signals[0], **{f"default:{v}": v for v in signals[1:]}}
    scheds = (() if 0 < args.reference_max_rows < rows else ("reference",)) + tuple(stop)
    for sched in scheds:
        cfgs = [DistillConfig(seed=s, early_stop=stop.get(sched, signals[0])) for s in seeds]
        if sched == "reference":
            cfgs = [_batched_reference(c, "distill") for c in cfgs]
        heads[sched], times[sched] = _timed(train_distill, data, cfgs, eval_splits=["train", "val", "val2", "test"],
                                            device=args.device)
    out = [_row(where, "distill head", heads, times)]
    where["head"] = {k: float(np.mean([r.metrics["test"]["accuracy"] for r in v])) for k, v in heads.items()}
    where["head"].setdefault("reference", float("nan"))
    out[0]["head"] = where["head"]
    for gate, solver in [(g, "adam") for g in GATES.names()] + [("concat", "lbfgs")]:
        res: dict[str, list[Any]] = {}
        for sched in scheds:
            if solver == "lbfgs" and sched != "default":
                continue
            cfgs = [GateConfig(gate=gate, seed=s, solver=solver, early_stop=stop.get(sched, signals[0])) for s in seeds]
            if sched == "reference":
                cfgs = [_batched_reference(c, "gate") for c in cfgs]
            res[sched], times[sched] = _timed(train_gates, data, cfgs, [r.logits for r in heads[sched]],
                                              device=args.device, tau=2.0)
        label = gate_display_name(gate) + (" (L-BFGS exact fit)" if solver == "lbfgs" else "")
        out.append(_row(where, label, res, {k: times[k] for k in res}))
    return out


def schedules(args: argparse.Namespace, tmp: Path, seeds: list[int]) -> list[dict[str, Any]]:
    sizes = [int(v) for v in str(args.sizes).split(",") if v.strip()]
    return [r for rows in sizes for name in args.caches.split(",")
            for r in schedules_at(args, tmp, seeds, name.strip(), rows)]


def _sweep_flops(m: int, rows: int, dim: int, hidden: int, c: int) -> float:
    """Useful FLOPs of one pass over ``rows`` rows for m members: forward, weight grads, hidden grad."""
    return m * rows * (2 * dim * hidden + 2 * hidden * c + 2 * dim * hidden + 2 * hidden * c + 2 * c * hidden)


def _bare_bmm(m: int, b: int, dim: int, hidden: int, dtype: torch.dtype, device: str, reps: int) -> float:
    a = torch.randn(m, b, dim, device=device).to(dtype)
    w = torch.randn(m, dim, hidden, device=device).to(dtype)
    torch.bmm(a, w)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.bmm(a, w)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * m * b * dim * hidden * reps / (time.perf_counter() - t0) / 1e9


def sweep(args: argparse.Namespace, tmp: Path, seeds: list[int]) -> dict[str, Any]:
    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads.data import load_head_data
    from vea_bench.heads.distill import build_distill_head
    from vea_bench.heads.pipeline import DistillConfig, train_distill
    from vea_bench.heads.sweep import parse_grid
    from vea_bench.heads.synthetic_cache import make_complementary_cache
    from vea_bench.heads.losses import kd_objective
    from vea_bench.heads.trainer import MemberHyper, SplitInputs, StackedMLP, build_member_modules, train_members

    alphas = parse_grid(args.sweep_alphas)
    m = len(alphas) * len(seeds)
    bs, hidden, epochs = 256, 1024, 5
    path = tmp / "sweep.h5"
    make_complementary_cache(path, n_train=args.sweep_rows, n_val=256, n_test=256, dim=args.sweep_dim, seed=0,
                             signal=6.0, backbones=(), with_logprobs=False)
    with FeatureCache.open(path) as c:
        data = load_head_data(c)
    dev = torch.device(args.device)
    tr = data.splits["train"]
    steps_total = epochs * -(-args.sweep_rows // bs)
    out: dict[str, Any] = {"members": m, "rows": args.sweep_rows, "dim": args.sweep_dim, "steps_total": steps_total}
    print(f"alpha sweep: {len(alphas)} alphas x {len(seeds)} seeds = {m} members, {epochs} epochs of "
          f"{args.sweep_rows} x {args.sweep_dim}, batch {bs}", flush=True)
    precs = [p.strip() for p in args.sweep_precisions.split(",") if p.strip()]
    for prec in precs:
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        x = torch.from_numpy(tr.x).to(dev)
        inputs = SplitInputs([x.to(dtype)], [False], torch.from_numpy(tr.y).to(dev), torch.from_numpy(tr.teacher).to(dev))
        cfgs = [(a, s) for a in alphas for s in seeds]
        heads = build_member_modules(lambda: build_distill_head(data.input_dim, data.num_classes, [hidden]),
                                     [s for _, s in cfgs])
        model = StackedMLP(heads, [s for _, s in cfgs], dev, precision=prec)
        hyper = [MemberHyper(s, 1e-5 * bs ** 0.5, 1e-4, a, 2.0) for a, s in cfgs]
        train_members(model, inputs, hyper, loss=kd_objective, epochs=1, batch_size=bs, max_steps=1)   # warm-up
        steps = args.sweep_steps or steps_total
        t0 = time.perf_counter()
        train_members(model, inputs, hyper, loss=kd_objective, epochs=epochs, batch_size=bs, max_steps=steps)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - t0) / steps
        gflops = _sweep_flops(m, bs, args.sweep_dim, hidden, data.num_classes) / per_step / 1e9
        bare = _bare_bmm(m, bs, args.sweep_dim, hidden, dtype, args.device, reps=3 if prec == "fp32" else 1)
        total = per_step * steps_total
        out[prec] = {"s_per_step": per_step, "sweep_s": total, "timed_steps": steps, "gflops": gflops,
                     "bare_bmm_gflops": bare, "extrapolated": steps < steps_total}
        how = f"EXTRAPOLATED from {steps} timed steps" if steps < steps_total else "measured"
        print(f"  {prec}: {per_step:.3f} s/step -> sweep {total:.0f} s ({how}); {gflops:.1f} useful GFLOP/s vs bare "
              f"bmm [{m}, {bs}, {args.sweep_dim}] x [{m}, {args.sweep_dim}, {hidden}] {bare:.1f} GFLOP/s "
              f"({gflops / bare:.2f} of it)", flush=True)
    # accuracy: the same members trained fully in both precisions on a smaller cache
    path = tmp / "acc.h5"
    make_complementary_cache(path, n_train=args.acc_rows, n_val=500, n_test=args.test_rows, dim=args.acc_dim,
                             seed=0, signal=6.0, backbones=(), with_logprobs=False)
    with FeatureCache.open(path) as c:
        data = load_head_data(c)
    acc = {}
    for prec in precs:
        cfgs = [DistillConfig(alpha=a, seed=s, epochs=epochs, keep="last", patience=None, precision=prec)
                for a in alphas for s in seeds]
        t0 = time.perf_counter()
        res = train_distill(data, cfgs, device=args.device)
        acc[prec] = {"test_acc": [r.metrics["test"]["accuracy"] for r in res], "s": time.perf_counter() - t0}
        print(f"  accuracy {prec} on {args.acc_rows} x {args.acc_dim}: mean test acc "
              f"{100 * np.mean(acc[prec]['test_acc']):.2f} % ({acc[prec]['s']:.1f} s)", flush=True)
    out["accuracy"] = acc
    out["acc_rows"], out["acc_dim"] = args.acc_rows, args.acc_dim
    return out


def _alts(rows: list[dict[str, Any]]) -> list[str]:
    """The "default:SIGNAL" keys of the early-stop signals run besides the default one."""
    return [k for k in (rows[0]["val"] if rows else {}) if k != "default"]


def _signal(key: str) -> str:
    return key.split(":", 1)[1]


def _shared_cells(r: dict[str, Any], alts: list[str]) -> tuple[list[str], list[str]]:
    """The cells both tables print alike: reference, default, Δ and times; then the val2 columns."""
    ref = 100 * np.mean(r["reference"]) if r["reference"] else None
    scores = [_ms(r["reference"]) if r["reference"] else "-", _ms(r["default"]),
              f"{100 * np.mean(r['default']) - ref:+.2f}" if ref is not None else "-",
              f"{r['reference_s']:.1f} / {r['default_s']:.1f}" if r["reference_s"] else f"- / {r['default_s']:.1f}"]
    val2 = [_ms(r["val"]["default"]),
            *(f"{_ms(r['val'][k])} / {_ms(r['test'][k])}" if k in r["val"] else "-" for k in alts)]
    return scores, val2


def _schedules_table(con: Any, rows: list[dict[str, Any]], args: argparse.Namespace, n_seeds: int) -> None:
    """Both schedules side by side, every size in one table, with the targets checked."""
    from rich.table import Table

    t = Table(title=f"reference vs default schedule, test accuracy % (mean ± std over {n_seeds} seeds), "
                    f"{args.dim}-d synthetic caches, val = train / 8")
    alts = _alts(rows)
    for col in ("cache", "train rows", "row", "VLM alone", "head alone (ref / def)", "reference", "default", "Δ",
                "time ref / def (s)", "epochs run (def) / budget", "ended improving", "target", "default val2",
                *(f"{_signal(k)} val2 / test" for k in alts)):
        t.add_column(col)
    for r in rows:
        d_mean = 100 * np.mean(r["default"])
        ok = [r["still_improving"] == 0]
        if r["reference"]:
            ok.append(d_mean >= 100 * np.mean(r["reference"]) - 0.5)
        if r["row"] == "Concat & Linear":
            ok.append(d_mean >= 100 * max(r["vlm"], r["head"]["default"]))
        r["target_met"] = all(ok)
        scores, val2 = _shared_cells(r, alts)
        t.add_row(r["cache"], str(r["rows"]), r["row"], f"{100 * r['vlm']:.2f}",
                  f"{100 * r['head']['reference']:.2f} / {100 * r['head']['default']:.2f}", *scores,
                  ",".join(str(e) for e in r["epochs_run"] if e is not None) + f" / {max(r['max_epochs'])}",
                  str(r["still_improving"]), "met" if r["target_met"] else "MISSED", *val2)
    con.print(t)
    for k in alts:
        d = [100 * (np.mean(r["val"][k]) - np.mean(r["val"]["default"])) for r in rows if k in r["val"]]
        print(f"early stop {_signal(k)} vs the default's {args.early_stops.split(',')[0]}: held-out val2 accuracy "
              f"{np.mean(d):+.2f} points on average over {len(d)} rows (higher on {sum(x > 0 for x in d)}, "
              f"lower on {sum(x < 0 for x in d)})")


def _markdown(rows: list[dict[str, Any]], early_stops: str) -> str:
    """The schedules table as Markdown (the README's), from the same rows as the printed table."""
    alts = _alts(rows)
    head = ["train rows", "row", "reference", "default", "Δ", "time ref / def (s)", "default epochs run / budget",
            "ended improving", f"default val2 ({early_stops.split(',')[0]})", *(f"{_signal(k)} val2 / test" for k in alts)]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(["---:", "---"] + ["---:"] * (len(head) - 2)) + " |"]
    for r in rows:
        scores, val2 = _shared_cells(r, alts)
        epochs = ", ".join(str(e) for e in r["epochs_run"] if e is not None)
        cells = [f"{r['rows']:,}", r["row"], *scores, f"{epochs} / {max(r['max_epochs'])}" if epochs else "-",
                 str(r["still_improving"]), *val2]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1600,1200,18000",
                    help="train rows of each schedule cache (Emotion6, the 1,200-row case, FI); val: an eighth")
    ap.add_argument("--test-rows", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=256, help="embedding width of the schedule caches")
    ap.add_argument("--cache-seed", type=int, default=0)
    ap.add_argument("--caches", default="complementary", help="schedule caches: complementary, vlm-stronger")
    ap.add_argument("--quick", action="store_true", help="a smoke run: tiny caches, 2 seeds, no sweep")
    ap.add_argument("--reference-max-rows", type=int, default=0,
                    help="run the reference schedule (batch 1) only on caches of at most this many train rows "
                         "(0: on all; at FI size its batch-1 gates take minutes each on a CPU)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--early-stops", default="val-loss",
                    help="early-stop signals of the default schedule, the first the one the targets check; "
                         "others (e.g. val-loss,smoothed-acc) add their val / test columns, trained on their own "
                         "distill heads")
    ap.add_argument("--sweep-rows", type=int, default=20000)
    ap.add_argument("--sweep-dim", type=int, default=3584)
    ap.add_argument("--sweep-alphas", default="0:1:0.1")
    ap.add_argument("--sweep-precisions", default="fp32,bf16")
    ap.add_argument("--sweep-steps", type=int, default=0, help="time only this many steps and extrapolate (0: all)")
    ap.add_argument("--acc-rows", type=int, default=2000, help="train rows for the fp32 vs bf16 accuracy check")
    ap.add_argument("--acc-dim", type=int, default=3584)
    ap.add_argument("--skip-schedules", action="store_true")
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--markdown", type=Path, default=None, help="write the schedules table here as Markdown")
    ap.add_argument("--render", type=Path, default=None,
                    help="print (and --markdown) the tables of an earlier run's --json file, training nothing")
    args = ap.parse_args()
    if args.render:
        _render(args)
        return
    if args.quick:
        args.sizes, args.dim, args.test_rows, args.seeds, args.skip_sweep = "120,240", 16, 300, "0,1", True
    torch.set_num_threads(args.threads)
    from vea_bench.heads.sweep import parse_grid

    seeds = parse_grid(args.seeds, int)
    out: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "load_before": os.getloadavg()}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_schedules:
            out["schedules"] = schedules(args, tmp, seeds)
        if not args.skip_sweep:
            out["sweep"] = sweep(args, tmp, seeds)
    out["load_after"] = os.getloadavg()
    out["total_s"] = time.perf_counter() - t_all
    _print_tables(out, args, len(seeds))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))


def _render(args: argparse.Namespace) -> None:
    """The tables of a finished run, from its JSON: its own arguments, its own figures."""
    out = json.loads(args.render.read_text())
    saved = argparse.Namespace(**{"early_stops": "val-loss", **out["args"], "markdown": args.markdown})
    _print_tables(out, saved, len(str(saved.seeds).split(",")))


def _print_tables(out: dict[str, Any], args: argparse.Namespace, n_seeds: int) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=200)
    if "schedules" in out:
        _schedules_table(con, out["schedules"], args, n_seeds)
        if args.markdown:
            args.markdown.write_text(_markdown(out["schedules"], args.early_stops))
    if "sweep" in out:
        s = out["sweep"]
        t = Table(title=f"alpha sweep, {s['members']} members x 5 epochs on {s['rows']} x {s['dim']} ({args.device})")
        for col in ("precision", "s/step", "sweep time", "useful GFLOP/s", "bare bmm GFLOP/s", "fraction",
                    f"test acc ({s['acc_rows']} x {s['acc_dim']})"):
            t.add_column(col)
        for prec in (p for p in ("fp32", "bf16") if p in s):
            p = s[prec]
            when = f"{p['sweep_s']:.0f} s" + (" (extrapolated)" if p["extrapolated"] else "")
            t.add_row(prec, f"{p['s_per_step']:.3f}", when, f"{p['gflops']:.1f}", f"{p['bare_bmm_gflops']:.1f}",
                      f"{p['gflops'] / p['bare_bmm_gflops']:.2f}", f"{100 * np.mean(s['accuracy'][prec]['test_acc']):.2f}")
        con.print(t)
        if "fp32" in s and "bf16" in s:
            print(f"bf16 / fp32 sweep time: {s['bf16']['sweep_s'] / s['fp32']['sweep_s']:.2f}x; test accuracy "
                  f"bf16 - fp32: {100 * (np.mean(s['accuracy']['bf16']['test_acc']) - np.mean(s['accuracy']['fp32']['test_acc'])):+.2f} points")
    print(f"total {out['total_s']:.0f} s; load average before {out['load_before']}, after {out['load_after']} "
          f"(shared machine)")


if __name__ == "__main__":
    main()
