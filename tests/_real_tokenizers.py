"""The real checkpoints' tokenizers, rebuilt offline for the tests from what the package registry ships.

Each bundled preset has ``vea_bench/data/configs/<config>.tokenizer.json``: where its vocabulary
comes from (a file inside a PyPI distribution: llama.cpp's vocab-only GGUF files in the
llama-cpp-python sdist, Mistral's SentencePiece model in mistral-common, the GGUF headers of small
Gemma 3 and SmolLM2 checkpoints), the real added tokens at their real ids, the tokenizer_config
settings and the chat template, each with its source. `real_processor` downloads the distribution
once (``pip download``, cached under ``$VEA_BENCH_TEST_DOWNLOADS`` or ``~/.cache/vea-bench``),
builds the tokenizer with transformers' own GGUF / SentencePiece conversion, checks the file's
sha256 and every added token's id, and puts it with the real chat template next to a tiny model's
image processor: a processor that tokenises exactly as the real checkpoint's does.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from vea_bench.models.arch import tokenizer_record

CACHE = Path(os.environ.get("VEA_BENCH_TEST_DOWNLOADS", Path.home() / ".cache" / "vea-bench" / "test-downloads"))


def spec_of(preset: str) -> dict[str, Any]:
    """The tokenizer record bundled next to ``preset``'s architecture config."""
    return tokenizer_record(preset)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_member(vocab: dict[str, Any], member: str | None = None) -> Path:
    """``member`` (default: the vocabulary file) of the distribution ``vocab`` names, downloaded once
    with pip and kept in the cache; the vocabulary file's sha256 is checked."""
    member = member or vocab["member"]
    out = CACHE / f"{vocab['package']}-{vocab['version']}" / member
    if not out.is_file():
        dists = CACHE / "dists"
        dists.mkdir(parents=True, exist_ok=True)
        kind = ["--no-binary", ":all:"] if vocab["dist"] == "sdist" else ["--only-binary", ":all:"]
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind,
                               f"{vocab['package']}=={vocab['version']}", "-d", str(dists)],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"pip download {vocab['package']}=={vocab['version']} failed: "
                               + " | ".join(done.stderr.strip().splitlines()[-3:]))
        name = vocab["package"].replace("-", "_").lower()
        archive = next(p for p in dists.iterdir()
                       if p.name.replace("-", "_").lower().startswith(f"{name}_{vocab['version']}"))
        tmp = out.with_name(out.name + ".part")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tar:
                entry = next(m for m in tar.getmembers() if m.name.split("/", 1)[-1] == member)
                src = tar.extractfile(entry)
                assert src is not None
                with tmp.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        else:
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        tmp.replace(out)
    if member == vocab["member"]:
        assert _sha256(out) == vocab["sha256"], f"{out} is not the recorded file"
    return out


def _sentencepiece_pieces(path: Path) -> dict[str, Any]:
    """Pieces, scores and types of a SentencePiece ModelProto (field 1), read without sentencepiece."""
    data = path.read_bytes()

    def varint(buf: bytes, i: int) -> tuple[int, int]:
        shift = value = 0
        while True:
            b = buf[i]
            i += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value, i

    tokens, scores, types = [], [], []
    i = 0
    while i < len(data):
        key, i = varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, i = varint(data, i)
            body, i = data[i:i + n], i + n
            if field == 1:
                piece, score, kind, j = "", 0.0, 1, 0
                while j < len(body):
                    k, j = varint(body, j)
                    if k & 7 == 2:
                        m, j = varint(body, j)
                        piece, j = body[j:j + m].decode("utf-8"), j + m
                    elif k & 7 == 5:
                        score, j = struct.unpack("<f", body[j:j + 4])[0], j + 4
                    else:
                        kind, j = varint(body, j)
                tokens.append(piece)
                scores.append(score)
                types.append(kind)
        elif wire == 0:
            _, i = varint(data, i)
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
    return {"tokenizer_type": "llama", "tokens": tokens, "scores": scores, "token_type": types}


def _base_tokenizer(spec: dict[str, Any]) -> Any:
    """The vocabulary's own tokenizer in the checkpoint's tokenizer class (no added tokens yet)."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (add_gguf_special_tokens, get_gguf_tokenizer,
                                                                      get_merges, select_tokenizer_builder)

    vocab = spec["vocab"]
    path = fetch_member(vocab)
    if vocab["format"] == "gguf":
        architecture, td, _ = get_gguf_tokenizer(str(path))
    else:
        architecture, td = "llama", _sentencepiece_pieces(path)
    n = vocab["base_tokens"]
    assert len(td["tokens"]) >= n
    td = dict(td, tokens=td["tokens"][:n], **{k: td[k][:n] for k in ("scores", "token_type") if td.get(k) is not None})
    if spec["tokenizer_class"] == "Qwen2Tokenizer":
        tok = Qwen2Tokenizer(vocab={t: i for i, t in enumerate(td["tokens"])}, merges=get_merges(td), unk_token=None,
                             bos_token=None, eos_token=None, pad_token=None)
    else:
        tok = select_tokenizer_builder(architecture, td["tokenizer_type"])(td)
        tok = add_gguf_special_tokens(tok, td)
    if vocab.get("pre_tokenizer") == "smollm":  # llama.cpp's 'smollm': single digits, then GPT-2's split
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    assert len(tok) == n, (len(tok), n)
    return tok


def build_tokenizer_dir(preset: str) -> Path:
    """A folder with the real tokenizer of ``preset`` (tokenizer.json + tokenizer_config.json), cached."""
    from tokenizers import AddedToken

    spec = spec_of(preset)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    out = CACHE / "tokenizers" / f"{preset}-{key}"
    if (out / "tokenizer.json").is_file():
        return out
    tok = _base_tokenizer(spec)
    for entry in spec["added_tokens"]:
        assert len(tok) == entry["id"], (entry, len(tok))
        tok.add_tokens([AddedToken(entry["content"], special=entry["special"], normalized=False)],
                       special_tokens=entry["special"])
        assert tok.convert_tokens_to_ids(entry["content"]) == entry["id"], entry
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        setattr(tok, name, spec[name])
    tok.add_bos_token, tok.add_eos_token = spec["add_bos_token"], spec["add_eos_token"]   # the post-processor
    tmp = out.with_name(out.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    for key_name in ("bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token", "add_eos_token"):
        cfg[key_name] = spec[key_name]
    cfg["tokenizer_class"] = spec["tokenizer_class"]
    cfg["add_prefix_space"] = spec["add_prefix_space"]
    if spec["vocab"].get("pre_tokenizer") == "sentencepiece-legacy":
        cfg["legacy"] = True     # SentencePiece's dummy prefix before every run of text, as LLaMA's own
    cfg.update(spec["named_tokens"])
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def real_processor(preset: str, tiny_dir: Path, workdir: Path) -> Any:
    """``preset``'s processor as the checkpoint's: its real tokenizer and chat template with the tiny
    model's image processor (the token ids do not depend on the image side's size)."""
    from transformers import AutoProcessor

    spec = spec_of(preset)
    out = workdir / f"real-{preset}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for p in tiny_dir.iterdir():
        skip = ("model.safetensors", "chat_template.jinja", "chat_template.json")
        if p.name in skip or p.name.startswith("tokenizer"):
            continue
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, out / p.name)
    for p in build_tokenizer_dir(preset).iterdir():
        shutil.copy2(p, out / p.name)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["padding_side"] = "left"
    processor_class = json.loads((tiny_dir / "processor_config.json").read_text()).get("processor_class")
    if processor_class:
        cfg["processor_class"] = processor_class
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    if spec["chat_template"] is not None:
        (out / "chat_template.jinja").write_text(spec["chat_template"])
    return AutoProcessor.from_pretrained(str(out))


def llama_cpp_vectors(spec: dict[str, Any]) -> list[tuple[str, list[int]]]:
    """llama.cpp's test vectors for a vocab-only GGUF: (text, ids the source tokenizer gives)."""
    vocab = spec["vocab"]
    inp = fetch_member(vocab, vocab["test_vectors"] + ".inp").read_text(encoding="utf-8")
    outp = fetch_member(vocab, vocab["test_vectors"] + ".out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")
    ids = outp.strip("\n").split("\n")
    if texts and texts[-1].endswith("\n__ggml_vocab_test__"):
        texts[-1] = texts[-1].removesuffix("\n__ggml_vocab_test__")
    assert len(texts) >= len(ids)
    return [(t, [int(x) for x in line.split()]) for t, line in zip(texts, ids)]
