"""VLM backends on tiny random-weight models of the real classes (fp32, CPU).

Tolerances: pooled embeddings atol 1e-5 (same fp32 ops, different batch shapes); log-probs atol
2e-4 (sums of ~10-20 token log-probs over vocabularies of ~600, cached vs uncached attention);
greedy texts must be identical.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from vea_bench.errors import ModelError, VeaError
from vea_bench.labels import MIKELS8
from vea_bench.models import VLM_BACKENDS, GenerationOptions, LoadOptions, load_vlm
from vea_bench.models.engine import cap_image
from vea_bench.models.generic import family_supported, families, module_at
from vea_bench.models.tiny import make_tiny
from vea_bench.prompts import categorical_answer, categorical_instruction

# Backends whose pooled embedding the tests recompute with hand-written reference code below
# (every other family is checked against separate `get_image_features` calls).
HAND_WRITTEN = ("qwen2-vl", "qwen2.5-vl", "llava-next", "instructblip")
# Every registered backend with a tiny model is tested here: a new family needs no new test.
# Families that need a newer transformers than the installed one (`min_transformers`) are refused
# at load (tested in test_families.py) and left out here: the lowest-version CI job runs this file.
KINDS = tuple(name for name, fam in families().items() if fam.tiny and family_supported(fam))
BACKEND_OF = {k: k for k in KINDS}  # tiny kind == backend name
PROMPT = categorical_instruction(MIKELS8)
LABELS = list(MIKELS8.labels)
GREEDY = GenerationOptions(max_new_tokens=12)
POOLED_ATOL = 1e-5
LOGPROB_ATOL = 2e-4


def _images(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


IMAGES = _images([(48, 32), (40, 56), (36, 36)])


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-vlms")
    return {k: make_tiny(k, root / k, seed=0) for k in KINDS}


@pytest.fixture(scope="module")
def backends(tiny_dirs: dict[str, Path]) -> dict[str, Any]:
    return {k: load_vlm(LoadOptions(model=str(tiny_dirs[k]), device="cpu")) for k in KINDS}


def _vision_module(kind: str, be: Any) -> torch.nn.Module:
    return module_at(be.core, be.family.vision_module)


def _direct_pooled(kind: str, be: Any, batch: dict[str, Any]) -> torch.Tensor:
    """The pooled embedding from a separate, explicit call of the vision tower (+merger/projector)."""
    core = be.core
    if kind not in HAND_WRITTEN:
        return _declared_direct_pooled(be, batch)
    with torch.inference_mode():
        if kind.startswith("qwen"):
            grid = batch["image_grid_thw"]
            merged = core.model.visual(batch["pixel_values"], grid_thw=grid).pooler_output
            sizes = (grid.prod(-1) // core.config.vision_config.spatial_merge_size ** 2).tolist()
            return torch.stack([t.mean(0) for t in torch.split(merged, sizes)])
        if kind == "llava-next":  # base view + unpadded tiles (tests/test_backend_prompts.py checks the geometry)
            from transformers.models.llava_next.modeling_llava_next import unpad_image

            rows = []
            counts = be.crops_per_image(batch["image_sizes"])
            p = core.config.vision_config.image_size // core.config.vision_config.patch_size
            for i, n in enumerate(counts):
                crops = batch["pixel_values"][i, :n]
                hs = core.model.vision_tower(crops, output_hidden_states=True).hidden_states
                feats = core.model.multi_modal_projector(hs[core.config.vision_feature_layer][:, 1:])  # drop CLS
                from transformers.image_processing_utils import select_best_resolution

                bh, bw = select_best_resolution(batch["image_sizes"][i].tolist(), core.config.image_grid_pinpoints)
                gh, gw = bh // core.config.vision_config.image_size, bw // core.config.vision_config.image_size
                grid = feats[1:].view(gh, gw, p, p, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
                tiles = unpad_image(grid, batch["image_sizes"][i]).flatten(1, 2).T
                rows.append(torch.cat([feats[0], tiles]).mean(0))
            return torch.stack(rows)
        image_embeds = core.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        query = core.query_tokens.expand(image_embeds.shape[0], -1, -1)
        qmask = torch.cat([torch.ones(query.shape[:-1], dtype=torch.long), batch["qformer_attention_mask"]], 1)
        q = core.qformer(input_ids=batch["qformer_input_ids"], attention_mask=qmask, query_embeds=query,
                         encoder_hidden_states=image_embeds,
                         encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long))
        return core.language_projection(q.last_hidden_state[:, : query.shape[1]]).mean(1)


def _declared_direct_pooled(be: Any, batch: dict[str, Any]) -> torch.Tensor:
    """A declared family's pooled embedding from separate per-image `get_image_features` calls (batch
    size 1, no left padding): the mean over that image's rows of what the language model reads, or
    over every crop token of the module the family names in ``pooled_from`` (any-resolution
    families: the rows the LM reads minus the learned newline tokens, i.e. no padding)."""
    rows = []
    with torch.inference_mode():
        for im in IMAGES[: batch["input_ids"].shape[0]]:
            single = be.prepare([im], PROMPT)
            kwargs = {k: single[k] for k in be.family.image_inputs if k in single}
            captured: list[torch.Tensor] = []
            hook = None
            if be.family.pooled_from:
                hook = module_at(be.core, be.family.pooled_from).register_forward_hook(
                    lambda _m, _i, o: captured.append(o))
            try:
                out = be.core.get_image_features(**kwargs).pooler_output
            finally:
                if hook is not None:
                    hook.remove()
            packed = torch.cat(list(out)) if isinstance(out, (list, tuple)) else out
            newline = getattr(getattr(be.core, "model", None), "image_newline", None)
            if newline is not None:  # any-resolution: what the LM reads minus its learned newline tokens
                packed = packed.reshape(-1, packed.shape[-1]).float()
                rows.append(packed[~torch.isclose(packed, newline.float()[None]).all(-1)].mean(0))
                continue
            feats = captured[0] if captured else packed
            rows.append(feats.reshape(-1, feats.shape[-1]).float().mean(0))
    return torch.stack(rows)


def _projector_out_width(kind: str, be: Any) -> int:
    core = be.core
    if kind not in HAND_WRITTEN:
        return int(_declared_direct_pooled(be, be.prepare(IMAGES[:1], PROMPT)).shape[-1])
    if kind.startswith("qwen"):
        return core.model.visual.merger.mlp[-1].out_features
    if kind == "llava-next":
        return core.model.multi_modal_projector.linear_2.out_features
    return core.language_projection.out_features


@pytest.mark.parametrize("kind", KINDS)
def test_autodetected_backend_and_embed_dim(kind: str, backends: dict[str, Any]) -> None:
    be = backends[kind]
    assert type(be) is VLM_BACKENDS.get(BACKEND_OF[kind])
    out = be.run(be.prepare(IMAGES[:2], PROMPT), generate=False, score_labels=None, generation=GREEDY)
    assert out.pooled.shape == (2, be.embed_dim)
    assert out.pooled.dtype == np.float32
    assert be.embed_dim == _projector_out_width(kind, be) == 64
    assert out.texts is None and out.logprobs is None


@pytest.mark.parametrize("kind", KINDS)
def test_pooled_equals_direct_vision_call(kind: str, backends: dict[str, Any]) -> None:
    be = backends[kind]
    batch = be.prepare(IMAGES, PROMPT)
    out = be.run(batch, generate=True, score_labels=LABELS, generation=GREEDY)
    direct = _direct_pooled(kind, be, batch).float().numpy()
    np.testing.assert_allclose(out.pooled, direct, atol=POOLED_ATOL, rtol=0)
    assert np.abs(out.pooled).max() > 1e-3  # not trivially zero


@pytest.mark.parametrize("kind", KINDS)
def test_one_vision_pass_per_batch(kind: str, backends: dict[str, Any]) -> None:
    """Generation (many decode steps) and scoring (all labels) reuse the single prefill."""
    be = backends[kind]
    calls: list[int] = []
    hook = _vision_module(kind, be).register_forward_hook(lambda *_: calls.append(1))
    try:
        be.run(be.prepare(IMAGES, PROMPT), generate=True, score_labels=LABELS,
               generation=GenerationOptions(max_new_tokens=8))
    finally:
        hook.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_batched_equals_batch_size_one(kind: str, backends: dict[str, Any]) -> None:
    be = backends[kind]
    full = be.run(be.prepare(IMAGES, PROMPT), generate=True, score_labels=LABELS, generation=GREEDY)
    singles = [be.run(be.prepare([im], PROMPT), generate=True, score_labels=LABELS, generation=GREEDY)
               for im in IMAGES]
    np.testing.assert_allclose(full.pooled, np.concatenate([s.pooled for s in singles]), atol=POOLED_ATOL, rtol=0)
    np.testing.assert_allclose(full.logprobs, np.concatenate([s.logprobs for s in singles]),
                               atol=LOGPROB_ATOL, rtol=0)
    assert full.texts == [s.texts[0] for s in singles]
    assert full.logprobs.shape == (3, len(LABELS))
    assert np.all(full.logprobs < 0) and np.all(np.isfinite(full.logprobs))


@pytest.mark.parametrize("kind", KINDS)
def test_score_equals_bruteforce_full_forward(kind: str, backends: dict[str, Any]) -> None:
    """Cached, label-batched scoring == the model's own forward over prompt+answer, per label."""
    be = backends[kind]
    out = be.run(be.prepare(IMAGES[:2], PROMPT), generate=False, score_labels=LABELS, generation=GREEDY)
    brute = np.zeros((2, len(LABELS)))
    with torch.inference_mode():
        for i, im in enumerate(IMAGES[:2]):
            single = be.prepare([im], PROMPT)
            n_prompt = single["input_ids"].shape[1]
            # the answer tokens as they follow the prompt (tests/test_tokenizer_conformance.py checks them
            # against the real tokenisation of the assistant turn)
            for c, ans in enumerate(be.answer_ids(LABELS)):
                b = dict(single)
                b["input_ids"] = torch.cat([single["input_ids"], torch.tensor([ans])], 1)
                b["attention_mask"] = torch.ones_like(b["input_ids"])
                if "mm_token_type_ids" in b:
                    b["mm_token_type_ids"] = torch.cat(
                        [single["mm_token_type_ids"], torch.zeros((1, len(ans)), dtype=torch.long)], 1)
                logits = be.core(**b).logits[0].float()
                lp = torch.log_softmax(logits[n_prompt - 1:-1], -1)
                brute[i, c] = lp.gather(-1, torch.tensor(ans)[:, None]).sum().item()
    np.testing.assert_allclose(out.logprobs, brute, atol=LOGPROB_ATOL, rtol=0)


def _generate_text(be: Any, batch: dict[str, Any], seed: int = 0, **kwargs: Any) -> str:
    """transformers' own `generate` on one image, new tokens decoded and cut after the first '}'."""
    torch.manual_seed(seed)
    with torch.inference_mode():
        ref = be.core.generate(**batch, max_new_tokens=GREEDY.max_new_tokens, **kwargs)
    text = be.tokenizer.decode(ref[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    cut = text.find("}")
    return text[: cut + 1] if cut >= 0 else text


@pytest.fixture
def reference_config(backends: dict[str, Any]) -> Any:
    """Every tiny model's generation_config as Qwen2-VL-Instruct's: top_k 1, repetition penalty 1.05
    (the tiny Qwen models ship it; the others get it here and have it restored after)."""
    saved = {k: (be.generation_config.top_k, be.generation_config.repetition_penalty) for k, be in backends.items()}
    for kind in ("qwen2-vl", "qwen2.5-vl"):
        gc = backends[kind].generation_config
        assert (gc.top_k, gc.repetition_penalty) == (1, 1.05)  # saved by make_tiny, as on the hub

    def apply(top_k: int = 1, penalty: float = 1.05) -> None:
        for be in backends.values():  # InstructBLIP's generate decodes with its language model's config
            be.generation_config.top_k = top_k
            be.generation_config.repetition_penalty = penalty

    yield apply
    for k, (top_k, penalty) in saved.items():
        backends[k].generation_config.top_k = top_k
        backends[k].generation_config.repetition_penalty = penalty


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_equals_transformers_generate(kind: str, backends: dict[str, Any], reference_config: Any) -> None:
    """Greedy is a plain argmax: `generate(do_sample=False)` with the checkpoint's penalty switched off.
    (A bare greedy `generate` would inherit the 1.05 penalty from generation_config.)"""
    be = backends[kind]
    reference_config()
    for im in IMAGES[:2]:
        batch = be.prepare([im], PROMPT)
        ours = be.run(batch, generate=True, score_labels=None, generation=GREEDY).texts[0]
        assert ours == _generate_text(be, batch, do_sample=False, repetition_penalty=1.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("penalty", [1.05, 3.0])
def test_reference_decoding_equals_transformers_generate(kind: str, penalty: float, backends: dict[str, Any],
                                                         reference_config: Any) -> None:
    """`--decoding reference` == the reference code's `generate(do_sample=True, temperature=0.8, top_p=1.0)`
    on a checkpoint whose generation_config has top_k 1 and a repetition penalty: greedy with the
    penalty over prompt + generated ids, batched rows as alone. (3.0 makes the penalty bite.)"""
    be = backends[kind]
    reference_config(top_k=1, penalty=penalty)
    gen = GenerationOptions(decoding="reference", seed=5, max_new_tokens=GREEDY.max_new_tokens)
    batch = be.prepare(IMAGES, PROMPT)
    ours = be.run(batch, generate=True, score_labels=None, generation=gen).texts
    refs = [_generate_text(be, be.prepare([im], PROMPT), seed=11, do_sample=True, temperature=0.8, top_p=1.0)
            for im in IMAGES]
    assert ours == refs
    greedy = be.run(batch, generate=True, score_labels=None, generation=GREEDY).texts
    if penalty == 3.0:
        assert ours != greedy  # the penalty is really applied
    prov = be.decoding_provenance(gen)
    assert (prov["decoding"], prov["top_k"], prov["repetition_penalty"], prov["temperature"]) == \
        ("reference", 1, penalty, 0.8)


@pytest.mark.parametrize("kind", KINDS)
def test_true_sampling_equals_transformers_generate(kind: str, backends: dict[str, Any],
                                                    reference_config: Any) -> None:
    """`--decoding sample` == `generate(do_sample=True, temperature=0.8, top_p=1.0)` with top_k off and no
    penalty, draw for draw from the same seed, whatever the checkpoint's generation_config says."""
    be = backends[kind]
    reference_config(top_k=1, penalty=1.05)
    im = IMAGES[0]
    batch = be.prepare([im], PROMPT)
    texts = []
    for seed in (0, 1, 2, 3):
        gen = GenerationOptions(decoding="sample", seed=seed, max_new_tokens=GREEDY.max_new_tokens)
        ours = be.run(batch, generate=True, score_labels=None, generation=gen).texts[0]
        assert ours == _generate_text(be, batch, seed=seed, do_sample=True, temperature=0.8, top_p=1.0, top_k=0,
                                      repetition_penalty=1.0)
        texts.append(ours)
    assert len(set(texts)) > 1  # it samples
    assert be.decoding_provenance(GenerationOptions(decoding="sample"))["top_k"] is None


def test_reference_refuses_generation_settings_it_cannot_apply(backends: dict[str, Any]) -> None:
    be = backends["qwen2-vl"]
    gc = be.generation_config
    gc.no_repeat_ngram_size = 3
    try:
        with pytest.raises(VeaError) as e:
            be.run(be.prepare(IMAGES[:1], PROMPT), generate=True, score_labels=None,
                   generation=GenerationOptions(decoding="reference"))
        assert "no_repeat_ngram_size=3" in _one_line(e.value)
    finally:
        gc.no_repeat_ngram_size = None


def test_decoding_options_are_checked() -> None:
    for kwargs, needle in [({"decoding": "beam"}, "unknown decoding"), ({"max_new_tokens": 0}, "max-new-tokens"),
                           ({"top_p": 1.5}, "top-p"), ({"score_memory_gb": 0}, "score memory")]:
        with pytest.raises(VeaError, match=needle):
            GenerationOptions(**kwargs)


def _decoder_calls(be: Any) -> tuple[list[tuple[int, int]], Any]:
    """(rows, tokens) of every language-model forward, and the hook handle to remove."""
    calls: list[tuple[int, int]] = []
    hook = be.decoder.register_forward_hook(
        lambda _m, _a, kw, _o: calls.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True)
    return calls, hook


@pytest.mark.parametrize("kind", KINDS)
def test_score_runs_shared_prefix_once_and_branches_per_label(kind: str, backends: dict[str, Any]) -> None:
    """No forward carries more rows than images (the prompt cache is never copied per label): one
    prefill, one forward of the answers' shared prefix, then one per label of its own tokens."""
    from vea_bench.models.engine import shared_prefix_len

    be = backends[kind]
    ans = be.answer_ids(LABELS)
    P = shared_prefix_len(ans)
    assert P >= 1 and all(a[:P] == ans[0][:P] for a in ans)      # "{'emotion':'" is shared
    calls, hook = _decoder_calls(be)
    try:
        out = be.run(be.prepare(IMAGES, PROMPT), generate=False, score_labels=LABELS, generation=GREEDY)
    finally:
        hook.remove()
    n_own = sum(len(a) - P > 1 for a in ans)
    assert len(calls) == 1 + 1 + n_own
    assert all(rows <= len(IMAGES) for rows, _ in calls), calls
    assert calls[1] == (len(IMAGES), P)
    assert max(tokens for _, tokens in calls[2:]) == max(len(a) - P for a in ans) - 1
    assert out.logprobs.shape == (len(IMAGES), len(LABELS))


@pytest.mark.parametrize("kind", ["qwen2-vl", "llava-next"])
def test_score_chunks_follow_memory_budget(kind: str, backends: dict[str, Any]) -> None:
    """--score-memory-gb sets the images per scoring forward; the scores do not depend on it."""
    from vea_bench.models.engine import shared_prefix_len

    be = backends[kind]
    batch = be.prepare(IMAGES, PROMPT)
    ans = be.answer_ids(LABELS)
    P = shared_prefix_len(ans)
    L = batch["input_ids"].shape[1]
    S = max(len(a) - P for a in ans)
    n_own = sum(len(a) - P > 1 for a in ans)
    per_row = 2 * (L + P + S) * be.kv_bytes_per_token() + max(P, S) * be.head.out_features * 12
    full = be.run(batch, generate=False, score_labels=LABELS, generation=GenerationOptions(score_memory_gb=1.0))
    for n_rows, chunks in [(1, [1, 1, 1]), (2, [2, 1])]:
        gen = GenerationOptions(score_memory_gb=(n_rows + 0.5) * per_row / 1e9)
        assert be.score_rows_per_chunk(gen, len(IMAGES), L, P, S) == n_rows
        calls, hook = _decoder_calls(be)
        try:
            out = be.run(batch, generate=False, score_labels=LABELS, generation=gen)
        finally:
            hook.remove()
        assert [rows for rows, _ in calls[1:]] == [n for n in chunks for _ in range(1 + n_own)]
        np.testing.assert_allclose(out.logprobs, full.logprobs, atol=LOGPROB_ATOL, rtol=0)


def test_kv_bytes_and_chunk_rows_of_the_real_7b_configs() -> None:
    """KV bytes per token from the real configs (bf16), and the images per chunk a 4 GB budget allows
    for a ~2,900-token LLaVA-NeXT prompt (the old code copied the prompt cache for 64 rows)."""
    from vea_bench.models.arch import load_arch_config
    from vea_bench.models.engine import kv_bytes_per_token, score_rows_per_chunk

    kv = {name: kv_bytes_per_token(load_arch_config(name), torch.bfloat16)
          for name in ("qwen2-vl-7b-instruct", "llava-next-mistral-7b", "instructblip-vicuna-7b")}
    assert kv == {"qwen2-vl-7b-instruct": 28 * 4 * 128 * 2 * 2, "llava-next-mistral-7b": 32 * 8 * 128 * 2 * 2,
                  "instructblip-vicuna-7b": 32 * 32 * 128 * 2 * 2}
    llava = kv["llava-next-mistral-7b"]
    assert score_rows_per_chunk(4e9, 8, 2900, 5, 4, llava, 32064) == 5
    assert score_rows_per_chunk(4e9, 3, 2900, 5, 4, llava, 32064) == 3
    assert score_rows_per_chunk(1e6, 8, 2900, 5, 4, llava, 32064) == 1
    assert score_rows_per_chunk(24e9, 8, 2900, 5, 4, llava, 32064) == 8


def _rigged(tiny_dir: Path, up: str, down: str) -> Any:
    """A backend whose every step picks ``up`` or ``down`` (final norm and head zeroed but for one unit)."""
    be = load_vlm(LoadOptions(model=str(tiny_dir), device="cpu"))
    tok = be.tokenizer
    with torch.no_grad():
        be.decoder.norm.weight.zero_()
        be.decoder.norm.weight[0] = 1.0
        be.head.weight.zero_()
        be.head.weight[tok.convert_tokens_to_ids(tok.tokenize(up)[-1]), 0] = 10.0
        be.head.weight[tok.convert_tokens_to_ids(tok.tokenize(down)[-1]), 0] = -10.0
    return be


def test_zero_shot_rows_get_a_longer_token_budget(tiny_dirs: dict[str, Path]) -> None:
    """Without an adapter a chatty answer gets 128 new tokens (not 24), an explicit budget wins, and a
    tuned model (adapter) keeps 24; the stop at '}' is unchanged (see the test below)."""
    from vea_bench.models.base import TUNED_MAX_NEW_TOKENS, ZERO_SHOT_MAX_NEW_TOKENS

    be = _rigged(tiny_dirs["qwen2-vl"], "x", "a")  # never '}' nor end-of-sequence
    batch = be.prepare(IMAGES[:1], PROMPT)
    for gen, n in [(GenerationOptions(), ZERO_SHOT_MAX_NEW_TOKENS), (GenerationOptions(max_new_tokens=30), 30),
                   (GenerationOptions(zero_shot_max_new_tokens=40), 40)]:
        text = be.run(batch, generate=True, score_labels=None, generation=gen).texts[0]
        assert len(text) == n and set(text) <= {"x", "a"}, text
    assert ZERO_SHOT_MAX_NEW_TOKENS == 128 and TUNED_MAX_NEW_TOKENS == 24
    tuned = type(be)(be.model, be.processor, LoadOptions(model=be.opts.model, adapter="runs/x/adapter"), be.config,
                     "cpu", torch.float32)
    assert len(tuned.run(batch, generate=True, score_labels=None, generation=GenerationOptions()).texts[0]) == 24
    assert be.decoding_provenance(GenerationOptions())["max_new_tokens"] == 128
    assert tuned.decoding_provenance(GenerationOptions())["max_new_tokens"] == 24


@pytest.mark.parametrize("kind", KINDS)
def test_engine_emits_no_future_warning(kind: str, backends: dict[str, Any]) -> None:
    """The prefill/decode loop uses the installed transformers' own cache argument (`cache` from 5.24,
    `past_key_values` before), so none of its calls is deprecated."""
    import warnings

    be = backends[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        be.run(be.prepare(IMAGES[:2], PROMPT), generate=True, score_labels=LABELS,
               generation=GenerationOptions(max_new_tokens=4))


@pytest.mark.parametrize("kind", KINDS)
def test_generation_stops_at_closing_brace(kind: str, tiny_dirs: dict[str, Path]) -> None:
    """Weights rigged so every step picks either 'x' or '}': rows end at their first '}'."""
    be = load_vlm(LoadOptions(model=str(tiny_dirs[kind]), device="cpu"))
    tok = be.tokenizer
    brace = tok.convert_tokens_to_ids(tok.tokenize("}")[-1])
    other = tok.convert_tokens_to_ids(tok.tokenize("x")[-1])
    with torch.no_grad():
        be.decoder.norm.weight.zero_()
        be.decoder.norm.weight[0] = 1.0
        be.head.weight.zero_()
        be.head.weight[brace, 0] = 10.0
        be.head.weight[other, 0] = -10.0
    steps: list[int] = []
    hook = be.decoder.register_forward_hook(lambda *_: steps.append(1))
    try:
        out = be.run(be.prepare(IMAGES + _images([(44, 52)], seed=3), PROMPT), generate=True,
                     score_labels=None, generation=GenerationOptions(max_new_tokens=24))
    finally:
        hook.remove()
    texts = out.texts
    assert all(re.fullmatch(r"x*\}?", t) for t in texts), texts
    assert all(t.endswith("}") for t in texts), texts
    assert max(len(t) for t in texts) < 24
    assert len(steps) == max(len(t) for t in texts)  # 1 prefill + (longest - 1) decode steps: it stopped


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_is_seeded(kind: str, backends: dict[str, Any]) -> None:
    be = backends[kind]
    batch = be.prepare(IMAGES, PROMPT)
    s = [be.run(batch, generate=True, score_labels=None,
                generation=GenerationOptions(decoding="sample", seed=seed, max_new_tokens=10)).texts
         for seed in (1, 1, 2)]
    assert s[0] == s[1]
    assert s[0] != s[2]


def test_cap_image_long_side_and_pixels() -> None:
    im = Image.new("RGB", (2000, 500))
    assert cap_image(im, 1024).size == (1024, 256)
    assert cap_image(Image.new("RGB", (300, 200)), 1024).size == (300, 200)  # never upscaled
    w, h = cap_image(Image.new("RGB", (800, 800)), 1024, max_pixels=160_000).size
    assert w * h <= 160_000 and abs(w - h) <= 1
    assert cap_image(Image.new("L", (10, 10)), 1024).mode == "RGB"


def test_prepare_caps_long_side_before_processor(backends: dict[str, Any]) -> None:
    be = backends["qwen2-vl"]
    be_small = type(be)(be.model, be.processor, LoadOptions(model=be.opts.model, max_side=40), be.config,
                        "cpu", torch.float32)
    big = _images([(120, 60)])[0]
    grid_big = be.prepare([big], PROMPT)["image_grid_thw"][0]
    grid_cap = be_small.prepare([big], PROMPT)["image_grid_thw"][0]
    assert grid_cap.prod() < grid_big.prod()
    assert int(grid_cap[2]) * 4 <= 48  # width 40 px -> rounded to the 8-px factor at most


def test_empty_prompt_is_an_error(backends: dict[str, Any]) -> None:
    with pytest.raises(ModelError, match="empty prompt"):
        backends["qwen2-vl"].prepare(IMAGES[:1], "  ")


def _one_line(err: BaseException) -> str:
    msg = str(err)
    assert "\n" not in msg and msg
    return msg


def test_wrong_model_path_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model=str(tmp_path / "no-such-model")))
    assert "does not exist" in _one_line(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model=str(tmp_path / "empty")))
    assert "config.json" in _one_line(e.value)


def test_unknown_model_type_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "weird"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "not_a_real_model"}))
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model=str(bad)))
    assert "not_a_real_model" in _one_line(e.value)
    from transformers import BertConfig

    bert = tmp_path / "bert"
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(bert)
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model=str(bert)))
    assert "no VLM backend for model type 'bert'" in _one_line(e.value)


def test_unreachable_hub_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model="no-such-org/no-such-vlm-xyz"))
    assert "no-such-org/no-such-vlm-xyz" in _one_line(e.value)


def test_quantization_on_cpu_and_bad_options(tiny_dirs: dict[str, Path]) -> None:
    d = str(tiny_dirs["qwen2-vl"])
    for opts, needle in [(LoadOptions(model=d, quantization="8bit", device="cpu"), "CUDA"),
                         (LoadOptions(model=d, quantization="3bit", device="cpu"), "unknown quantization"),
                         (LoadOptions(model=d, dtype="fp8"), "unknown dtype")]:
        with pytest.raises(ModelError) as e:
            load_vlm(opts)
        assert needle in _one_line(e.value)
    with pytest.raises(VeaError) as e:
        load_vlm(LoadOptions(model=d), backend="qwen-vl-9000")
    _one_line(e.value)


def _lora(base_dir: Path, out: Path, *, seed: int = 0, targets: tuple[str, ...] | None = None) -> Path:
    """A random LoRA adapter on ``base_dir``: q/v everywhere, or ``targets`` inside the language model only."""
    import transformers
    from peft import LoraConfig, get_peft_model

    from vea_bench.train.qlora import lora_target_regex

    cfg = json.loads((base_dir / "config.json").read_text())
    model = getattr(transformers, cfg["architectures"][0]).from_pretrained(base_dir)
    torch.manual_seed(seed)
    target: Any = ["q_proj", "v_proj"] if targets is None else lora_target_regex(model, targets)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=target,
                                                  init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


def test_adapter_loads_and_changes_answers_not_vision(tiny_dirs: dict[str, Path], backends: dict[str, Any],
                                                      tmp_path: Path) -> None:
    d = tiny_dirs["qwen2-vl"]
    adapter = _lora(d, tmp_path / "lora")
    be = load_vlm(LoadOptions(model=str(d), adapter=str(adapter), device="cpu"))
    batch = be.prepare(IMAGES[:2], PROMPT)
    with_lora = be.run(batch, generate=False, score_labels=LABELS, generation=GREEDY)
    plain = backends["qwen2-vl"].run(batch, generate=False, score_labels=LABELS, generation=GREEDY)
    np.testing.assert_allclose(with_lora.pooled, plain.pooled, atol=POOLED_ATOL)  # LoRA is on the LM only
    assert np.abs(with_lora.logprobs - plain.logprobs).max() > 1e-3
    prov = be.provenance()
    assert prov["adapter_sha256"] and prov["weights_sha256"] == backends["qwen2-vl"].provenance()["weights_sha256"]


@pytest.mark.parametrize("kind", KINDS)
def test_family_declaration_matches_its_model(kind: str, backends: dict[str, Any]) -> None:
    """What the family declares (module paths, pooled width, LoRA targets) is where its real class
    keeps them: `params`, `train vlm` and these tests read nothing else."""
    from vea_bench.train.qlora import language_model_prefix, lora_target_regex

    be = backends[kind]
    fam = be.family
    for path in fam.visual_paths + (fam.language_module,):
        assert isinstance(module_at(be.core, path), torch.nn.Module), path
    assert language_model_prefix(be.core) == fam.language_module
    regex = lora_target_regex(be.core)
    hits = [n for n, _ in be.core.named_modules() if re.fullmatch(regex, n)]
    assert hits and {n.rsplit(".", 1)[-1] for n in hits} == set(fam.lora_targets)
    assert all(n.startswith(fam.language_module + ".") for n in hits)
    pooled = be.run(be.prepare(IMAGES[:1], PROMPT), generate=False, score_labels=None, generation=GREEDY).pooled
    assert pooled.shape == (1, be.embed_dim_of(be.core.config)) == (1, fam.embed_dim(be.core.config))


@pytest.mark.parametrize("kind", KINDS)
def test_family_adapter_on_its_lora_targets(kind: str, tiny_dirs: dict[str, Path], backends: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """A LoRA adapter on the family's declared targets (language model only) loads, changes the label
    scores and leaves the visual embedding alone."""
    be0 = backends[kind]
    adapter = _lora(tiny_dirs[kind], tmp_path / "lora", targets=families()[kind].lora_targets)
    be = load_vlm(LoadOptions(model=str(tiny_dirs[kind]), adapter=str(adapter), device="cpu"))
    batch = be.prepare(IMAGES[:2], PROMPT)
    with_lora = be.run(batch, generate=False, score_labels=LABELS, generation=GREEDY)
    plain = be0.run(batch, generate=False, score_labels=LABELS, generation=GREEDY)
    np.testing.assert_allclose(with_lora.pooled, plain.pooled, atol=POOLED_ATOL)
    assert np.abs(with_lora.logprobs - plain.logprobs).max() > 1e-3
    assert be.provenance()["adapter_sha256"]


def test_adapter_for_another_base_is_refused(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    adapter = _lora(tiny_dirs["llava-next"], tmp_path / "lora-llava")
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model=str(tiny_dirs["qwen2-vl"]), adapter=str(adapter)))
    assert "trained on base model" in _one_line(e.value)
    # Same recorded base but weights of another shape (the record was edited): still one line.
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(tiny_dirs["instructblip"])
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model=str(tiny_dirs["instructblip"]), adapter=str(adapter)))
    assert "does not fit" in _one_line(e.value)
    with pytest.raises(ModelError) as e:
        load_vlm(LoadOptions(model=str(tiny_dirs["qwen2-vl"]), adapter=str(tmp_path / "nothing")))
    assert "does not exist" in _one_line(e.value)


def test_provenance_records_what_was_loaded(backends: dict[str, Any], tiny_dirs: dict[str, Path]) -> None:
    for kind, be in backends.items():
        prov = be.provenance()
        assert prov["backend"] == BACKEND_OF[kind]
        assert prov["embed_dim"] == be.embed_dim
        assert prov["dtype"] == "float32" and prov["max_side"] == 1024 and prov["quantization"] is None
        assert re.fullmatch(r"[0-9a-f]{64}", prov["weights_sha256"])
        json.dumps(prov)  # goes into HDF5 attributes / run records
    other = make_tiny("qwen2-vl", tiny_dirs["qwen2-vl"].parent / "qwen-seed1", seed=1)
    be1 = load_vlm(LoadOptions(model=str(other), device="cpu"))
    assert be1.provenance()["weights_sha256"] != backends["qwen2-vl"].provenance()["weights_sha256"]


def test_real_qwen2_vl_7b_on_meta_has_3584_wide_merger() -> None:
    from vea_bench.models.arch import build_on_meta, param_count
    from vea_bench.models.qwen2_vl import Qwen2VLBackend

    model = build_on_meta("qwen2-vl-7b-instruct")
    cfg = model.config
    assert model.model.visual.merger.mlp[-1].out_features == 3584
    assert Qwen2VLBackend.embed_dim_of(cfg) == 3584
    t, v = cfg.text_config, cfg.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads, t.vocab_size,
            t.intermediate_size) == (3584, 28, 28, 4, 152064, 18944)
    assert (v.depth, v.embed_dim, v.num_heads, v.patch_size, v.spatial_merge_size, v.temporal_patch_size) == \
        (32, 1280, 16, 14, 2, 2)
    assert t.rope_parameters["mrope_section"] == [16, 24, 24]
    assert next(model.parameters()).device.type == "meta"
    assert 8.2e9 < param_count(model) < 8.4e9  # Qwen2-VL-7B has 8.29 B parameters
