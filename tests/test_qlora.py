"""QLoRA instruction tuning on a tiny real Qwen2-VL (CPU, `--no-quant` LoRA): mask, learning, saving, loading."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vea_bench.datasets import load_dataset
from vea_bench.datasets.synthetic import make_synthetic
from vea_bench.errors import ModelError, VeaError
from vea_bench.models.tiny import make_tiny
from vea_bench.prompts import SYSTEM_MESSAGE
from vea_bench.train.instructions import Instruction, load_instructions
from vea_bench.train.qlora import (
    ADAPTER_META,
    QLoRAConfig,
    encode_example,
    load_base,
    lora_target_regex,
    train_step,
    train_vlm,
    wrap_lora,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("qlora")
    vlm = make_tiny("qwen2-vl", base / "tiny-qwen", seed=0)
    root = make_synthetic("imagefolder", base / "data", per_class=4, size=32, seed=0, label_space="binary")
    index = load_dataset("imagefolder", root)
    rows = []
    for s in index.split("train"):
        lab = index.label_space.labels[s.label]
        rows.append({"img_path": s.path, "img": Path(s.path).name, "label": lab,
                     "gpt_response": f"1. Key elements\nA {lab} scene with bright shapes and a tree.\n\n"
                                     f"2. Reasoning\nThe shapes and colours make the viewer feel {lab}."})
    inst = base / "instructions.json"
    inst.write_text(json.dumps(rows))
    return {"vlm": vlm, "index": index, "instructions": inst, "base": base}


def _cfg(vlm: Path, **kw) -> QLoRAConfig:
    args = {"vlm": str(vlm), "quantize": False, "lr": 2e-2, "max_steps": 8, "epochs": 5, "seed": 0}
    args.update(kw)
    return QLoRAConfig(**args)


class _StopAfter:
    """A Progress that interrupts the job after ``n`` training steps (a user's Ctrl-C)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.seen = 0

    def start(self, description, total=None):
        self.training = description.startswith("QLoRA")

    def advance(self, n=1, **info):
        if self.training and "loss" in info:
            self.seen += n
            if self.seen >= self.n:
                raise KeyboardInterrupt

    def finish(self):
        pass


def test_label_mask_covers_exactly_the_answer_tokens(setup) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(setup["vlm"])
    answer = "The dog lies calmly on the grass; the viewer feels content."
    inst = Instruction("x.jpg", "conversation", "Observe the image and describe key elements of the image.", answer, "positive")
    ex = encode_example(proc, inst, Image.new("RGB", (40, 28), (200, 120, 30)))
    ids, labels = ex["input_ids"][0], ex["labels"][0]
    kept = labels != -100
    # Decoded, the supervised tokens are the answer itself ...
    assert proc.tokenizer.decode(ids[kept], skip_special_tokens=True) == answer
    # ... plus the end-of-turn token that closes it, and they are one contiguous run at the end of the chat.
    pos = kept.nonzero().flatten()
    assert int(pos[-1] - pos[0] + 1) == int(kept.sum())
    assert proc.tokenizer.convert_ids_to_tokens(int(ids[pos[-1]])) == "<|im_end|>"
    assert torch.equal(labels[kept], ids[kept])
    # Everything of the prompt (system, question, every image token) is masked.
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (ids == image_id).sum() > 0 and (labels == image_id).sum() == 0
    n_answer = len(proc.tokenizer(answer, add_special_tokens=False)["input_ids"])
    assert int(kept.sum()) == n_answer + 1


def test_loss_on_all_trains_every_non_pad_non_image_token_like_the_reference(setup) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(setup["vlm"])
    answer = "The dog lies calmly on the grass; the viewer feels content."
    inst = Instruction("x.jpg", "conversation", "Observe the image and describe key elements of the image.", answer, "positive")
    img = Image.new("RGB", (40, 28), (200, 120, 30))
    ours = encode_example(proc, inst, img)
    ref = encode_example(proc, inst, img, loss_on="all")
    ids, labels = ref["input_ids"][0], ref["labels"][0]
    image_id = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal(ref["input_ids"], ours["input_ids"])
    kept = labels != -100
    # Everything but the image placeholders (no padding in a single example) carries loss ...
    assert torch.equal(kept, ids != image_id) and torch.equal(labels[kept], ids[kept])
    # ... system message and question included, which the default leaves out.
    text = proc.tokenizer.decode(ids[kept])
    assert SYSTEM_MESSAGE in text and inst.question in text and answer in text
    assert int(kept.sum()) > int((ours["labels"][0] != -100).sum())
    with pytest.raises(VeaError, match="loss-on"):
        _cfg(setup["vlm"], loss_on="prompt").validate()


def test_image_position_last_puts_the_question_before_the_image_in_training_and_extraction(setup) -> None:
    from PIL import Image
    from transformers import AutoProcessor

    from vea_bench.models import LoadOptions, load_vlm

    proc = AutoProcessor.from_pretrained(setup["vlm"])
    inst = Instruction("x.jpg", "categorical", "Which emotion is it?", "{'emotion': 'positive'}", "positive")
    img = Image.new("RGB", (32, 32), (10, 200, 30))

    def order(ids: torch.Tensor) -> tuple[int, int]:
        text = proc.tokenizer.decode(ids)
        return text.index("<|vision_start|>"), text.index(inst.question)

    vision, question = order(encode_example(proc, inst, img)["input_ids"][0])
    assert vision < question                                  # ours: image first
    ex = encode_example(proc, inst, img, image_position="last")
    vision, question = order(ex["input_ids"][0])
    assert question < vision                                  # the reference: text first
    assert proc.tokenizer.decode(ex["input_ids"][0][ex["labels"][0] != -100], skip_special_tokens=True) == inst.answer
    first = load_vlm(LoadOptions(model=str(setup["vlm"]), device="cpu"))
    last = load_vlm(LoadOptions(model=str(setup["vlm"]), device="cpu", image_position="last"))
    t = last.chat_text(inst.question)
    assert t.index(inst.question) < t.index("<|vision_start|>")
    f = first.chat_text(inst.question)
    assert f.index("<|vision_start|>") < f.index(inst.question)
    assert last.provenance()["image_position"] == "last"
    assert last.provenance()["chat_template_sha256"] != first.provenance()["chat_template_sha256"]
    with pytest.raises(ModelError, match="first, last"):
        load_vlm(LoadOptions(model=str(setup["vlm"]), device="cpu", image_position="middle"))


def test_lora_targets_language_model_only_and_only_lora_changes(setup) -> None:
    cfg = _cfg(setup["vlm"], gradient_checkpointing=True)
    base, proc, _ = load_base(cfg, "cpu")
    regex = lora_target_regex(base)
    model = wrap_lora(base, cfg)
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A")]
    assert lora_modules and all(".language_model." in n for n in lora_modules)
    assert {n.rsplit(".", 1)[-1] for n in lora_modules} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert not any("visual" in n for n in lora_modules)
    assert "language_model" in regex
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)

    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    from transformers import get_constant_schedule_with_warmup

    opt = torch.optim.AdamW(trainable, lr=1e-2)
    sched = get_constant_schedule_with_warmup(opt, 1)
    insts = load_instructions(setup["instructions"], setup["index"].label_space, index=setup["index"])
    from vea_bench.datasets import open_image

    model.train()
    for inst in insts[:3]:
        ex = encode_example(proc, inst, open_image(setup["index"].root / inst.image))
        train_step(model, ex, opt, sched, trainable, max_grad_norm=0.3, device="cpu", dtype=torch.float32)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert all("lora_" in k for k in changed), sorted(k for k in changed if "lora_" not in k)[:3]
    assert any("lora_B" in k for k in changed)


def test_training_lowers_loss_saves_adapter_that_changes_extraction(setup, tmp_path) -> None:
    out = tmp_path / "run"
    res = train_vlm(setup["index"], _cfg(setup["vlm"], max_steps=12), setup["instructions"], out,
                    device="cpu", eval_split="test", results_dir=tmp_path / "results")
    assert res.steps == 12 and len(res.losses) == 12
    assert sum(res.losses[-3:]) / 3 < sum(res.losses[:3]) / 3 - 0.5, res.losses
    adapter = out / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    meta = json.loads((adapter / ADAPTER_META).read_text())
    assert meta["base_model"] == str(setup["vlm"]) and meta["base_weights_sha256"]
    assert meta["config"]["lora_r"] == 8 and meta["config"]["lora_alpha"] == 8
    # Run records: in --out and in results/vlm, with the adapter dir and the test check.
    rec = json.loads(next(out.glob("vlm-*.json")).read_text())
    assert rec["kind"] == "vlm" and rec["method"] == "QLoRA"
    assert rec["config"]["adapter_dir"] == str(adapter) and rec["config"]["vlm"] == str(setup["vlm"])
    assert 0.0 <= rec["metrics"]["test"]["accuracy"] <= 1.0 and rec["metrics"]["test"]["n"] == len(setup["index"].split("test"))
    assert len(list((tmp_path / "results" / "vlm").glob("*.json"))) == 1

    # The adapter loads in extraction and changes what the model says about an image.
    from PIL import Image

    from vea_bench.models import GenerationOptions, LoadOptions, load_vlm
    from vea_bench.prompts import categorical_instruction

    space = setup["index"].label_space
    img = Image.new("RGB", (32, 32), (30, 160, 220))
    outs = []
    for adapter_dir in (None, str(adapter)):
        backend = load_vlm(LoadOptions(model=str(setup["vlm"]), adapter=adapter_dir, device="cpu"))
        batch = backend.prepare([img], categorical_instruction(space))
        outs.append(backend.run(batch, generate=True, score_labels=list(space.labels), generation=GenerationOptions()))
    plain, tuned = outs
    assert not torch.allclose(torch.as_tensor(plain.logprobs), torch.as_tensor(tuned.logprobs), atol=1e-3)
    assert backend.provenance().get("adapter") == str(adapter)


def test_interrupt_leaves_no_adapter_and_resume_matches_uninterrupted(setup, tmp_path) -> None:
    cfg = _cfg(setup["vlm"], max_steps=6, lr=5e-3)
    # max_steps 6 over 4 train images x 3 kinds = 12 instructions per epoch: a mid-epoch checkpoint every 2 steps.
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        train_vlm(setup["index"], cfg, setup["instructions"], out, device="cpu", save_every=2, eval_split=None,
                  results_dir=None, progress=_StopAfter(5))
    assert not (out / "adapter").exists(), "an interrupted run must not leave an adapter that looks complete"
    assert not list(out.glob(".adapter*"))
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["global_step"] == 4 and not state["finished"]

    resumed = train_vlm(setup["index"], cfg, setup["instructions"], out, device="cpu", save_every=2, eval_split=None,
                        results_dir=None)
    assert resumed.resumed_from_step == 4 and resumed.steps == 6
    straight = train_vlm(setup["index"], cfg, setup["instructions"], tmp_path / "straight", device="cpu",
                         eval_split=None, results_dir=None)
    assert [round(x, 5) for x in resumed.losses] == [round(x, 5) for x in straight.losses]
    from safetensors.torch import load_file

    a = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)

    # A finished run is not retrained; another config in the same --out is refused in one line.
    again = train_vlm(setup["index"], cfg, setup["instructions"], out, device="cpu", eval_split=None, results_dir=None)
    assert again.steps == 6
    with pytest.raises(VeaError, match="different configuration"):
        train_vlm(setup["index"], _cfg(setup["vlm"], max_steps=7), setup["instructions"], out, device="cpu",
                  eval_split=None, results_dir=None)


def test_nf4_qlora_on_cpu_trains_saves_reloads_onto_4bit_base_and_extracts(setup, tmp_path) -> None:
    """SPEC's stage-1 path for real: NF4 + double quantisation (bitsandbytes' CPU kernels), LoRA on it."""
    import warnings

    from PIL import Image
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    from vea_bench.models import GenerationOptions, LoadOptions, load_vlm
    from vea_bench.prompts import categorical_instruction

    vlm = make_tiny("qwen2-vl-nf4", tmp_path / "tiny-nf4", seed=0)
    out = tmp_path / "nf4-run"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated checkpointing call of ours
        r = CliRunner().invoke(app, ["train", "vlm", "imagefolder", "--root", str(setup["index"].root), "--vlm",
                                     str(vlm), "--instructions", str(setup["instructions"]), "--out", str(out),
                                     "--quant", "4bit", "--device", "cpu", "--max-steps", "3", "--lr", "2e-2",
                                     "--no-eval", "--quiet", "--results", str(tmp_path / "results")])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "adapter" / ADAPTER_META).read_text())
    assert meta["quantization"] == "nf4-double" and meta["config"]["quantize"] is True
    rec = json.loads(next(out.glob("vlm-*.json")).read_text())
    assert rec["config"]["base"]["dtype"] == "bfloat16" and math.isfinite(rec["config"]["train_loss_last"])

    space = setup["index"].label_space
    img = Image.new("RGB", (32, 32), (30, 160, 220))
    outs = []
    for adapter in (None, str(out / "adapter")):
        be = load_vlm(LoadOptions(model=str(vlm), adapter=adapter, device="cpu", quantization="4bit"))
        q_proj = be.core.model.language_model.layers[0].self_attn.q_proj
        # The base really is 4-bit: its weights are bitsandbytes NF4 blocks.
        base_layer = getattr(q_proj, "base_layer", q_proj)
        assert type(base_layer).__name__ == "Linear4bit" and base_layer.weight.quant_state.quant_type == "nf4"
        assert base_layer.weight.quant_state.nested  # double quantisation
        assert hasattr(q_proj, "lora_A") == (adapter is not None)
        batch = be.prepare([img], categorical_instruction(space))
        outs.append(be.run(batch, generate=True, score_labels=list(space.labels), generation=GenerationOptions()))
    plain, tuned = outs
    assert np.isfinite(tuned.logprobs).all() and tuned.texts is not None
    assert not np.allclose(plain.logprobs, tuned.logprobs, atol=1e-3)  # the trained adapter is applied
    assert be.provenance()["quantization"] == "4bit"


def test_cli_bad_instruction_file_is_one_line_and_leaves_nothing(setup, tmp_path) -> None:
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    bad = tmp_path / "bad.json"
    rows = json.loads(Path(setup["instructions"]).read_text())
    rows[1]["label"] = "boredom"
    bad.write_text(json.dumps(rows))
    out = tmp_path / "cli-run"
    r = CliRunner().invoke(app, ["train", "vlm", "imagefolder", "--root", str(setup["index"].root), "--vlm",
                                 str(setup["vlm"]), "--instructions", str(bad), "--out", str(out), "--no-quant",
                                 "--device", "cpu"])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    assert "entry 1" in r.output and "boredom" in r.output
    assert not (out / "adapter").exists()


@pytest.mark.parametrize("steps", [1])
def test_cli_trains_and_prints_adapter_path(setup, tmp_path, steps) -> None:
    from typer.testing import CliRunner
    from vea_bench_cli.main import app

    out = tmp_path / "cli-ok"
    r = CliRunner().invoke(app, ["train", "vlm", "imagefolder", "--root", str(setup["index"].root), "--vlm",
                                 str(setup["vlm"]), "--instructions", str(setup["instructions"]), "--out", str(out),
                                 "--quant", "none", "--device", "cpu", "--max-steps", str(steps), "--no-eval", "--quiet",
                                 "--loss-on", "all", "--image-position", "last", "--results", str(tmp_path / "results")])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().endswith(str(out / "adapter"))
    assert (out / "adapter" / "adapter_config.json").is_file()
    rec = json.loads(next(out.glob("vlm-*.json")).read_text())
    assert math.isfinite(rec["config"]["train_loss_last"])
    assert rec["config"]["loss_on"] == "all" and rec["config"]["image_position"] == "last"
    assert rec["config"]["quantize"] is False
    for bad, hint in ((["--quant", "3bit"], "--quant"), (["--loss-on", "everything"], "loss-on")):
        r = CliRunner().invoke(app, ["train", "vlm", "imagefolder", "--root", str(setup["index"].root), "--vlm",
                                     str(setup["vlm"]), "--instructions", str(setup["instructions"]), "--out",
                                     str(tmp_path / "bad"), "--device", "cpu", *bad])
        assert r.exit_code != 0 and "Traceback" not in r.output and hint in r.output
        assert not (tmp_path / "bad" / "adapter").exists()


def test_experiment_file_passes_loss_and_image_position_to_stage_1_and_extraction(tmp_path) -> None:
    from vea_bench.errors import ConfigError
    from vea_bench.pipeline.experiment import parse_experiment
    from vea_bench.pipeline.stages import build_stages

    data = {"dataset": {"name": "fi", "root": str(tmp_path)},
            "vlm": {"model": "Qwen/Qwen2-VL-7B-Instruct", "image_position": "last", "instructblip_prompt": "vicuna"},
            "qlora": {"instructions": str(tmp_path / "i.jsonl"), "loss_on": "all"}}
    stages = {s.name: s for s in build_stages(parse_experiment(data, base=tmp_path))}
    assert stages["qlora"].config["loss_on"] == "all" and stages["qlora"].config["image_position"] == "last"
    assert stages["extract"].config["vlm"]["image_position"] == "last"
    assert stages["extract"].config["vlm"]["instructblip_prompt"] == "vicuna"
    for section, key, value in (("qlora", "loss_on", "prompt"), ("vlm", "image_position", "middle")):
        bad = {k: dict(v) for k, v in data.items()}
        bad[section][key] = value
        with pytest.raises(ConfigError, match=rf"\[{section}\]\.{key}"):
            parse_experiment(bad, base=tmp_path)


def test_training_eval_decodes_with_extractions_engine(setup) -> None:
    """`train vlm`'s check answers exactly as extraction does: the same engine, prompt and decoding
    (greedy by default: not `generate`'s inherited 1.05 repetition penalty), and it records how."""
    from vea_bench.datasets import open_image
    from vea_bench.models import GenerationOptions, LoadOptions, load_vlm
    from vea_bench.models.parse import parse_answer
    from vea_bench.prompts import categorical_instruction
    from vea_bench.train.qlora import evaluate_categorical

    index, space = setup["index"], setup["index"].label_space
    model, processor, _ = load_base(_cfg(setup["vlm"]), "cpu")
    backend = load_vlm(LoadOptions(model=str(setup["vlm"]), device="cpu"))
    samples = index.split("test")
    for gen in (GenerationOptions(), GenerationOptions(decoding="reference", seed=3)):
        m = evaluate_categorical(model, processor, index, "test", device="cpu", dtype=torch.float32, generation=gen,
                                 model_ref=str(setup["vlm"]))
        assert m["extra"]["decoding"] == backend.decoding_provenance(gen)
        assert m["extra"]["decoding"]["decoding"] == gen.decoding
        answers = [backend.run(backend.prepare([open_image(index.root / s.path)], categorical_instruction(space)),
                               generate=True, score_labels=None, generation=gen).texts[0] for s in samples]
        hits = sum(parse_answer(a, space).label == s.label for a, s in zip(answers, samples))
        assert m["n"] == len(samples) and math.isclose(m["accuracy"], hits / len(samples))


def test_a_checkpoint_of_no_registered_family_is_refused_in_one_line(tmp_path: Path) -> None:
    """`train vlm` loads the class its family declares: another model type names the supported ones."""
    from vea_bench.train.qlora import _source_family

    d = tmp_path / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelError, match=r"no VLM backend for model type 'bert' \(supported: .*qwen2_vl") as err:
        _source_family(str(d))
    assert "\n" not in str(err.value)
