"""Backend details that decide Table 1's zero-shot rows: InstructBLIP's prompt (raw question, as
LAVIS trained it) and LLaVA-NeXT's pooling (unpadded any-resolution features), on tiny models of
the real classes."""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vea_bench.errors import ModelError
from vea_bench.labels import MIKELS8
from vea_bench.models import GenerationOptions, LoadOptions, load_vlm
from vea_bench.models.tiny import make_tiny
from vea_bench.prompts import SYSTEM_MESSAGE, categorical_instruction

PROMPT = categorical_instruction(MIKELS8)


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-prompts")
    return {k: make_tiny(k, root / k, seed=0) for k in ("instructblip", "llava-next")}


# ----------------------------------------------------------------------------------- InstructBLIP

def _lm_text_ids(be: Any, batch: dict[str, Any]) -> list[int]:
    """The LM's prompt ids of row 0 without the query placeholders the processor prepends."""
    image_id = be.core.config.image_token_index
    return [t for t in batch["input_ids"][0].tolist() if t != image_id]


def test_instructblip_default_prompt_is_the_raw_question_for_lm_and_qformer(tiny) -> None:
    be = load_vlm(LoadOptions(model=str(tiny["instructblip"]), device="cpu"))
    batch = be.prepare(_images([(40, 30), (30, 40)]), PROMPT)
    qtok, tok = be.processor.qformer_tokenizer, be.processor.tokenizer
    assert batch["qformer_input_ids"][0].tolist() == qtok(PROMPT)["input_ids"]
    assert _lm_text_ids(be, batch) == tok(PROMPT)["input_ids"]      # BOS + the question, nothing else
    n_query = be.core.config.num_query_tokens
    assert int((batch["input_ids"][0] == be.core.config.image_token_index).sum()) == n_query
    assert be.chat_text(PROMPT) == PROMPT
    assert be.provenance()["instructblip_prompt"] == "raw"
    out = be.run(batch, generate=True, score_labels=list(MIKELS8.labels), generation=GenerationOptions(max_new_tokens=4))
    assert np.isfinite(out.logprobs).all() and out.pooled.shape == (2, be.embed_dim)


def test_instructblip_vicuna_wrapper_is_an_option_and_qformer_still_reads_the_question(tiny) -> None:
    raw = load_vlm(LoadOptions(model=str(tiny["instructblip"]), device="cpu"))
    be = load_vlm(LoadOptions(model=str(tiny["instructblip"]), device="cpu", instructblip_prompt="vicuna"))
    img = _images([(40, 30)])
    batch = be.prepare(img, PROMPT)
    text = be.processor.tokenizer.decode(_lm_text_ids(be, batch), skip_special_tokens=True)
    assert text.startswith(SYSTEM_MESSAGE) and "USER: " + PROMPT in text and text.rstrip().endswith("ASSISTANT:")
    assert batch["qformer_input_ids"][0].tolist() == be.processor.qformer_tokenizer(PROMPT)["input_ids"]
    assert batch["qformer_attention_mask"].shape == batch["qformer_input_ids"].shape
    # The Q-Former reads the same text either way, so the pooled embedding is the same; the answer is not.
    a = raw.run(raw.prepare(img, PROMPT), generate=False, score_labels=list(MIKELS8.labels),
                generation=GenerationOptions())
    b = be.run(batch, generate=False, score_labels=list(MIKELS8.labels), generation=GenerationOptions())
    np.testing.assert_allclose(a.pooled, b.pooled, atol=1e-5, rtol=0)
    assert not np.allclose(a.logprobs, b.logprobs, atol=1e-3)
    pa, pb = raw.provenance(), be.provenance()
    assert pb["instructblip_prompt"] == "vicuna" and pa["chat_template_sha256"] != pb["chat_template_sha256"]
    with pytest.raises(ModelError, match="raw, vicuna"):
        load_vlm(LoadOptions(model=str(tiny["instructblip"]), device="cpu", instructblip_prompt="llava"))


def test_instructblip_processor_without_num_query_tokens_is_one_line(tiny, tmp_path) -> None:
    be = load_vlm(LoadOptions(model=str(tiny["instructblip"]), device="cpu"))
    prep = copy.copy(be.preparer())
    prep.processor = copy.copy(prep.processor)
    prep.processor.num_query_tokens = None
    with pytest.raises(ModelError) as e:
        prep(_images([(40, 30)]), PROMPT)
    msg = str(e.value)
    assert "\n" not in msg and "num_query_tokens" in msg and "processor_config.json" in msg
    # A saved model whose processor config lacks it is refused at load, with the value to add.
    d = tmp_path / "old-blip"
    shutil.copytree(tiny["instructblip"], d)
    cfg = json.loads((d / "processor_config.json").read_text())
    cfg.pop("num_query_tokens")
    (d / "processor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=rf'"num_query_tokens": {be.core.config.num_query_tokens}'):
        load_vlm(LoadOptions(model=str(d), device="cpu"))


# ----------------------------------------------------------------------------------- LLaVA-NeXT

def _unpadded_rows(be: Any, batch: dict[str, Any], i: int) -> tuple[torch.Tensor, int]:
    """Projector rows of image ``i`` that show the image (base view + the tiles' unpadded area),
    computed here from the vision tower and the anyres geometry, and the newline count."""
    from transformers.image_processing_utils import select_best_resolution

    core, cfg = be.core, be.core.config
    h, w = (int(v) for v in batch["image_sizes"][i])
    side = cfg.vision_config.image_size
    p = side // cfg.vision_config.patch_size                          # tokens per crop side
    best_h, best_w = select_best_resolution((h, w), cfg.image_grid_pinpoints)
    gh, gw = best_h // side, best_w // side
    n = 1 + gh * gw
    with torch.inference_mode():
        hs = core.model.vision_tower(batch["pixel_values"][i, :n], output_hidden_states=True).hidden_states
        proj = core.model.multi_modal_projector(hs[cfg.vision_feature_layer][:, 1:])   # n x p*p x D
    d = proj.shape[-1]
    canvas = proj[1:].view(gh, gw, p, p, d).permute(0, 2, 1, 3, 4).reshape(gh * p, gw * p, d)
    rows, cols = gh * p, gw * p
    if w / h > cols / rows:                     # wider than the canvas: bands above and below
        keep = int(round(h * cols / w, 7))
        pad = (rows - keep) // 2
        canvas = canvas[pad:rows - pad]
    else:
        keep = int(round(w * rows / h, 7))
        pad = (cols - keep) // 2
        canvas = canvas[:, pad:cols - pad]
    return torch.cat([proj[0], canvas.reshape(-1, d)]), canvas.shape[0]


def test_llava_next_pools_exactly_the_unpadded_features(tiny) -> None:
    be = load_vlm(LoadOptions(model=str(tiny["llava-next"]), device="cpu"))
    sizes = [(48, 32), (32, 60), (40, 40)]                  # wide, tall, square
    batch = be.prepare(_images(sizes), PROMPT)
    out = be.run(batch, generate=False, score_labels=None, generation=GenerationOptions())
    image_id = be.core.config.image_token_index
    padded_any = False
    for i in range(len(sizes)):
        rows, n_newline = _unpadded_rows(be, batch, i)
        # The processor's own token count agrees: the LM reads these rows plus one newline per row.
        assert int((batch["input_ids"][i] == image_id).sum()) == rows.shape[0] + n_newline
        np.testing.assert_allclose(out.pooled[i], rows.float().mean(0).numpy(), atol=1e-5, rtol=0)
        crops = be.crops_per_image(batch["image_sizes"][i:i + 1])[0]
        all_crop_tokens = crops * (be.core.config.vision_config.image_size // be.core.config.vision_config.patch_size) ** 2
        padded_any |= rows.shape[0] < all_crop_tokens
    assert padded_any, "no test image needed padding: the test would not tell the pools apart"


def test_llava_next_padded_area_no_longer_enters_the_pool(tiny) -> None:
    """Old pool: mean over every crop token, padding included. For an image on a padded canvas it
    differs from the unpadded pool by the padded rows' share; for one that fills its canvas the two agree."""
    be = load_vlm(LoadOptions(model=str(tiny["llava-next"]), device="cpu"))
    captured: list[torch.Tensor] = []
    hook = be.core.model.multi_modal_projector.register_forward_hook(lambda _m, _i, o: captured.append(o))
    try:
        pooled = {}
        for size in [(64, 32), (48, 32)]:                  # fills a 64x32 pinpoint; needs padding on 64x64
            captured.clear()
            batch = be.prepare(_images([size]), PROMPT)
            pooled[size] = (be.run(batch, generate=False, score_labels=None, generation=GenerationOptions()).pooled[0],
                            captured[0].float().mean(dim=(0, 1)).numpy())
    finally:
        hook.remove()
    new, old = pooled[(64, 32)]
    np.testing.assert_allclose(new, old, atol=1e-5, rtol=0)
    new, old = pooled[(48, 32)]
    assert np.abs(new - old).max() > 1e-3


def test_extract_records_the_instructblip_prompt_and_refuses_mixing_it(tiny, synthetic_root, tmp_path) -> None:
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    from vea_bench.cache import FeatureCache

    root = synthetic_root("fi", per_class=3)
    cache = tmp_path / "blip.h5"
    args = ["extract", "fi", "--root", str(root), "--vlm", str(tiny["instructblip"]), "--cache", str(cache),
            "--device", "cpu", "--workers", "0", "--max-new-tokens", "4", "--limit", "1", "--quiet"]
    r = CliRunner().invoke(app, [*args, "--instructblip-prompt", "vicuna"])
    assert r.exit_code == 0, r.output
    with FeatureCache.open(cache) as c:
        (src,) = c.sources("vlm")
        assert src.provenance["instructblip_prompt"] == "vicuna"
    # Rows answered under the other prompt do not join those rows.
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "Traceback" not in r.output and "instructblip_prompt" in r.output, r.output
    bad = CliRunner().invoke(app, [*args[:-1], "--image-position", "middle"])
    assert bad.exit_code != 0 and "first, last" in bad.output and "Traceback" not in bad.output
