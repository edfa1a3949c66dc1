"""Batched alpha sweep vs the reference schedule, on a realistic cache (20,000 x 3584 train rows).

    python benchmarks/heads.py                      # CPU, 2 threads, reference timed on a fraction
    python benchmarks/heads.py --device cuda        # the same sweep on a GPU
    python benchmarks/heads.py --reference-full 1   # also train 1 member fully with the reference schedule

The cache is built once into a temp folder through the cache API (float16 embeddings carrying the
class on the teacher's part of the images, see `vea_bench.heads.synthetic_cache`). The batched
sweep trains 11 alphas x 3 seeds (SPEC's 5 epochs) as one stacked model with the default schedule;
the reference schedule (batch size 1, lr 1e-5, one configuration at a time) is timed on
``--reference-steps`` steps and extrapolated to the whole sweep (said so in the output), and with
``--reference-full K`` the first K members are also trained fully to compare test accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=20000)
    ap.add_argument("--n-eval", type=int, default=2000, help="rows of val and of test")
    ap.add_argument("--dim", type=int, default=3584)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--signal", type=float, default=6.0, help="norm of the class direction in the embedding")
    ap.add_argument("--alphas", default="0:1:0.1")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None, help="default schedule batch (default: the library's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference-steps", type=int, default=300, help="reference steps timed for extrapolation")
    ap.add_argument("--reference-full", type=int, default=0, help="members trained fully with the reference schedule")
    ap.add_argument("--parity-rows", type=int, default=0,
                    help="also train --parity-members members fully with both schedules on the first N train rows")
    ap.add_argument("--parity-members", type=int, default=1)
    ap.add_argument("--skip-sweep", action="store_true")
    ap.add_argument("--cache", type=Path, default=None, help="reuse/keep the cache file here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from vea_bench.cache.store import FeatureCache
    from vea_bench.heads.data import load_head_data
    from vea_bench.heads.pipeline import DEFAULT_BATCH, DistillConfig, apply_schedule, train_distill
    from vea_bench.heads.sweep import parse_grid
    from vea_bench.heads.synthetic_cache import make_complementary_cache
    from vea_bench.heads.trainer import MemberHyper, SplitInputs, StackedMLP, build_member_modules, train_members
    from vea_bench.heads.distill import build_distill_head

    out: dict = {"load_before": os.getloadavg(), "device": args.device, "threads": args.threads}
    tmp = tempfile.TemporaryDirectory()
    path = args.cache or Path(tmp.name) / "bench.h5"
    t0 = time.perf_counter()
    if not path.exists():
        make_complementary_cache(path, n_train=args.n_train, n_val=args.n_eval, n_test=args.n_eval, dim=args.dim,
                                 num_classes=args.classes, seed=0, signal=args.signal, backbones=(),
                                 with_logprobs=False)
    with FeatureCache.open(path) as c:
        data = load_head_data(c)
    out["cache_build_and_load_s"] = time.perf_counter() - t0
    print(f"cache: {args.n_train} x {args.dim} train rows (float16), {args.n_eval} val/test, "
          f"{out['cache_build_and_load_s']:.1f} s; load avg {out['load_before'][0]:.2f}", flush=True)

    alphas = parse_grid(args.alphas)
    seeds = parse_grid(args.seeds, int)
    bs = args.batch_size or DEFAULT_BATCH["distill"]
    base = DistillConfig(epochs=args.epochs, batch_size=bs)
    cfgs = [replace(base, alpha=a, seed=s) for a in alphas for s in seeds]
    ref_cfgs = [apply_schedule(replace(c, schedule="reference"), "distill") for c in cfgs]
    steps_per_epoch = args.n_train

    # --- reference schedule: time a fraction, extrapolate
    dev = torch.device(args.device)
    tr = data.splits["train"]
    inputs = SplitInputs([torch.from_numpy(tr.x).to(dev)], [False], torch.from_numpy(tr.y).to(dev),
                         torch.from_numpy(tr.teacher).to(dev))
    rc = ref_cfgs[0]
    heads = build_member_modules(lambda: build_distill_head(data.input_dim, data.num_classes, rc.hidden_dims), [rc.seed])
    model = StackedMLP(heads, [rc.seed], dev)
    warm = min(20, args.reference_steps)
    train_members(model, inputs, [MemberHyper(rc.seed, rc.lr, rc.weight_decay, rc.alpha, rc.tau)], loss="kd",
                  epochs=1, batch_size=1, max_steps=warm)
    t1, c1 = time.perf_counter(), time.process_time()
    train_members(model, inputs, [MemberHyper(rc.seed, rc.lr, rc.weight_decay, rc.alpha, rc.tau)], loss="kd",
                  epochs=1, batch_size=1, max_steps=args.reference_steps)
    per_step = (time.perf_counter() - t1) / args.reference_steps
    cpu_per_step = (time.process_time() - c1) / args.reference_steps
    ref_total = per_step * steps_per_epoch * args.epochs * len(cfgs)
    out["reference_s_per_step"] = per_step
    out["reference_cpu_s_per_step"] = cpu_per_step
    out["reference_sweep_s_extrapolated"] = ref_total
    print(f"reference schedule: {per_step * 1e3:.2f} ms/step (timed on {args.reference_steps} steps of batch 1) -> "
          f"EXTRAPOLATED {ref_total / 3600:.1f} h for {len(cfgs)} configs x {args.epochs} epochs x "
          f"{steps_per_epoch} steps (CPU time {cpu_per_step * 1e3:.2f} ms/step)", flush=True)

    # --- batched sweep, default schedule
    res = []
    if not args.skip_sweep:
        t2, c2 = time.perf_counter(), time.process_time()
        res = train_distill(data, cfgs, device=args.device)
        out["batched_sweep_s"] = time.perf_counter() - t2
        out["batched_sweep_cpu_s"] = time.process_time() - c2
        accs = np.array([r.metrics["test"]["accuracy"] for r in res])
        out["batched_test_acc_mean"] = float(accs.mean())
        out["batched_test_acc"] = {f"alpha={c.alpha:g},seed={c.seed}": float(a) for c, a in zip(cfgs, accs)}
        print(f"batched sweep (default schedule, batch {bs}, effective lr {cfgs[0].effective_lr:g}): "
              f"{len(cfgs)} members in {out['batched_sweep_s']:.1f} s wall ({out['batched_sweep_cpu_s']:.0f} s CPU over "
              f"{args.threads} threads); mean test acc {100 * accs.mean():.2f} %",
              flush=True)

    # --- reference schedule, fully, on the first K members
    if args.reference_full:
        t3 = time.perf_counter()
        full = train_distill(data, ref_cfgs[: args.reference_full], device=args.device)
        out["reference_full_s"] = time.perf_counter() - t3
        out["reference_full_test_acc"] = [r.metrics["test"]["accuracy"] for r in full]
        if res:
            out["batched_same_members_test_acc"] = [r.metrics["test"]["accuracy"] for r in res[: args.reference_full]]

    # --- both schedules fully on a subset of the same arrays (when the full reference is out of reach)
    if args.parity_rows:
        sub = np.arange(min(args.parity_rows, args.n_train))
        k = args.parity_members
        t4 = time.perf_counter()
        ref_sub = train_distill(data, ref_cfgs[:k], rows=[sub] * k, device=args.device)
        t_ref_sub = time.perf_counter() - t4
        t5 = time.perf_counter()
        def_sub = train_distill(data, cfgs[:k], rows=[sub] * k, device=args.device)
        t_def_sub = time.perf_counter() - t5
        out["parity"] = {"rows": int(sub.size), "members": k,
                         "reference_test_acc": [r.metrics["test"]["accuracy"] for r in ref_sub],
                         "default_test_acc": [r.metrics["test"]["accuracy"] for r in def_sub],
                         "reference_s": t_ref_sub, "default_s": t_def_sub}
        print(f"parity on the first {sub.size} train rows, {k} member(s): reference test acc "
              f"{100 * np.mean(out['parity']['reference_test_acc']):.2f} % ({t_ref_sub:.0f} s), default "
              f"{100 * np.mean(out['parity']['default_test_acc']):.2f} % ({t_def_sub:.0f} s)", flush=True)

    out["load_after"] = os.getloadavg()
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"alpha sweep {len(alphas)} x {len(seeds)} seeds on {args.n_train} x {args.dim} ({args.device})")
    for col in ("schedule", "wall time", "test acc (mean)", "note"):
        t.add_column(col)
    if res:
        t.add_row(f"default (batched, batch {bs})", f"{out['batched_sweep_s']:.0f} s",
                  f"{100 * out['batched_test_acc_mean']:.2f} %", f"{len(cfgs)} members, one stacked model")
    ref_acc = "-"
    note = "time extrapolated from a timed fraction of an epoch"
    if args.reference_full:
        ref_acc = f"{100 * float(np.mean(out['reference_full_test_acc'])):.2f} %"
        note += f"; accuracy of {args.reference_full} member(s) trained fully"
        if res:
            same = 100 * float(np.mean(out["batched_same_members_test_acc"]))
            t.add_row("default, same member(s)", "", f"{same:.2f} %", "for a like-for-like comparison")
    t.add_row("reference (batch 1, sequential)", f"{ref_total:.0f} s (~{ref_total / 3600:.1f} h)", ref_acc, note)
    Console().print(t)
    print(f"load average before {out['load_before']}, after {out['load_after']} (shared machine)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
