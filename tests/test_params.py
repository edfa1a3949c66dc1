"""Parameter counts from the architectures reproduce SPEC's figures (Tables 2 and 3), offline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from _report_helpers import record
from vea_bench.heads.gates import GATES, build_gate
from vea_bench.report import params as P
from vea_bench.report.paper import paper_results
from vea_bench.report.formats import to_markdown
from vea_bench.report.tables import load_results, table2, table3
from vea_bench.results import ResultsStore
from vea_bench_cli.main import app

SPEC_DISTILL = {  # depth: (FI 8 classes, Emotion6 6 classes)
    1: (3_679_240, 3_677_190), 2: (4_199_944, 4_198_918), 3: (4_329_224, 4_328_710),
    4: (4_361_096, 4_360_838), 5: (4_368_840, 4_368_710),
}


@pytest.mark.parametrize("depth", sorted(SPEC_DISTILL))
def test_distill_head_counts_match_spec(depth: int) -> None:
    dims = P.hidden_dims_for_depth(depth)
    assert dims == [1024, 512, 256, 128, 64][:depth]
    assert P.distill_head_params(3584, 8, dims) == SPEC_DISTILL[depth][0]
    assert P.distill_head_params(3584, 6, dims) == SPEC_DISTILL[depth][1]


def test_gate_counts_follow_the_spec_architectures() -> None:
    c = 8
    assert P.gate_params("concat", c) == 136
    assert P.gate_params("Concat & Linear", c) == 136
    assert P.gate_params("moe", c) == 3 * (2 * c * c + c) + (2 * c * 3 + 3)
    assert P.gate_params("bilinear", c) == (c * c * c + c) + (c * c + c)
    assert P.gate_params("DynamicWeighting", c) == (2 * c * 2 + 2) + (c * c + c)
    assert P.gate_params("cross", c) == 3 * (c * c + c)


@pytest.mark.parametrize("gate", GATES.names())
def test_every_registered_gate_is_counted_from_its_own_module(gate: str) -> None:
    """The report counts the gate module training builds (a new gate is counted with no report code)."""
    import torch

    for c in (2, 6, 8):
        module = build_gate(gate, c)
        assert P.gate_params(gate, c) == sum(p.numel() for p in module.parameters()) > 0
        v1, v2 = torch.randn(3, c), torch.nn.functional.one_hot(torch.arange(3) % c, c).float()
        assert module(v1, v2).shape == (3, c)


def test_vit_teacher_count_on_meta_device() -> None:
    assert P.teacher_params("vit_base_patch16_224", 8) == 85_804_808
    assert P.teacher_params("vit", 8) == 85_804_808          # the teachers' preset name
    with pytest.raises(Exception, match="unknown teacher"):
        P.teacher_params("no_such_net_xyz", 8)


@pytest.fixture(scope="module")
def qwen_counts() -> P.VLMCounts:
    return P.vlm_counts_cached(P.DEFAULT_VLM)


def test_qwen2_vl_7b_counts(qwen_counts: P.VLMCounts) -> None:
    assert qwen_counts.total == 8_291_375_616
    assert qwen_counts.embed_dim == 3584
    assert qwen_counts.vision_tower == 675_759_104
    # The paper's "trainable" VLM figure: what 4-bit loading leaves trainable (see the params docstring).
    assert qwen_counts.quantised_trainable == 1_091_870_720
    assert qwen_counts.lora == 28 * 8 * ((3584 + 3584) * 2 + (3584 + 512) * 2)
    rep = P.param_report(num_classes=8)
    assert (rep.distill_head, rep.gate_params, rep.teacher_params) == (3_679_240, 136, 85_804_808)
    assert rep.emovlm_kd_trainable == 1_095_550_096


def test_table2_and_table3_parameter_columns_reproduce_spec(tmp_path: Path, qwen_counts: P.VLMCounts) -> None:
    rng = np.random.default_rng(0)
    ResultsStore(tmp_path).save(record("teacher", "ViT", "fi", {"arch": "vit_base_patch16_224"}, 0.69, rng))
    ResultsStore(tmp_path).save(record("distill", "distill[1024]", "fi", {"depth": 1, "hidden_dims": [1024], "alpha": 0.5, "tau": 2.0}, 0.77, rng))
    res = load_results(tmp_path)
    t2 = table2(res, dataset="fi")
    got = {r.key: r.cells["params"].value for r in t2.rows}
    paper = {r["key"]: r["params"] for r in paper_results()["table2"]["rows"]}
    assert got == paper == {"vlm": 1_091_870_720, "distill": 3_679_240, "teacher": 85_804_808, "emovlm-kd": 1_095_550_096}
    md = to_markdown(t2, compare=True)
    assert "| (3) ViT | 85,804,808 | 85,804,808 | +0 |" in md
    assert "_not run_" in md            # no tuned VLM record: its accuracy cell says so
    t3 = table3(res)
    for row in t3.rows[:5]:
        depth = len(row.label.strip("[]").split(","))
        assert (row.cells["params:fi"].value, row.cells["params:emotion6"].value) == SPEC_DISTILL[depth]
        assert row.cells["params:fi"].delta == 0


def test_cli_params_prints_the_paper_counts(qwen_counts: P.VLMCounts) -> None:
    out = CliRunner().invoke(app, ["params", "--vlm", "qwen2-vl-7b-instruct", "--classes", "6", "--depth", "2"],
                             env={"COLUMNS": "160"})
    assert out.exit_code == 0, out.output
    for n in ("8,291,375,616", "1,091,870,720", "4,198,918", "85,803,270", "5,046,272"):
        assert n in out.stdout, n
    bad = CliRunner().invoke(app, ["params", "--depth", "7"])
    assert bad.exit_code != 0 and "depth" in bad.stderr


def test_cli_params_resolves_a_bundled_presets_hub_id_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    out = CliRunner().invoke(app, ["params", "--vlm", "Qwen/Qwen2-VL-7B-Instruct"],
                             env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    assert out.exit_code == 0, out.output
    assert "8,291,375,616" in out.stdout and "1,091,870,720" in out.stdout
    assert "[distill logits, VLM one-hot]" in out.stdout          # not eaten as rich markup
    from vea_bench.models.arch import config_path

    assert config_path("llava-hf/llava-v1.6-mistral-7b-hf") == config_path("llava-next-mistral-7b")
    assert config_path("salesforce/instructblip-vicuna-7b") == config_path("instructblip-vicuna-7b")
    bad = CliRunner().invoke(app, ["params", "--vlm", "Qwen/Qwen2-VL-72B-Instruct"])
    assert bad.exit_code != 0 and "Qwen/Qwen2-VL-7B-Instruct" in bad.stderr and "Traceback" not in bad.output


def test_paper_trainable_vs_what_4bit_loading_leaves_trainable(qwen_counts: P.VLMCounts) -> None:
    # Qwen2-VL-7B's quantised Linears with a bias: q/k/v of the 28 text layers (3584 + 512 + 512),
    # qkv/proj/fc1/fc2 of the 32 vision blocks (3 * 1280 + 1280 + 5120 + 1280) and the merger's two.
    biases = 28 * (3584 + 512 + 512) + 32 * (3 * 1280 + 1280 + 5120 + 1280) + (5120 + 3584)
    assert qwen_counts.quantised_linear_biases == biases
    assert qwen_counts.quantised_trainable_actual == 1_091_870_720 + biases
    out = CliRunner().invoke(app, ["params"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and f"{1_091_870_720 + biases:,}" in out.stdout and f"{biases:,}" in out.stdout


def test_4bit_load_leaves_exactly_the_paper_set_plus_linear_biases_trainable(tmp_path: Path) -> None:
    """Checked on a real NF4 load (bitsandbytes' CPU kernels) with the installed transformers."""
    import torch
    from transformers import BitsAndBytesConfig, Qwen2VLForConditionalGeneration

    from vea_bench.models.tiny import make_tiny

    d = make_tiny("qwen2-vl-nf4", tmp_path / "nf4")
    plain = Qwen2VLForConditionalGeneration.from_pretrained(d)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.bfloat16)
    quant = Qwen2VLForConditionalGeneration.from_pretrained(d, quantization_config=q, dtype=torch.bfloat16,
                                                            device_map={"": "cpu"})
    trainable = sum(p.numel() for p in quant.parameters() if p.requires_grad)
    paper, biases = P.quantised_trainable_params(plain), P.quantised_linear_bias_params(plain)
    assert biases > 0
    assert trainable == paper + biases
