"""Teacher checkpoints: the on-disk format round-trips exactly, and the paper's ViT has its parameter count."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from vea_bench.errors import ModelError
from vea_bench.models.teacher import (
    TEACHER_FORMAT,
    build_teacher,
    load_teacher,
    make_tiny_teacher,
    save_teacher,
    teacher_transform,
)

torch.set_num_threads(1)


def test_vit_b16_8_classes_has_paper_parameter_count() -> None:
    with torch.device("meta"):
        model = build_teacher("vit_base_patch16_224", 8)
    assert sum(p.numel() for p in model.parameters()) == 85_804_808
    with torch.device("meta"):
        preset = build_teacher("vit", 8)  # the preset name resolves to the same architecture
    assert sum(p.numel() for p in preset.parameters()) == 85_804_808


def test_tiny_teacher_reload_gives_identical_logits(tmp_path) -> None:
    out = make_tiny_teacher(tmp_path / "t", seed=3, num_classes=6)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["format"] == TEACHER_FORMAT
    assert cfg["label_names"] == ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
    assert cfg["label_space"] == "ekman6"
    assert cfg["data_config"]["input_size"] == [3, 32, 32]
    assert set(cfg["data_config"]) >= {"mean", "std", "interpolation", "crop_pct", "input_size"}

    model, meta = load_teacher(out)
    img = Image.new("RGB", (70, 45), (200, 30, 90))
    x = teacher_transform(meta, train=False)(img).unsqueeze(0)
    assert x.shape == (1, 3, 32, 32)
    first = model(x)
    assert first.shape == (1, 6)

    # Saved again (e.g. by the trainer) and reloaded through the weights file: bit-identical logits.
    save_teacher(model, tmp_path / "again", meta, name="last")
    again, meta2 = load_teacher(tmp_path / "again" / "last.safetensors")
    assert torch.equal(again(x), first)
    assert meta2["label_names"] == meta["label_names"]
    # Same seed -> same weights -> same logits; another seed differs.
    same, _ = load_teacher(make_tiny_teacher(tmp_path / "t2", seed=3, num_classes=6))
    other, _ = load_teacher(make_tiny_teacher(tmp_path / "t3", seed=4, num_classes=6))
    assert torch.equal(same(x), first)
    assert not torch.allclose(other(x), first)


def test_cnn_teacher_roundtrip_and_head_reset_from_local_weights(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_teacher("resnet18", 3, img_size=48).eval()
    save_teacher(model, tmp_path / "r", {"label_names": ["a", "b", "c"], "dataset": "toy"})
    loaded, meta = load_teacher(tmp_path / "r")
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(loaded(x), model(x))
    assert meta["img_size"] == 48 and meta["data_config"]["input_size"] == [3, 48, 48]

    # Local "pretrained" weights with another class count: backbone kept, head re-initialised.
    five = build_teacher("resnet18", 5, weights=tmp_path / "r" / "best.safetensors").eval()
    assert five.fc.out_features == 5
    assert torch.equal(five.conv1.weight, model.conv1.weight)
    with pytest.raises(ModelError, match="do not fit"):
        build_teacher("resnet34", 5, weights=tmp_path / "r" / "best.safetensors")


def test_train_and_test_transforms_follow_spec(tmp_path) -> None:
    from torchvision import transforms as T

    _, meta = load_teacher(make_tiny_teacher(tmp_path / "t"))
    train = teacher_transform(meta, train=True)
    test = teacher_transform(meta, train=False)
    train_kinds = [type(t) for t in train.transforms]
    assert T.RandomResizedCrop in train_kinds and T.RandomHorizontalFlip in train_kinds
    assert T.ColorJitter not in train_kinds
    test_kinds = [type(t) for t in test.transforms]
    assert T.Resize in test_kinds and T.CenterCrop in test_kinds
    img = Image.new("L", (90, 60))  # greyscale input is converted to RGB
    assert train(img).shape == test(img).shape == (3, 32, 32)
    # Test-time preprocessing is deterministic; the training one is not.
    rgb = Image.linear_gradient("L").resize((64, 48)).convert("RGB")
    assert torch.equal(test(rgb), test(rgb))
    torch.manual_seed(0)
    assert not all(torch.equal(train(rgb), train(rgb)) for _ in range(3))


def test_transformers_image_classifier_folder_loads_as_teacher(tmp_path) -> None:
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, num_labels=2, id2label={0: "positive", 1: "negative"},
                    label2id={"positive": 0, "negative": 1})
    torch.manual_seed(0)
    hf = ViTForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "hf")
    model, meta = load_teacher(tmp_path / "hf")
    assert meta["label_names"] == ["positive", "negative"]
    assert meta["data_config"]["input_size"] == [3, 32, 32]
    x = teacher_transform(meta, train=False)(Image.new("RGB", (40, 40), (1, 2, 3))).unsqueeze(0)
    assert torch.allclose(model(x), hf(pixel_values=x).logits)


def test_bad_checkpoints_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        load_teacher(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_teacher(tmp_path / "empty")
    out = make_tiny_teacher(tmp_path / "t")
    with pytest.raises(ModelError, match="no weights last.safetensors"):
        load_teacher(out, name="last")
    with pytest.raises(ModelError, match="did you mean"):
        build_teacher("vit_base_patch16_22", 8)
