"""Train many head configurations at once: one batched model with stacked weights.

Why: every sweep of the paper (11 alphas x 3 seeds, 5 depths, 5 gates) trains small heads on the
same cached arrays. Stacking M members' weights (``[M, in, out]``) and running them with batched
matrix products makes the sweep cost about what its FLOPs cost, instead of M Python loops.

Determinism per member: each member's initial weights, data order and dropout masks come from its
own generators, seeded from its own seed (``stream_seed(seed, "init" | "order" | "dropout")``),
never from a shared or global generator. The loss of the batch is the sum of the members' losses,
so each member's gradient is exactly its own; the optimiser (`BatchedAdam`) is elementwise. Member
m of a batched run therefore follows the same trajectory as a run of that member alone (M = 1).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vea_bench.errors import ConfigError
from vea_bench.heads.losses import ce_loss, kd_loss
from vea_bench.progress import Progress, ensure

_STREAMS = {"init": 0, "order": 1, "dropout": 2, "gate-init": 3, "gate-order": 4, "folds": 5}
KEEP_CHOICES = ("last", "best")
EVAL_CHUNK = 1024


def stream_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream of one member (numpy's SeedSequence)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _STREAMS[stream]]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def build_member_modules(factory: Callable[[], nn.Module], seeds: Sequence[int], stream: str = "init") -> list[nn.Module]:
    """One module per seed, each initialised from its own seed (PyTorch's default init), CPU."""
    mods = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stream_seed(s, stream))
            mods.append(factory())
    return mods


def resolve_device(device: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA is a one-line error."""
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown --device '{device}' (cpu, cuda, cuda:N or auto)") from None


# ----------------------------------------------------------------------------- batched models

class StackedMLP:
    """M distill heads (same hidden dims) as ``[M, in, out]`` weights; per-member dropout masks."""

    def __init__(self, heads: Sequence[nn.Module], dropout_seeds: Sequence[int], device: torch.device) -> None:
        linears = [[m for m in h.modules() if isinstance(m, nn.Linear)] for h in heads]
        self.names = [n for n, m in heads[0].named_modules() if isinstance(m, nn.Linear)]
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        for i in range(len(self.names)):
            w = torch.stack([ls[i].weight.detach().t() for ls in linears]).contiguous()
            b = torch.stack([ls[i].bias.detach() for ls in linears]).unsqueeze(1).contiguous()
            self.weights.append(w.to(device).requires_grad_())
            self.biases.append(b.to(device).requires_grad_())
        drops = [m.p for m in heads[0].modules() if isinstance(m, nn.Dropout)]
        self.p = float(drops[0]) if drops else 0.0
        self.gens = [torch.Generator(device=device).manual_seed(stream_seed(s, "dropout")) for s in dropout_seeds]
        self.device = device

    @property
    def params(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def forward(self, inputs: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        h = inputs[0]
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = F.gelu(h)
                if train and self.p > 0:
                    keep = 1.0 - self.p
                    mask = torch.stack([
                        torch.empty(h.shape[1:], device=h.device).bernoulli_(keep, generator=g) for g in self.gens
                    ])
                    h = h * mask / keep
        return h

    def state_dict(self, m: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, w, b in zip(self.names, self.weights, self.biases):
            out[f"{name}.weight"] = w[m].detach().t().contiguous().cpu()
            out[f"{name}.bias"] = b[m, 0].detach().contiguous().cpu()
        return out


class VmappedModules:
    """M copies of any deterministic module (the gates) run with ``torch.func.vmap`` over stacked params."""

    def __init__(self, modules: Sequence[nn.Module], device: torch.device) -> None:
        from torch.func import stack_module_state

        params, _ = stack_module_state(list(modules))
        self.names = list(params)
        self._params = [params[n].detach().to(device).contiguous().requires_grad_() for n in self.names]
        self.base = copy.deepcopy(modules[0]).to("meta")

    @property
    def params(self) -> list[torch.Tensor]:
        return self._params

    def forward(self, inputs: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        from torch.func import functional_call, vmap

        names, base = self.names, self.base

        def one(ps: tuple[torch.Tensor, ...], *xs: torch.Tensor) -> torch.Tensor:
            return functional_call(base, dict(zip(names, ps)), xs)

        return vmap(one)(tuple(self._params), *inputs)

    def state_dict(self, m: int) -> dict[str, torch.Tensor]:
        return {n: p[m].detach().contiguous().cpu() for n, p in zip(self.names, self._params)}


class BatchedAdam:
    """``torch.optim.Adam`` (L2 weight decay, bias correction) with one lr and weight decay per member.

    Elementwise, so member m's update never depends on another member; same arithmetic as
    torch's single-tensor Adam.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: Sequence[float], weight_decay: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        dev = self.params[0].device
        self.lr = torch.tensor(list(lr), dtype=torch.float32, device=dev)
        self.wd = torch.tensor(list(weight_decay), dtype=torch.float32, device=dev)
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        bc1 = 1 - self.b1 ** self.t
        bc2 = 1 - self.b2 ** self.t
        for p, m, v in zip(self.params, self.m, self.v):
            g = p.grad
            if g is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            if bool((self.wd != 0).any()):
                g = g.addcmul(p, self.wd.view(shape))
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = v.sqrt().div_(math.sqrt(bc2)).add_(self.eps)
            upd = m / denom
            upd.mul_(self.lr.view(shape) / bc1)
            p.sub_(upd)
            p.grad = None


# ----------------------------------------------------------------------------- data and loop

@dataclass
class SplitInputs:
    """Inputs of one split: feature tables ([N, F] shared or [M, N, F] per member), labels, teacher."""

    tables: list[torch.Tensor]
    per_member: list[bool]
    y: torch.Tensor
    teacher: torch.Tensor | None = None

    def gather(self, rows: torch.Tensor, m: int) -> list[torch.Tensor]:
        """Rows ``[M, B]`` (one order per member) or ``[B]`` (the same rows for all) -> ``[M, B, F]``."""
        out = []
        ar = torch.arange(m, device=rows.device).unsqueeze(1)
        for t, per in zip(self.tables, self.per_member):
            if rows.dim() == 1:
                out.append(t[:, rows] if per else t[rows].unsqueeze(0).expand(m, -1, -1))
            else:
                out.append(t[ar, rows] if per else t[rows])
        return out

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass
class MemberHyper:
    """A member's training hyper-parameters: the only things the batched loop needs per member."""

    seed: int
    lr: float
    weight_decay: float
    alpha: float = 0.5
    tau: float = 2.0


@dataclass
class TrainOutput:
    """States (per member, standard module state dicts), eval logits per split ``[M, N, C]``, history."""

    states: list[dict[str, torch.Tensor]]
    logits: dict[str, np.ndarray]
    best_epoch: list[int]
    train_loss: list[list[float]] = field(default_factory=list)   # per epoch, per member
    val_accuracy: list[list[float]] = field(default_factory=list)


@torch.no_grad()
def predict(model: Any, split: SplitInputs, m: int, chunk: int = EVAL_CHUNK) -> torch.Tensor:
    """Eval-mode logits ``[M, N, C]`` of all members on a whole split."""
    n = len(split)
    outs = []
    dev = split.y.device
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk), device=dev)
        outs.append(model.forward(split.gather(rows, m), train=False))
    return torch.cat(outs, dim=1)


def train_members(
    model: StackedMLP | VmappedModules,
    train: SplitInputs,
    members: Sequence[MemberHyper],
    *,
    loss: str,
    epochs: int,
    batch_size: int,
    train_rows: torch.Tensor | None = None,
    evals: dict[str, SplitInputs] | None = None,
    keep: str = "last",
    select_split: str = "val",
    order_stream: str = "order",
    progress: Progress | None = None,
    desc: str = "training",
    max_steps: int | None = None,
) -> TrainOutput:
    """Train all members of ``model`` together; evaluate on ``evals`` (eval mode) at the end.

    ``train_rows`` (``[M, n]``) gives each member its own training rows (cross-fitting folds);
    by default all members train on every row of ``train``. ``max_steps`` stops early (benchmarks
    time a fraction of an epoch with it). ``keep="best"`` keeps each member's
    epoch with the best accuracy on ``evals[select_split]``; ``"last"`` (the reference) the final one.
    """
    if keep not in KEEP_CHOICES:
        raise ConfigError(f"unknown --keep '{keep}' (choices: {', '.join(KEEP_CHOICES)})")
    if epochs < 1 or batch_size < 1:
        raise ConfigError("epochs and batch size must be at least 1")
    progress = ensure(progress)
    evals = dict(evals or {})
    if keep == "best" and select_split not in evals:
        raise ConfigError(f"--keep best needs a '{select_split}' split to select on")
    m = len(members)
    dev = train.y.device
    if train_rows is None:
        train_rows = torch.arange(len(train), device=dev).unsqueeze(0).expand(m, -1)
    train_rows = train_rows.to(dev)
    n = int(train_rows.shape[1])
    if n == 0:
        raise ConfigError("no training rows")
    order_gens = [torch.Generator().manual_seed(stream_seed(h.seed, order_stream)) for h in members]
    opt = BatchedAdam(model.params, [h.lr for h in members], [h.weight_decay for h in members])
    alpha = torch.tensor([h.alpha for h in members], dtype=torch.float32, device=dev)
    tau = torch.tensor([h.tau for h in members], dtype=torch.float32, device=dev)
    steps = math.ceil(n / batch_size)
    report_every = max(1, steps // 50)
    progress.start(desc, total=epochs * steps)
    best_acc = [-1.0] * m
    best_epoch = [epochs] * m
    best_params: list[torch.Tensor] | None = None
    history: list[list[float]] = []
    val_hist: list[list[float]] = []
    ar = torch.arange(m, device=dev).unsqueeze(1)
    done = 0
    for epoch in range(1, epochs + 1):
        if max_steps is not None and done >= max_steps:
            break
        perm = torch.stack([torch.randperm(n, generator=g) for g in order_gens]).to(dev)
        order = train_rows[ar, perm]
        total = torch.zeros(m, device=dev)
        pending = 0
        for i in range(steps):
            if max_steps is not None and done >= max_steps:
                break
            done += 1
            rows = order[:, i * batch_size:(i + 1) * batch_size]
            out = model.forward(train.gather(rows, m), train=True)
            y = train.y[rows]
            if loss == "kd":
                assert train.teacher is not None
                per = kd_loss(out, train.teacher[rows], y, alpha, tau)
            else:
                per = ce_loss(out, y)
            per.sum().backward()
            opt.step()
            total += per.detach() * rows.shape[1]
            pending += 1
            if pending == report_every or i == steps - 1:
                progress.advance(pending, epoch=epoch)
                pending = 0
        history.append((total / n).tolist())
        if keep == "best" or epoch == epochs:
            if select_split in evals:
                sel = evals[select_split]
                acc = (predict(model, sel, m).argmax(-1) == sel.y.unsqueeze(0)).float().mean(1).tolist()
                val_hist.append(acc)
                if keep == "best":
                    improved = [a > b for a, b in zip(acc, best_acc)]
                    if best_params is None:
                        best_params = [p.detach().clone() for p in model.params]
                    for j, imp in enumerate(improved):
                        if imp:
                            best_acc[j] = acc[j]
                            best_epoch[j] = epoch
                            for bp, p in zip(best_params, model.params):
                                bp[j] = p.detach()[j]
        progress.advance(0, epoch=epoch, loss=float(np.mean(history[-1])))
    progress.finish()
    if keep == "best" and best_params is not None:
        with torch.no_grad():
            for bp, p in zip(best_params, model.params):
                p.copy_(bp)
    logits = {name: predict(model, sp, m).float().cpu().numpy() for name, sp in evals.items()}
    states = [model.state_dict(j) for j in range(m)]
    return TrainOutput(states=states, logits=logits, best_epoch=best_epoch, train_loss=history, val_accuracy=val_hist)
