"""Heads are an extension point: every registered head trains batched, sweeps, records and reloads.

Tests here are parametrised over ``HEADS``: a new head registered in its own file is trained,
swept and recorded by them with no new test. The fast `StackedMLP` path is checked against the
generic vmap path, and refuses every structure it does not compute exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests._heads_helpers import complementary_data
from vea_bench.errors import ConfigError, VeaError
from vea_bench.heads.distill import HEADS, DistillHead, MLPLayout, build_head, count_params
from vea_bench.heads.losses import kd_objective
from vea_bench.heads.pipeline import DistillConfig, GateConfig, distill_record, load_distill_run, train_distill
from vea_bench.heads.sweep import plan_sweep, run_plan
from vea_bench.heads.trainer import (
    MemberHyper,
    SplitInputs,
    StackedMLP,
    VmappedModules,
    batched_heads,
    build_member_modules,
    train_members,
    verified_layout,
)
from vea_bench.results import ResultsStore

CHANCE = 1 / 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Learnable: the embedding carries the class on 60 % of rows (a head can reach about that)."""
    return complementary_data(tmp_path_factory.mktemp("heads") / "c.h5", n_train=600, n_val=200, n_test=400,
                              dim=24, seed=2)


def _cfg(head: str, **kw) -> DistillConfig:
    base = dict(head=head, lr=1e-3, epochs=3, batch_size=64, lr_scaling="none", patience=None, keep="last")
    return DistillConfig(**{**base, **kw})


# ----------------------------------------------------------------------------- every registered head

@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_trains_batched_learns_and_equals_alone(data, head):
    cfgs = [_cfg(head, seed=s) for s in (0, 1)]
    together = train_distill(data, cfgs)
    for r in together:
        assert r.metrics["test"]["accuracy"] >= 3 * CHANCE, (head, r.metrics["test"]["accuracy"])
        assert r.convergence["train_loss"][-1] < r.convergence["train_loss"][0]
    alone = train_distill(data, cfgs[1:])[0]          # per-member randomness: the batch does not matter
    for k, v in together[1].state.items():
        assert torch.allclose(v, alone.state[k], atol=1e-6), k
    assert np.allclose(together[1].logits["test"], alone.logits["test"], atol=1e-5)
    assert any(not torch.equal(v, together[0].state[k]) for k, v in together[1].state.items())


@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_records_its_name_and_params_and_reloads(data, head, tmp_path):
    cfg = _cfg(head, epochs=1)
    res = train_distill(data, [cfg])[0]
    rec = distill_record(data, res, results_dir=tmp_path)
    built = build_head(head, data.input_dim, data.num_classes, cfg.hidden_dims, dropout=cfg.dropout)
    assert rec.config["head"] == head and rec.params == res.params == count_params(built)
    back = load_distill_run(rec.run_id, tmp_path, data)     # the saved weights rebuild the same head
    assert back.config.head == head
    for s in ("val", "test"):
        assert np.allclose(back.logits[s], res.logits[s], atol=1e-5)


@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_sweeps_depth_and_alpha(data, head, tmp_path):
    base = _cfg(head, epochs=1)
    depth = run_plan(plan_sweep("depth", base, GateConfig(), seeds=[0], depths=[1, 2]), data, results_dir=tmp_path)
    alpha = run_plan(plan_sweep("alpha", base, GateConfig(), seeds=[0], alphas=[0.0, 1.0]), data, results_dir=tmp_path)
    assert sorted(r.config["depth"] for r in depth) == [1, 2] and sorted(r.config["alpha"] for r in alpha) == [0, 1]
    records, bad = ResultsStore(tmp_path).scan()
    assert not bad and len(records) == 4 and {r.config["head"] for _, r in records} == {head}
    assert len({r.params for r in depth}) == 2            # deeper heads have their own parameter count


# ----------------------------------------------------------------------------- head options

def test_head_kwargs_reach_the_head_and_unknown_ones_are_one_line_errors(data):
    relu = build_head("resmlp", 8, 4, [16], kwargs={"activation": "relu"})
    kinds = {type(m) for m in relu.modules()}
    assert nn.ReLU in kinds and nn.GELU not in kinds
    r = train_distill(data, [_cfg("resmlp", epochs=1, head_kwargs={"activation": "relu"})])[0]
    assert r.config.head_kwargs == {"activation": "relu"}
    with pytest.raises(ConfigError, match="no option 'activaton'"):
        train_distill(data, [_cfg("resmlp", head_kwargs={"activaton": "relu"})])
    with pytest.raises(ConfigError, match="no option 'width'"):
        train_distill(data, [_cfg("distill", head_kwargs={"width": 3})])
    with pytest.raises(ConfigError, match="--depth"):
        train_distill(data, [_cfg("resmlp", head_kwargs={"depth": 2})])
    with pytest.raises(VeaError, match="did you mean 'resmlp'"):
        train_distill(data, [_cfg("resmpl")])
    with pytest.raises(ConfigError, match="resmlp activation 'tanh'"):
        build_head("resmlp", 8, 4, [16], kwargs={"activation": "tanh"})


# ----------------------------------------------------------------------------- fast path == vmap path

def _train(model, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, seeds, epochs: int = 3):
    split = SplitInputs([x], [False], y, t)
    hyper = [MemberHyper(s, 1e-3, 1e-4, 0.5, 2.0) for s in seeds]
    return train_members(model, split, hyper, loss=kd_objective, epochs=epochs, batch_size=16, evals={"val": split})


def test_stacked_mlp_and_vmap_give_the_same_training_for_the_default_head():
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(80, 12, generator=g), torch.randn(80, 5, generator=g)
    y = torch.randint(0, 5, (80,), generator=g)
    seeds = [0, 3, 7]

    def members():
        return build_member_modules(lambda: DistillHead(12, 5, [32, 16], dropout=0.3), seeds)

    fast = _train(StackedMLP(members(), seeds, torch.device("cpu")), x, y, t, seeds)
    slow = _train(VmappedModules(members(), torch.device("cpu"), dropout_seeds=seeds), x, y, t, seeds)
    assert np.allclose(fast.logits["val"], slow.logits["val"], atol=1e-5, rtol=1e-4)
    for a, b in zip(fast.states, slow.states):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4), k
    # dropout really ran on both paths: without it the trajectory differs
    plain = _train(StackedMLP(build_member_modules(lambda: DistillHead(12, 5, [32, 16], dropout=0.0), seeds),
                              seeds, torch.device("cpu")), x, y, t, seeds)
    assert not np.allclose(plain.logits["val"], fast.logits["val"], atol=1e-3)


@pytest.mark.parametrize("head", HEADS.names())
def test_each_head_takes_the_path_its_declaration_allows(head):
    members = build_member_modules(lambda: build_head(head, 12, 5, [16]), [0, 1])
    model = batched_heads(members, [0, 1], torch.device("cpu"))
    declared = getattr(members[0], "stacked_mlp", None) is not None
    assert isinstance(model, StackedMLP if declared else VmappedModules)
    if declared:
        verified_layout(members[0])       # a declaration is honoured only when it is true


def test_resmlp_is_routed_to_vmap():
    members = build_member_modules(lambda: build_head("resmlp", 12, 5, [16]), [0, 1])
    assert isinstance(batched_heads(members, [0, 1], torch.device("cpu")), VmappedModules)
    with pytest.raises(ConfigError, match="stacked MLP path"):
        batched_heads(members, [0, 1], torch.device("cpu"), precision="bf16")


class _ResidualDistill(DistillHead):
    """Inherits the MLP declaration but adds a residual: StackedMLP would silently drop it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x[..., :self.num_classes]


class _ReluMLP(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 5))

    def stacked_mlp(self) -> MLPLayout:
        return MLPLayout((self[0], self[3]), "gelu", 0.1)


def _tanh_gelu() -> nn.Module:
    head = DistillHead(12, 5, [16])
    head[1] = nn.GELU(approximate="tanh")
    return head


def _with_layernorm() -> nn.Module:
    head = DistillHead(12, 5, [16])
    head[2] = nn.LayerNorm(16)
    return head


@pytest.mark.parametrize("make,why", [
    (lambda: _ResidualDistill(12, 5, [16]), "forward differs"),
    (_ReluMLP, "ReLU"),
    (_tanh_gelu, "approximate='tanh'"),
    (_with_layernorm, "LayerNorm"),
    (lambda: DistillHead(12, 5, [16], dropout=0.2), None),
])
def test_stacked_mlp_refuses_what_it_does_not_compute(make, why):
    head = make()
    if why is None:                   # the real thing passes
        StackedMLP([head], [0], torch.device("cpu"))
        return
    with pytest.raises(ConfigError, match="StackedMLP runs only") as e:
        StackedMLP([head], [0], torch.device("cpu"))
    assert why in str(e.value)


class _NoisyHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x + 0.1 * torch.randn_like(x))


def test_vmap_refuses_randomness_it_cannot_give_each_member():
    model = VmappedModules([_NoisyHead(), _NoisyHead()], torch.device("cpu"), dropout_seeds=[0, 1])
    with pytest.raises(ConfigError, match="outside nn.Dropout"):
        model.forward([torch.randn(2, 4, 12)], train=True)


def test_resmlp_learns_above_chance_on_the_synthetic_cache(data):
    """The second head, end to end through the default schedule (early stopping on val)."""
    r = train_distill(data, [DistillConfig(head="resmlp", seed=0, epochs=15, min_steps=0)])[0]
    assert r.metrics["test"]["accuracy"] >= 3 * CHANCE, r.metrics["test"]["accuracy"]
    assert r.convergence["select_split"] == "val"


@pytest.mark.parametrize("head", HEADS.names())
def test_dropping_members_keeps_the_others_masks(head):
    """Early stopping compacts the batch: the members left draw the same dropout masks as before."""
    seeds = [0, 1, 2]

    def model():
        return batched_heads(build_member_modules(lambda: build_head(head, 12, 5, [16], dropout=0.5), seeds), seeds,
                             torch.device("cpu"))

    full, part = model(), model().subset([0, 2])
    x = torch.randn(3, 10, 12, generator=torch.Generator().manual_seed(0))
    for _ in range(2):                                       # two steps: the generators move on alike
        a = full.forward([x], train=True).detach()
        b = part.forward([x[[0, 2]]], train=True).detach()
        assert torch.allclose(a[[0, 2]], b, atol=1e-6)
    assert not torch.allclose(full.forward([x], train=True), full.forward([x], train=False))   # dropout is on
