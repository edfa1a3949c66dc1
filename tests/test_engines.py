"""Engines apart from families, on a tiny real Qwen2-VL: one vision pass serves the embedding and
the answers, embed-only skips the language model, the engine is recorded, and the guide's engine
file registers and runs as written."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _extract_helpers import backend, fi_root, index, tiny_dir  # noqa: F401  (fixtures)

from vea_bench.cache import FeatureCache
from vea_bench.errors import ModelError
from vea_bench.extract import extract
from vea_bench.models.base import GenerationOptions, LoadOptions
from vea_bench.models.engines import (
    ENGINES,
    Answerer,
    VisualEncoder,
    engine_provenance,
    load_engine,
    source_engine,
)
from vea_bench.registry import RegistryError

torch.set_num_threads(1)

GEN = GenerationOptions(max_new_tokens=4)
GUIDE = Path(__file__).resolve().parent.parent / "docs" / "extending.md"
ENGINES_PY = Path(__file__).resolve().parent.parent / "vea_bench" / "models" / "engines.py"


def _run(index, backend, tiny_dir, path: Path, engine: str, modes=("generate", "score")):  # noqa: F811
    return extract(index, path, vlm=LoadOptions(str(tiny_dir["qwen"]), device="cpu"), vlm_backend=backend,
                   answer_modes=modes, generation=GEN, batch_size=4, num_workers=0, splits=["test"], engine=engine)


def _calls(module: torch.nn.Module, hooks: list) -> list[int]:
    """A counter of ``module``'s forward calls (a hook on the real module, removed by the caller)."""
    count = [0]
    hooks.append(module.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1)))
    return count


def _block(heading: str) -> str:
    section = GUIDE.read_text().split(heading, 1)[1]
    m = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert m, f"no python block under {heading!r}"
    return m.group(1)


@pytest.mark.parametrize("name", ENGINES.names())
def test_every_engine_serves_a_real_backend(name: str, backend) -> None:
    engine = load_engine(name, backend)
    assert isinstance(backend, VisualEncoder) and isinstance(backend, Answerer)
    assert engine.name == name and engine.backend is backend


def test_transformers_engine_runs_one_vision_pass_for_embedding_and_answers(backend, index) -> None:
    from PIL import Image

    from vea_bench.prompts import categorical_instruction

    hooks: list = []
    try:
        vision = _calls(backend.model.get_submodule(backend.family.vision_module), hooks)
        decoder = _calls(backend.decoder, hooks)
        images = [Image.new("RGB", (32, 32), (i * 40, 90, 200)) for i in range(3)]
        batch = backend.prepare(images, categorical_instruction(index.label_space))
        out = load_engine("transformers", backend).run(batch, generate=True, generation=GEN,
                                                        score_labels=list(index.label_space.labels))
        assert vision[0] == 1 and out.texts is not None and out.logprobs.shape == (3, index.label_space.num_classes)
        lm_calls = decoder[0]
        assert lm_calls > 1   # the prefill, then scoring and decoding over its cache
        embedded = load_engine("embed-only", backend).run(batch, generate=True, score_labels=None, generation=GEN)
        # the embedding alone: one more vision pass, no language-model call, the same numbers
        assert vision[0] == 2 and decoder[0] == lm_calls and embedded.texts is None and embedded.logprobs is None
        np.testing.assert_array_equal(embedded.pooled, out.pooled)
    finally:
        for h in hooks:
            h.remove()


def test_engine_names_go_into_the_provenance_and_embed_only_writes_the_visual_source(
        tmp_path, index, backend, tiny_dir) -> None:  # noqa: F811
    _run(index, backend, tiny_dir, tmp_path / "t.h5", "transformers")
    _run(index, backend, tiny_dir, tmp_path / "e.h5", "embed-only")
    with FeatureCache.open(tmp_path / "t.h5") as full, FeatureCache.open(tmp_path / "e.h5") as emb:
        assert {s.kind for s in full.sources()} == {"visual", "vlm"}
        assert {s.kind for s in emb.sources()} == {"visual"}
        assert all(source_engine(s.provenance) == "transformers" for s in full.sources())
        assert source_engine(emb.source("visual", "qwen").provenance) == "embed-only"
        a, b = full.read("visual", "qwen", "test"), emb.read("visual", "qwen", "test")
        np.testing.assert_array_equal(a.arrays["emb"], b.arrays["emb"])


def test_the_guides_engine_registers_and_runs_as_written(tmp_path, index, backend, tiny_dir) -> None:  # noqa: F811
    code = _block("## Add an engine in one file")
    body = code[code.index("@ENGINES.register"):]
    assert body in ENGINES_PY.read_text(), "the guide's engine is not the one vea_bench ships"
    exec(compile(code.replace('"embed-only"', '"guide-embed"'), str(GUIDE), "exec"), {})
    try:
        summary = _run(index, backend, tiny_dir, tmp_path / "g.h5", "guide-embed", modes=("generate",))
        assert [s.name for s in summary.sources] == ["visual/qwen"] and summary.complete
        with FeatureCache.open(tmp_path / "g.h5") as cache:
            assert cache.source("visual", "qwen").provenance["engine"] == "guide-embed"
    finally:
        ENGINES.remove("guide-embed")


def test_unknown_engine_and_a_backend_missing_a_role_are_one_line_errors(backend) -> None:
    with pytest.raises(RegistryError, match="unknown VLM engine 'embed-onyl'; did you mean 'embed-only'"):
        load_engine("embed-onyl", backend)
    with pytest.raises(ModelError, match="needs a backend that is a VisualEncoder and Answerer"):
        load_engine("transformers", object())


def test_sources_from_before_engines_still_resume_with_the_default_engine() -> None:
    old = {"model": "m", "backend": "qwen2-vl"}            # written before engines were recorded
    assert engine_provenance("transformers", old) == {}   # so its stable provenance is unchanged
    assert engine_provenance("hf", None) == {"engine": "transformers"}
    assert engine_provenance("embed-only", old) == {"engine": "embed-only"}   # another engine: refused on resume
    assert source_engine(old) == "transformers"


def test_extract_cli_takes_the_engine(tmp_path, fi_root, tiny_dir) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from vea_bench_cli.main import app

    base = ["extract", "fi", "--root", str(fi_root), "--vlm", str(tiny_dir["qwen"]), "--device", "cpu",
            "--workers", "0", "--split", "test", "-q"]
    res = CliRunner().invoke(app, [*base, "--cache", str(tmp_path / "e.h5"), "--engine", "embed-only"])
    assert res.exit_code == 0, res.output
    with FeatureCache.open(tmp_path / "e.h5") as cache:
        assert [s.name for s in cache.sources()] == ["visual/qwen"]
    res = CliRunner().invoke(app, [*base, "--cache", str(tmp_path / "x.h5"), "--engine", "vlm-server"])
    assert res.exit_code == 2 and "unknown VLM engine 'vlm-server'" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.h5").exists()
