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
    return p.parse_args(argv)


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
