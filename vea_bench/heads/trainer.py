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
    """M distill heads (same hidden dims) as ``[M, in, out]`` weights; per-member dropout masks.

    Training runs a hand-written backward (the head is Linear-GELU-Dropout blocks and a Linear):
    the weight gradients go by ``bmm(..., out=)`` into buffers allocated once, no gradient is formed
    for the input features, and the dropout masks are drawn into a reused buffer. Why: on CPU the
    sweep's time is otherwise dominated not by its GEMMs but by allocating, zeroing and copying
    ``M x 3584 x 1024`` tensors every step. ``forward(train=True)`` returns the logits as a leaf
    that requires grad; calling ``backward`` on a loss of them fills each weight's ``.grad``.
    """

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
        self._grads: list[torch.Tensor] | None = None
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def _mask(self, layer: int, shape: torch.Size) -> torch.Tensor:
        """This step's keep-masks ``[M, B, H]`` (0/1), each member's from its own generator."""
        key = (layer, *shape)
        buf = self._masks.get(key)
        if buf is None:
            self._masks = {k: v for k, v in self._masks.items() if k[0] != layer}   # a new batch shape
            buf = self._masks[key] = torch.empty(shape, device=self.device)
        keep = 1.0 - self.p
        for j, g in enumerate(self.gens):
            buf[j].bernoulli_(keep, generator=g)
        return buf

    @torch.no_grad()
    def forward(self, inputs: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        h = inputs[0]
        last = len(self.weights) - 1
        drop = train and self.p > 0
        keep = 1.0 - self.p
        saved: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []  # (input, pre-act, mask)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b, h, w)
            if i == last:
                saved.append((h, None, None))
                h = z
                break
            a = F.gelu(z)
            mask = None
            if drop:
                mask = self._mask(i, a.shape)
                a.mul_(mask).div_(keep)
            saved.append((h, z, mask))
            h = a
        if not train:
            return h
        out = h.detach().requires_grad_()
        out.register_hook(lambda g: self._backward(g, saved))
        return out

    @torch.no_grad()
    def _backward(self, grad_out: torch.Tensor, saved: list) -> None:
        """Weight and bias gradients from d(loss)/d(logits), written into the persistent buffers."""
        if self._grads is None:
            self._grads = [torch.empty_like(p) for p in self.params]
        keep = 1.0 - self.p
        g = grad_out
        for i in range(len(self.weights) - 1, -1, -1):
            x, _, _ = saved[i]
            gw, gb = self._grads[2 * i], self._grads[2 * i + 1]
            torch.bmm(x.transpose(1, 2), g, out=gw)
            torch.sum(g, dim=1, keepdim=True, out=gb)
            self.weights[i].grad = gw
            self.biases[i].grad = gb
            if i > 0:
                _, z, mask = saved[i - 1]
                ga = torch.bmm(g, self.weights[i].detach().transpose(1, 2))
                if mask is not None:
                    ga.div_(keep).mul_(mask)
                g = torch.ops.aten.gelu_backward(ga, z)
        saved.clear()

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

    Elementwise, so member m's update never depends on another member. Each member's slice of
    each stacked parameter is updated as its own tensor by torch's fused Adam kernel (one pass over
    param, grad and moments, no temporaries), members sharing (lr, weight decay) in one call: a
    member's arithmetic is then the same whether it trains alone or in a batch.
    """

    def __init__(self, params: Sequence[torch.Tensor], lr: Sequence[float], weight_decay: Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr = [float(v) for v in lr]
        self.wd = [float(v) for v in weight_decay]
        self.b1, self.b2 = betas
        self.eps = eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self._step = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        groups: dict[tuple[float, float], list[int]] = {}
        for j, key in enumerate(zip(self.lr, self.wd)):
            groups.setdefault(key, []).append(j)
        self._groups = list(groups.items())
        self._fused = hasattr(torch, "_fused_adam_")

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        self._step.fill_(self.t)
        live = [(p, m, v) for p, m, v in zip(self.params, self.m, self.v) if p.grad is not None]
        for (lr, wd), members in self._groups:
            ps, gs, ms, vs = [], [], [], []
            for p, m, v in live:
                for j in members:
                    ps.append(p.detach()[j])
                    gs.append(p.grad[j])
                    ms.append(m[j])
                    vs.append(v[j])
            if not ps:
                continue
            if self._fused:
                torch._fused_adam_(ps, gs, ms, vs, [], [self._step] * len(ps), lr=lr, beta1=self.b1,
                                   beta2=self.b2, weight_decay=wd, eps=self.eps, amsgrad=False, maximize=False)
            else:
                self._plain_step(ps, gs, ms, vs, lr, wd)
        for p, _, _ in live:
            p.grad = None

    def _plain_step(self, ps: list[torch.Tensor], gs: list[torch.Tensor], ms: list[torch.Tensor],
                    vs: list[torch.Tensor], lr: float, wd: float) -> None:
        """torch's single-tensor Adam, for builds without the fused kernel."""
        bc1 = 1 - self.b1 ** self.t
        bc2_sqrt = math.sqrt(1 - self.b2 ** self.t)
        for p, g, m, v in zip(ps, gs, ms, vs):
            if wd != 0:
                g = g.add(p, alpha=wd)
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = v.sqrt().div_(bc2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-lr / bc1)


# ----------------------------------------------------------------------------- data and loop

@dataclass
class SplitInputs:
    """Inputs of one split: feature tables ([N, F] shared or [M, N, F] per member), labels, teacher."""

    tables: list[torch.Tensor]
    per_member: list[bool]
    y: torch.Tensor
    teacher: torch.Tensor | None = None

    def gather(self, rows: torch.Tensor, m: int, buffers: dict[int, torch.Tensor] | None = None
               ) -> list[torch.Tensor]:
        """Rows ``[M, B]`` (one order per member) or ``[B]`` (the same rows for all) -> ``[M, B, F]``.

        ``buffers`` (a dict the caller keeps between steps) receives the gathered shared tables so
        each training step reuses the same memory instead of allocating ``M x B x F`` afresh.
        """
        out = []
        ar = torch.arange(m, device=rows.device).unsqueeze(1)
        for k, (t, per) in enumerate(zip(self.tables, self.per_member)):
            if rows.dim() == 1:
                out.append(t[:, rows] if per else t[rows].unsqueeze(0).expand(m, -1, -1))
            elif per:
                out.append(t[ar, rows])
            elif buffers is None:
                out.append(t[rows])
            else:
                shape = (*rows.shape, *t.shape[1:])
                buf = buffers.get(k)
                if buf is None or buf.shape != shape:
                    buf = buffers[k] = torch.empty(shape, dtype=t.dtype, device=t.device)
                torch.index_select(t, 0, rows.reshape(-1), out=buf.view(-1, *t.shape[1:]))
                out.append(buf)
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
    gather_bufs: dict[int, torch.Tensor] = {}
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
            out = model.forward(train.gather(rows, m, gather_bufs), train=True)
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
