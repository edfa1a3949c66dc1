"""Plugins: a researcher's own gate or head, in their own installed package, with no edit to vea-bench.

The package is real (a ``*.dist-info`` with an ``entry_points.txt``, found by importlib.metadata on
``sys.path``, exactly as ``pip install`` leaves one), and the check runs in a fresh interpreter so the
registries discover it the way a user's session would.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN = '''
import torch
from torch import nn

from vea_bench.heads.distill import HEADS
from vea_bench.heads.gates import GATES, Gate


@GATES.register("product")
class ProductGate(Gate):
    """Sources multiplied after a learnt per-class scale."""

    display_name = "Product"

    def __init__(self, num_classes: int) -> None:
        super().__init__(num_classes)
        self.a = nn.Parameter(torch.ones(num_classes))
        self.b = nn.Parameter(torch.ones(num_classes))

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.a * v1 + self.b * v2


@HEADS.register("linear-probe")
class LinearProbe(nn.Sequential):
    """One Linear layer: no hidden widths used."""

    def __init__(self, in_dim, num_classes, hidden_dims=None, *, depth=None, dropout=0.1):
        super().__init__(nn.Linear(in_dim, num_classes))
'''


def _install(root: Path, module: str, source: str, entry_points: str) -> None:
    (root / f"{module}.py").write_text(source)
    info = root / f"{module.replace('_', '-')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


def _run(root: Path, code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_an_installed_plugin_gate_and_head_register_and_train(tmp_path: Path) -> None:
    _install(tmp_path, "my_vea_plugin", PLUGIN, """
        [vea_bench.gates]
        product = my_vea_plugin
        [vea_bench.heads]
        linear-probe = my_vea_plugin
    """)
    cache = tmp_path / "c.h5"
    r = _run(tmp_path, f"""
        from vea_bench.cache.store import FeatureCache
        from vea_bench.heads.data import load_head_data
        from vea_bench.heads.gates import GATES
        from vea_bench.heads.distill import HEADS
        from vea_bench.heads.pipeline import DistillConfig, GateConfig, train_distill, train_gates
        from vea_bench.heads.synthetic_cache import make_complementary_cache

        assert "product" in GATES.names() and "linear-probe" in HEADS.names(), (GATES, HEADS)
        p = make_complementary_cache({str(cache)!r}, n_train=400, n_val=100, n_test=300, dim=16, seed=0)
        with FeatureCache.open(p) as c:
            data = load_head_data(c, need=("visual", "teacher", "vlm"))
        d = train_distill(data, [DistillConfig(head="linear-probe", lr=1e-2, epochs=20, batch_size=64,
                                               lr_scaling="none", patience=None, keep="last")],
                          eval_splits=["train", "val", "test"])[0]
        g = train_gates(data, [GateConfig(gate="product", lr=1e-2, epochs=20, batch_size=64, lr_scaling="none",
                                          patience=None, keep="last")], [d.logits])[0]
        print(d.metrics["test"]["accuracy"], g.metrics["test"]["accuracy"], g.params)
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    head_acc, gate_acc, params = r.stdout.split()
    assert float(head_acc) > 2 / 8 and float(gate_acc) > 2 / 8       # chance is 1/8 on this learnable cache
    assert int(params) == 16                                          # a and b, 8 classes each


def test_a_broken_plugin_is_one_line_naming_it(tmp_path: Path) -> None:
    _install(tmp_path, "broken_vea_plugin", "import not_a_module_anywhere\n", """
        [vea_bench.gates]
        broken = broken_vea_plugin
    """)
    r = _run(tmp_path, """
        import sys
        from vea_bench.errors import VeaError
        from vea_bench.heads.gates import GATES
        try:
            GATES.names()
        except VeaError as exc:
            print(exc)
            sys.exit(3)
    """)
    assert r.returncode == 3, (r.stdout, r.stderr[-2000:])
    msg = r.stdout.strip()
    assert "\n" not in msg and "gate plugin 'broken'" in msg and "broken-vea-plugin" in msg
    assert "not_a_module_anywhere" in msg
