"""Images/s of the one-pass extractor against the reference implementation's schedule, in one run.

One-pass (vea-bench): batched; greedy answer with a short budget that stops at '}'; the pooled
visual embedding taken from that same pass; the teacher run on the same decoded batch; images
decoded and preprocessed in loader workers; everything written to an HDF5 cache.

Reference schedule (the public EmoVLM-KD code, per image per epoch): batch size 1; sampled
generation (temperature 0.8, top_p 1.0) of up to 256 new tokens through `model.generate` (by
default without an early stop, i.e. 256 tokens: pass --ref-eos-stop to let it stop at EOS); a
separate vision-tower pass for the distill feature; the teacher run separately on its own decode.

Runs on CPU with tiny random models by default (built on the fly). On a GPU::

    python benchmarks/extract.py --vlm Qwen/Qwen2-VL-7B-Instruct --quant 4bit --teacher runs/vit-fi
    python benchmarks/extract.py --vlm Qwen/Qwen2-VL-7B-Instruct --dtype bf16 --ref-eos-stop

prints images/s of both, the ratio, and peak GPU memory (torch.cuda.max_memory_allocated).

Without weights (air-gapped GPU nodes), the real-size architecture from a bundled config, with random
weights built directly on the device, and achieved TFLOP/s + MFU against the device's peak::

    python benchmarks/extract.py --arch qwen2-vl-7b-instruct --random-weights --device cuda --dtype bf16
    python benchmarks/extract.py --arch gemma-3-4b-it --random-weights --device cuda --quant 4bit
    python benchmarks/extract.py --arch qwen2-vl-7b-instruct --random-weights --layers 2 --hidden 128  # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vlm", help="VLM hub id or folder [default: a tiny random Qwen2-VL built here]")
    p.add_argument("--teacher", help="teacher checkpoint [default: a tiny random ViT teacher built here]")
    p.add_argument("--dtype", default="auto", help="auto, bf16, fp16, fp32")
    p.add_argument("--quant", default=None, help="4bit or 8bit (GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=32, help="images for the one-pass run")
    p.add_argument("--ref-images", type=int, default=4, help="images for the (slow) reference schedule")
    p.add_argument("--size", type=int, default=64, help="side of the synthetic images (px)")
    p.add_argument("--real-size", type=int, default=None,
                   help="resize synthetic images to this side (e.g. 448 for a realistic 7B token count)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=24, help="one-pass budget (stops at '}')")
    p.add_argument("--ref-max-new-tokens", type=int, default=256)
    p.add_argument("--ref-eos-stop", action="store_true", help="let the reference stop at EOS")
    p.add_argument("--max-pixels", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    p.add_argument("--arch", default=None,
                   help="architecture preset (e.g. qwen2-vl-7b-instruct, or its hub id) built from its bundled config")
    p.add_argument("--random-weights", action="store_true",
                   help="with --arch: random weights on the target device (no checkpoint, no hub)")
    p.add_argument("--layers", type=int, default=None, help="with --arch: cap decoder and vision depth (CPU smoke runs)")
    p.add_argument("--hidden", type=int, default=None, help="with --arch: language-model width (CPU smoke runs)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak (dense bf16 TFLOP/s) for MFU [default: from the device name]")
    return p.parse_args(argv)


# Dense bf16 tensor-core peaks from the vendors' data sheets (TFLOP/s, no sparsity), matched on the
# device name in this order; pass --peak-tflops for any other device.
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H200", 989.4), ("H100", 989.4), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0),
    ("A10", 125.0),
)


def device_peak_tflops(name: str) -> float | None:
    """The data-sheet dense bf16 peak of a device by its name, or None when it is not in the table."""
    return next((peak for key, peak in PEAK_TFLOPS if key.lower() in name.lower()), None)


def _flops(fn: Any) -> int:
    """Floating-point operations ``fn()`` runs, counted by torch's FlopCounterMode (matmuls and
    attention; bitsandbytes 4-bit kernels are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def arch_main(args: argparse.Namespace) -> int:
    """--arch PRESET --random-weights: one-pass engine vs the reference schedule on a random-weight
    model of the real architecture, with FLOPs, achieved TFLOP/s and MFU."""
    import numpy as np
    import torch
    from PIL import Image

    from vea_bench.errors import VeaError
    from vea_bench.labels import MIKELS8
    from vea_bench.models.base import GenerationOptions
    from vea_bench.models.random_weights import random_backend
    from vea_bench.prompts import categorical_instruction

    if not args.random_weights:
        print("error: --arch builds the architecture without a checkpoint; add --random-weights", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="vea-bench-arch-"))
    t_load = time.perf_counter()
    try:
        backend = random_backend(args.arch, tmp, layers=args.layers, hidden=args.hidden, device=args.device,
                                 dtype=args.dtype, quantization=args.quant, max_pixels=args.max_pixels)
    except VeaError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    _sync()
    load_s = time.perf_counter() - t_load
    load_peak = _peak_mb()
    side = args.real_size or args.size
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(args.images)]
    prompt = categorical_instruction(MIKELS8)
    gen = GenerationOptions(max_new_tokens=args.max_new_tokens)
    prepared = [backend.prepare(images[i:i + args.batch_size], prompt) for i in range(0, len(images), args.batch_size)]

    def one_pass(batch: dict[str, Any]) -> None:
        backend.run(batch, generate=True, score_labels=None, generation=gen)

    def reference(image: Any) -> None:
        with torch.inference_mode():
            batch = backend._to_device(backend.prepare([image], prompt))
            kw: dict[str, Any] = dict(do_sample=True, temperature=0.8, top_p=1.0, max_new_tokens=args.ref_max_new_tokens)
            if not args.ref_eos_stop:
                kw["min_new_tokens"] = args.ref_max_new_tokens
            backend.model.generate(**batch, **kw)
            backend._visual(backend._to_device(backend.prepare([image], prompt)))[1].float().cpu()

    one_pass(prepared[0])                      # warm-up (allocations, kernel choice)
    one_flops = _flops(lambda: one_pass(prepared[0])) / len(images[: args.batch_size])
    _reset_peak()
    t0 = time.perf_counter()
    for batch in prepared:
        one_pass(batch)
    _sync()
    one_s = time.perf_counter() - t0
    one_peak = _peak_mb()
    reference(images[0])
    ref_flops = _flops(lambda: reference(images[0]))
    _reset_peak()
    t0 = time.perf_counter()
    for im in images[: args.ref_images]:
        reference(im)
    _sync()
    ref_s = time.perf_counter() - t0
    ref_peak = _peak_mb()

    device = str(backend.device)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    peak = args.peak_tflops or (device_peak_tflops(name) if device.startswith("cuda") else None)
    one_ips, ref_ips = len(images) / one_s, args.ref_images / ref_s

    def rates(flops_per_image: float, ips: float) -> dict[str, Any]:
        tflops = flops_per_image * ips / 1e12
        return {"gflop_per_image": round(flops_per_image / 1e9, 3), "achieved_tflops": round(tflops, 4),
                "mfu": None if not peak else round(tflops / peak, 5)}

    cfg = backend.core.config
    text = cfg.get_text_config()
    figures = {
        "arch": args.arch, "random_weights": True, "device": device, "device_name": name,
        "dtype": str(backend.dtype).replace("torch.", ""), "quantization": args.quant,
        "layers": int(text.num_hidden_layers), "hidden": int(text.hidden_size), "embed_dim": backend.embed_dim,
        "image_side": side, "threads": torch.get_num_threads(), "load_s": round(load_s, 2), "peak_tflops": peak,
        "one_pass": {"images": len(images), "seconds": round(one_s, 3), "images_per_s": round(one_ips, 3),
                     "batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
                     "peak_gpu_mb": None if one_peak is None else round(one_peak), **rates(one_flops, one_ips)},
        "reference": {"images": args.ref_images, "seconds": round(ref_s, 3), "images_per_s": round(ref_ips, 4),
                      "max_new_tokens": args.ref_max_new_tokens, "eos_stop": args.ref_eos_stop,
                      "peak_gpu_mb": None if ref_peak is None else round(ref_peak), **rates(ref_flops, ref_ips)},
        "load_peak_gpu_mb": None if load_peak is None else round(load_peak),
        "peak_rss_mb": round(_peak_rss_mb()),
        "speedup": round(one_ips / ref_ips, 2) if ref_ips else None,
    }
    print(f"arch: {args.arch} (random weights, {figures['layers']} layers, width {figures['hidden']}, "
          f"embed dim {figures['embed_dim']})  device: {name}  dtype: {figures['dtype']}  quant: {args.quant}")
    for key, label in (("one_pass", "one-pass "), ("reference", "reference")):
        f = figures[key]
        mfu = "n/a (no device peak)" if f["mfu"] is None else f"{100 * f['mfu']:.2f}%"
        mem = "" if f["peak_gpu_mb"] is None else f", peak GPU memory {f['peak_gpu_mb'] / 1024:.2f} GiB"
        print(f"{label}: {f['images']:4d} images in {f['seconds']:8.2f} s = {f['images_per_s']:8.3f} images/s, "
              f"{f['gflop_per_image']:.1f} GFLOP/image, {f['achieved_tflops']:.3f} TFLOP/s, MFU {mfu}{mem}")
    print(f"speed-up : {figures['speedup']}x  (peak RSS {figures['peak_rss_mb']} MB)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def _peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_schedule(backend: Any, teacher: Any, meta: dict[str, Any], paths: list[Path], prompt: str,
                       max_new_tokens: int, eos_stop: bool) -> dict[str, Any]:
    """The reference's per-image work: sampled generate, a second vision pass, the teacher apart."""
    import torch

    from vea_bench.datasets import open_image
    from vea_bench.models.teacher import teacher_transform

    tf = teacher_transform(meta, train=False)
    gen_model = backend.model  # the peft wrapper when an adapter is loaded, as the reference uses
    tokens = 0
    t0 = time.perf_counter()
    for path in paths:
        with torch.inference_mode():
            # 1. The answer: sampled, temperature 0.8, top_p 1.0, up to 256 new tokens.
            batch = backend._to_device(backend.prepare([open_image(path)], prompt))
            kw = dict(do_sample=True, temperature=0.8, top_p=1.0, max_new_tokens=max_new_tokens)
            if not eos_stop:
                kw["min_new_tokens"] = max_new_tokens
            out = gen_model.generate(**batch, **kw)
            tokens += int(out.shape[1] - batch["input_ids"].shape[1])
            # 2. The distill feature: a separate vision-tower pass on the same pixels.
            batch = backend._to_device(backend.prepare([open_image(path)], prompt))
            _, pooled = backend._visual(batch)
            pooled.float().cpu()
            # 3. The teacher, on its own decode of the image.
            x = tf(open_image(path)).unsqueeze(0).to(backend.device)
            teacher(x).float().cpu()
        _sync()
    dt = time.perf_counter() - t0
    return {"images": len(paths), "seconds": dt, "images_per_s": len(paths) / dt, "new_tokens": tokens}


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.arch:
        return arch_main(args)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from PIL import Image

    from vea_bench.datasets import load_dataset
    from vea_bench.datasets.synthetic import make_synthetic
    from vea_bench.extract import extract
    from vea_bench.models import load_vlm
    from vea_bench.models.base import GenerationOptions, LoadOptions
    from vea_bench.models.teacher import load_teacher, make_tiny_teacher
    from vea_bench.models.tiny import make_tiny
    from vea_bench.prompts import categorical_instruction

    tmp = Path(tempfile.mkdtemp(prefix="vea-bench-extract-"))
    vlm = args.vlm or str(make_tiny("qwen2-vl", tmp / "tiny-qwen2-vl"))
    teacher_path = args.teacher or str(make_tiny_teacher(tmp / "tiny-teacher"))
    per_class = max(3, -(-args.images // 8))
    root = make_synthetic("fi", tmp / "images", per_class=per_class, size=args.size, seed=0)
    if args.real_size:
        for p in root.rglob("*.jpg"):
            Image.open(p).convert("RGB").resize((args.real_size, args.real_size)).save(p, quality=90)
    index = load_dataset("fi", root)  # Mikels' 8, like an FI-trained teacher
    index.splits = {"all": [s for split in index.splits.values() for s in split][: args.images]}
    prompt = categorical_instruction(index.label_space)

    opts = LoadOptions(vlm, dtype=args.dtype, quantization=args.quant, device=args.device, max_pixels=args.max_pixels)
    t_load = time.perf_counter()
    backend = load_vlm(opts)
    load_s = time.perf_counter() - t_load
    load_peak = _peak_mb()
    teacher, meta = load_teacher(teacher_path, device=str(backend.device))
    gen = GenerationOptions(max_new_tokens=args.max_new_tokens)

    # Warm both paths up once (first-call allocations, kernel selection) before timing.
    paths = [index.root / s.path for s in index.splits["all"]]
    reference_schedule(backend, teacher, meta, paths[:1], prompt, 4, args.ref_eos_stop)
    extract(index, tmp / "warm.h5", vlm=opts, vlm_backend=backend, generation=gen, teachers=[teacher_path],
            limit=args.batch_size, batch_size=args.batch_size, num_workers=0)

    _reset_peak()
    one = extract(index, tmp / "bench.h5", vlm=opts, vlm_backend=backend, answer_modes=("generate",),
                  generation=gen, teachers=[teacher_path], batch_size=args.batch_size, num_workers=args.workers)
    one_peak = _peak_mb()
    _reset_peak()
    ref = reference_schedule(backend, teacher, meta, paths[: args.ref_images], prompt, args.ref_max_new_tokens,
                             args.ref_eos_stop)
    ref_peak = _peak_mb()

    ratio = one.images_per_s / ref["images_per_s"] if ref["images_per_s"] else float("nan")
    device = str(backend.device)
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(0)})"
    figures = {
        "vlm": vlm if args.vlm else "tiny qwen2-vl (random)",
        "device": device,
        "dtype": backend.provenance().get("dtype"),
        "quantization": args.quant,
        "threads": torch.get_num_threads(),
        "image_side": args.real_size or args.size,
        "load_s": round(load_s, 2),
        "one_pass": {"images": one.images, "seconds": round(one.loop_s, 3),
                     "images_per_s": round(one.images_per_s, 3), "batch_size": args.batch_size,
                     "max_new_tokens": args.max_new_tokens, "workers": args.workers,
                     "peak_gpu_mb": None if one_peak is None else round(one_peak)},
        "reference": {"images": ref["images"], "seconds": round(ref["seconds"], 3),
                      "images_per_s": round(ref["images_per_s"], 4), "new_tokens": ref["new_tokens"],
                      "max_new_tokens": args.ref_max_new_tokens, "eos_stop": args.ref_eos_stop,
                      "peak_gpu_mb": None if ref_peak is None else round(ref_peak)},
        "load_peak_gpu_mb": None if load_peak is None else round(load_peak),
        "speedup": round(ratio, 1),
    }
    print(f"device: {figures['device']}  dtype: {figures['dtype']}  quant: {args.quant}  threads: {figures['threads']}")
    print(f"model: {figures['vlm']}  (loaded in {load_s:.1f} s)")
    print(f"one-pass : {one.images:4d} images in {one.loop_s:8.2f} s = {one.images_per_s:8.3f} images/s "
          f"(batch {args.batch_size}, greedy, <= {args.max_new_tokens} tokens, stop at '}}', features + teacher from the same pass)")
    print(f"reference: {ref['images']:4d} images in {ref['seconds']:8.2f} s = {ref['images_per_s']:8.4f} images/s "
          f"(batch 1, sampled T=0.8, {ref['new_tokens']} new tokens, separate vision pass, separate teacher)")
    print(f"speed-up : {ratio:.1f}x")
    if one_peak is not None:
        print(f"peak GPU memory: one-pass {one_peak / 1024:.2f} GiB, reference {ref_peak / 1024:.2f} GiB, "
              f"after loading {load_peak / 1024:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
