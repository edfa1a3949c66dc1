"""Train many head configurations at once: one batched model with stacked weights.

Why: every sweep of the paper (11 alphas x 3 seeds, 5 depths, 5 gates) trains small heads on the
same cached arrays. Stacking M members' weights (``[M, in, out]``) and running them with batched
matrix products makes the sweep cost about what its FLOPs cost, instead of M Python loops.

Two batched models, one loop: `StackedMLP` (a hand-written forward/backward, used only for heads
that declare themselves a plain Linear-GELU-Dropout MLP, and checked to be exactly that) and
`VmappedModules` (any module: ``torch.func.vmap`` of ``functional_call`` over stacked parameters).
`batched_heads` picks between them; both give the same logits for the same members.

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
from vea_bench.heads.config import EARLY_STOPS, scaled_budget
from vea_bench.heads.head_registry import MLPLayout
from vea_bench.heads.losses import MemberLoss
from vea_bench.progress import Progress, ensure

_STREAMS = {"init": 0, "order": 1, "dropout": 2, "gate-init": 3, "gate-order": 4, "folds": 5, "gate-dropout": 6}
KEEP_CHOICES = ("last", "best")
PRECISIONS = ("fp32", "bf16")
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


# ----------------------------------------------------------------------------- batched models

def stacked_layout(head: nn.Module) -> MLPLayout | None:
    """The head's declared `MLPLayout` (``head.stacked_mlp()``), or None: it trains with vmap."""
    declare = getattr(head, "stacked_mlp", None)
    return None if declare is None else declare()


def verified_layout(head: nn.Module) -> MLPLayout:
    """The head's declared layout, checked against its modules: exactly what `StackedMLP` computes.

    Why so strict: `StackedMLP` reproduces only ``nn.Sequential(Linear, GELU, Dropout, ...,
    Linear)`` with the stock forward; anything else (ReLU, tanh-GELU, LayerNorm, a residual, an
    overridden forward, a hook) would silently train as a different network, so it is refused.
    """
    name = type(head).__name__
    layout = stacked_layout(head)

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"StackedMLP runs only plain Linear-GELU-Dropout nn.Sequential heads; {name} {why} "
                           "(drop its stacked_mlp() to train it with vmap)")

    if layout is None:
        raise refuse("declares no stacked_mlp() layout")
    if layout.activation != "gelu":
        raise refuse(f"declares activation '{layout.activation}'")
    if not isinstance(head, nn.Sequential) or type(head).forward is not nn.Sequential.forward:
        raise refuse("is not a stock nn.Sequential (its forward differs)")
    kids = list(head.children())
    k = len(kids) // 3
    if len(kids) != 3 * k + 1 or k < 1:
        raise refuse(f"has {len(kids)} layers, not (Linear, GELU, Dropout) x k + Linear")
    for i, mod in enumerate(kids):
        role = "Linear" if i % 3 == 0 else ("GELU" if i % 3 == 1 else "Dropout")
        ok = {"Linear": type(mod) is nn.Linear and getattr(mod, "bias", None) is not None,
              "GELU": type(mod) is nn.GELU and getattr(mod, "approximate", "") == "none",
              "Dropout": type(mod) is nn.Dropout and float(getattr(mod, "p", -1)) == float(layout.dropout)}[role]
        if not ok:
            raise refuse(f"has {mod!r} where a stock {role}"
                         f"{'(p=%g)' % layout.dropout if role == 'Dropout' else ''} belongs (layer {i})")
    if [id(m) for m in layout.linears] != [id(m) for m in kids[0::3]]:
        raise refuse("declares Linear layers that are not its own, in order")
    n_params = sum(1 for _ in head.parameters())
    if n_params != 2 * (k + 1) or any(True for _ in head.buffers()):
        raise refuse("has parameters or buffers beyond its Linear layers")
    for mod in head.modules():
        if mod._forward_hooks or mod._forward_pre_hooks or getattr(mod, "_backward_hooks", None):
            raise refuse("has module hooks")
    return layout


class StackedMLP:
    """M distill heads (same hidden dims) as ``[M, in, out]`` weights; per-member dropout masks.

    Only heads that declare a `MLPLayout` and pass `verified_layout` are accepted.

    Training runs a hand-written backward (the head is Linear-GELU-Dropout blocks and a Linear):
    the weight gradients go by ``bmm(..., out=)`` into buffers allocated once, no gradient is formed
    for the input features, and the dropout masks are drawn into a reused buffer. Why: on CPU the
    sweep's time is otherwise dominated not by its GEMMs but by allocating, zeroing and copying
    ``M x 3584 x 1024`` tensors every step. ``forward(train=True)`` returns the logits as a leaf
    that requires grad; calling ``backward`` on a loss of them fills each weight's ``.grad``.
    """

    def __init__(self, heads: Sequence[nn.Module], dropout_seeds: Sequence[int], device: torch.device,
                 precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision '{precision}' (choices: fp32, bf16, auto)")
        layouts = [verified_layout(h) for h in heads]
        if len({(tuple((lin.in_features, lin.out_features) for lin in lay.linears), lay.dropout)
                for lay in layouts}) != 1:
            raise ConfigError("StackedMLP members must share one layout (widths and dropout)")
        linears = [list(lay.linears) for lay in layouts]
        where = {id(m): n for n, m in heads[0].named_modules()}
        self.names = [where[id(lin)] for lin in linears[0]]
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor] = []
        for i in range(len(self.names)):
            w = torch.stack([ls[i].weight.detach().t() for ls in linears]).contiguous()
            b = torch.stack([ls[i].bias.detach() for ls in linears]).unsqueeze(1).contiguous()
            self.weights.append(w.to(device).requires_grad_())
            self.biases.append(b.to(device).requires_grad_())
        self.p = float(layouts[0].dropout)
        self.gens = [torch.Generator(device=device).manual_seed(stream_seed(s, "dropout")) for s in dropout_seeds]
        self.device = device
        self.precision = precision
        self.compute_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self._grads: list[torch.Tensor] | None = None
        self._low: list[torch.Tensor] | None = None     # bf16 copies of the grads (bf16 only)
        self._masks: dict[tuple[int, ...], torch.Tensor] = {}
        self._cast: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def subset(self, keep: Sequence[int]) -> StackedMLP:
        """A model of members ``keep`` only (copies of their current weights and dropout generators).

        Why: members that stopped early leave the stacked GEMMs, so the rest run at their own cost;
        each member's arithmetic is its own slice of the batched products, so it is unchanged.
        """
        new = object.__new__(StackedMLP)
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=self.device)
        new.names, new.p, new.device = self.names, self.p, self.device
        new.precision, new.compute_dtype = self.precision, self.compute_dtype
        new.weights = [w.detach().index_select(0, idx).contiguous().requires_grad_() for w in self.weights]
        new.biases = [b.detach().index_select(0, idx).contiguous().requires_grad_() for b in self.biases]
        new.gens = [self.gens[k] for k in keep]
        new._grads, new._low, new._masks, new._cast = None, None, {}, {}
        return new

    def params_changed(self) -> None:
        """Call after writing the weights outside the optimiser (restoring a best epoch)."""
        self._cast = {}

    def _weight(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's weight and bias in the compute dtype.

        bf16 copies are made once per optimiser step: the cache is dropped at the end of each
        backward (an update follows) and reused by every forward until then (eval chunks).
        """
        w, b = self.weights[i].detach(), self.biases[i].detach()
        if self.compute_dtype == torch.float32:
            return w, b
        hit = self._cast.get(i)
        if hit is None:
            hit = self._cast[i] = (w.to(self.compute_dtype), b.to(self.compute_dtype))
        return hit

    def _mask(self, layer: int, shape: torch.Size) -> torch.Tensor:
        """This step's keep-masks ``[M, B, H]`` (0/1), each member's from its own generator."""
        key = (layer, *shape)
        buf = self._masks.get(key)
        if buf is None:
            self._masks = {k: v for k, v in self._masks.items() if k[0] != layer}   # a new batch shape
            buf = self._masks[key] = torch.empty(shape, device=self.device, dtype=self.compute_dtype)
        keep = 1.0 - self.p
        for j, g in enumerate(self.gens):
            buf[j].bernoulli_(keep, generator=g)
        return buf

    @torch.no_grad()
    def forward(self, inputs: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        h = inputs[0].to(self.compute_dtype)
        last = len(self.weights) - 1
        drop = train and self.p > 0
        keep = 1.0 - self.p
        saved: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = []  # (input, pre-act, mask)
        for i in range(len(self.weights)):
            w, b = self._weight(i)
            z = torch.baddbmm(b, h, w)
            if i == last:
                saved.append((h, None, None))
                h = z.float()   # the loss is always computed in fp32
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
            if self.compute_dtype != torch.float32:
                self._low = [torch.empty_like(w, dtype=self.compute_dtype) for w in self.weights]
        keep = 1.0 - self.p
        g = grad_out.to(self.compute_dtype)
        for i in range(len(self.weights) - 1, -1, -1):
            x, _, _ = saved[i]
            gw, gb = self._grads[2 * i], self._grads[2 * i + 1]
            if self._low is None:
                torch.bmm(x.transpose(1, 2), g, out=gw)
                torch.sum(g, dim=1, keepdim=True, out=gb)
            else:   # bf16 products, fp32 gradients for the fp32 master weights and Adam state
                torch.bmm(x.transpose(1, 2), g, out=self._low[i])
                gw.copy_(self._low[i])
                torch.sum(g, dim=1, keepdim=True, dtype=torch.float32, out=gb)
            self.weights[i].grad = gw
            self.biases[i].grad = gb
            if i > 0:
                _, z, mask = saved[i - 1]
                ga = torch.bmm(g, self._weight(i)[0].transpose(1, 2))
                if mask is not None:
                    ga.div_(keep).mul_(mask)
                g = torch.ops.aten.gelu_backward(ga, z)
        saved.clear()
        self._cast = {}   # the optimiser step that follows changes the weights

    def state_dict(self, m: int) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, w, b in zip(self.names, self.weights, self.biases):
            out[f"{name}.weight"] = w[m].detach().t().contiguous().cpu()
            out[f"{name}.bias"] = b[m, 0].detach().contiguous().cpu()
        return out


class _MemberDropout(nn.Module):
    """``nn.Dropout`` whose keep-mask comes in as a buffer: the trainer draws it from the member's generator.

    Same arithmetic as `StackedMLP` (``x * mask / keep``), so both paths drop the same units.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)
        self.register_buffer("mask", torch.empty(0), persistent=False)
        self.probe: list[tuple[str, torch.Size]] | None = None
        self.path = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probe is not None:          # shape discovery (`VmappedModules._mask_plan`)
            self.probe.append((self.path, x.shape))
            return x
        if not self.training or self.p == 0:
            return x
        if self.p >= 1:
            return x * 0
        return x * self.mask / (1.0 - self.p)


class VmappedModules:
    """M copies of any module run with ``torch.func.vmap`` of ``functional_call`` over stacked params.

    Randomness per member: every ``nn.Dropout`` is swapped (in the shared meta copy) for one whose
    mask is an input, and each step's masks are drawn from each member's own generator
    (``dropout_seeds``), as `StackedMLP` draws them; so member m trains the same in any batch. Any
    other random op in the module's forward is refused (vmap's ``randomness="error"``): it would
    draw from a global generator shared by the members.
    """

    def __init__(self, modules: Sequence[nn.Module], device: torch.device,
                 dropout_seeds: Sequence[int] | None = None, dropout_stream: str = "dropout") -> None:
        from torch.func import stack_module_state

        for mod in modules[0].modules():
            if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.track_running_stats:
                raise ConfigError(f"{type(modules[0]).__name__}: batched training cannot update running "
                                  f"statistics ({type(mod).__name__}); use LayerNorm or track_running_stats=False")
        params, buffers = stack_module_state(list(modules))
        self.names = list(params)
        self._params = [params[n].detach().to(device).contiguous().requires_grad_() for n in self.names]
        persistent = {n for n in modules[0].state_dict() if n in buffers}
        self.buffer_names = [n for n in buffers if n in persistent]
        self._buffers = [buffers[n].detach().to(device).contiguous() for n in self.buffer_names]
        self.base = copy.deepcopy(modules[0]).to("meta")
        self.drops: dict[str, _MemberDropout] = {}
        for path, mod in list(self.base.named_modules()):
            if type(mod) is nn.Dropout and mod.p > 0:
                new = _MemberDropout(mod.p)
                new.path = path
                parent, _, leaf = path.rpartition(".")
                setattr(self.base.get_submodule(parent) if parent else self.base, leaf, new)
                self.drops[path] = new
        if self.drops and dropout_seeds is None:
            raise ConfigError(f"{type(modules[0]).__name__} has dropout: give each member its dropout seed")
        seeds = list(dropout_seeds) if dropout_seeds is not None else []
        self.gens = [torch.Generator(device=device).manual_seed(stream_seed(s, dropout_stream)) for s in seeds]
        self.device = device
        self._shapes: dict[tuple, list[tuple[str, torch.Size]]] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return self._params

    def _mask_plan(self, inputs: Sequence[torch.Tensor]) -> list[tuple[str, torch.Size]]:
        """Each dropout's per-member input shape, in call order (one forward of member 0 per input shape)."""
        from torch.func import functional_call

        key = tuple((tuple(x.shape[1:]), x.dtype) for x in inputs)
        plan = self._shapes.get(key)
        if plan is None:
            plan = []
            for d in self.drops.values():
                d.probe = plan
            try:
                self.base.train(True)
                first = {n: t[0] for n, t in zip(self.names + self.buffer_names, self._params + self._buffers)}
                with torch.no_grad():
                    functional_call(self.base, first, tuple(x[0] for x in inputs))
            finally:
                for d in self.drops.values():
                    d.probe = None
            paths = [p for p, _ in plan]
            if len(set(paths)) != len(paths):
                raise ConfigError(f"{type(self.base).__name__}: a dropout module is called twice in one forward; "
                                  "give each call its own nn.Dropout")
            self._shapes[key] = plan
        return plan

    def _masks(self, inputs: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """This step's keep-masks ``[M, ...]`` per dropout, member j's drawn from its own generator."""
        out = {}
        for path, shape in self._mask_plan(inputs):
            buf = torch.empty((len(self.gens), *shape), device=self.device, dtype=torch.float32)
            keep = 1.0 - self.drops[path].p
            for j, g in enumerate(self.gens):
                buf[j].bernoulli_(keep, generator=g)
            out[f"{path}.mask" if path else "mask"] = buf
        return out

    def forward(self, inputs: Sequence[torch.Tensor], train: bool) -> torch.Tensor:
        from torch.func import functional_call, vmap

        names = self.names + self.buffer_names
        masks = self._masks(inputs) if (train and self.drops) else {}
        mask_names = list(masks)
        base = self.base
        base.train(train)
        n_state = len(names)

        def one(state: tuple[torch.Tensor, ...], *xs: torch.Tensor) -> torch.Tensor:
            tensors = dict(zip(names, state[:n_state]))
            tensors.update(zip(mask_names, state[n_state:]))
            return functional_call(base, tensors, xs)

        state = (*self._params, *self._buffers, *masks.values())
        try:
            return vmap(one)(state, *inputs)
        except RuntimeError as e:
            if "randomness" not in str(e):
                raise
            raise ConfigError(f"{type(base).__name__} draws random numbers outside nn.Dropout; the batched trainer "
                              "gives each member its own dropout masks and refuses shared randomness") from None

    def params_changed(self) -> None:
        return None

    def subset(self, keep: Sequence[int]) -> VmappedModules:
        """A model of members ``keep`` only (see `StackedMLP.subset`)."""
        new = object.__new__(VmappedModules)
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=self._params[0].device)
        new.names, new.base, new.buffer_names = self.names, self.base, self.buffer_names
        new.drops, new.device, new._shapes = self.drops, self.device, self._shapes
        new._params = [p.detach().index_select(0, idx).contiguous().requires_grad_() for p in self._params]
        new._buffers = [b.index_select(0, idx).contiguous() for b in self._buffers]
        new.gens = [self.gens[k] for k in keep] if self.gens else []
        return new

    def state_dict(self, m: int) -> dict[str, torch.Tensor]:
        out = {n: p[m].detach().contiguous().cpu() for n, p in zip(self.names, self._params)}
        out.update({n: b[m].contiguous().cpu() for n, b in zip(self.buffer_names, self._buffers)})
        return out


def batched_heads(heads: Sequence[nn.Module], seeds: Sequence[int], device: torch.device,
                  precision: str = "fp32") -> StackedMLP | VmappedModules:
    """The batched model for these members: the fast `StackedMLP` where the head declares (and is
    verified to be) its plain MLP, else `VmappedModules` (fp32) for any other head."""
    if stacked_layout(heads[0]) is not None:
        return StackedMLP(heads, seeds, device, precision=precision)
    if precision != "fp32":
        raise ConfigError(f"--precision {precision} runs only on the stacked MLP path; "
                          f"{type(heads[0]).__name__} trains in fp32")
    return VmappedModules(heads, device, dropout_seeds=seeds)


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

    def subset(self, keep: Sequence[int], params: Sequence[torch.Tensor]) -> BatchedAdam:
        """The optimiser of members ``keep`` over ``params`` (their compacted model): moments sliced, step kept."""
        new = BatchedAdam(params, [self.lr[k] for k in keep], [self.wd[k] for k in keep], (self.b1, self.b2), self.eps)
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=self.params[0].device)
        new.t = self.t
        new.m = [m.index_select(0, idx).contiguous() for m in self.m]
        new.v = [v.index_select(0, idx).contiguous() for v in self.v]
        return new

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

    def gather(self, rows: torch.Tensor, m: int, buffers: dict[int, torch.Tensor] | None = None,
               members: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Rows ``[M, B]`` (one order per member) or ``[B]`` (the same rows for all) -> ``[M, B, F]``.

        ``buffers`` (a dict the caller keeps between steps) receives the gathered shared tables so
        each training step reuses the same memory instead of allocating ``M x B x F`` afresh.
        ``members`` names which members' per-member tables to read (those still training).
        """
        out = []
        ar = (torch.arange(m, device=rows.device) if members is None else members).unsqueeze(1)
        for k, (t, per) in enumerate(zip(self.tables, self.per_member)):
            if rows.dim() == 1:
                if per:
                    out.append(t[:, rows] if members is None else t[members][:, rows])
                else:
                    out.append(t[rows].unsqueeze(0).expand(m, -1, -1))
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
class MemberHistory:
    """How one member converged: per-epoch losses and val accuracy, the epoch kept and why it stopped."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    kept_epoch: int = 0
    kept_because: str = ""
    stop_reason: str = ""
    best_val_epoch: int = 0        # the epoch of best val score, whatever was kept
    max_epochs: int = 0            # the epoch budget it trained under (`scaled_budget` of the run's)
    patience: int | None = None    # the patience (epochs) it trained under

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)


@dataclass
class TrainOutput:
    """States (per member, standard module state dicts), eval logits per split ``[M, N, C]``, histories."""

    states: list[dict[str, torch.Tensor]]
    logits: dict[str, np.ndarray]
    best_epoch: list[int]
    history: list[MemberHistory] = field(default_factory=list)


@torch.no_grad()
def predict(model: Any, split: SplitInputs, m: int, chunk: int = EVAL_CHUNK,
            members: torch.Tensor | None = None) -> torch.Tensor:
    """Eval-mode logits ``[M, N, C]`` of all members (or of ``members``, those still training) on a whole split."""
    n = len(split)
    outs = []
    dev = split.y.device
    for s in range(0, n, chunk):
        rows = torch.arange(s, min(n, s + chunk), device=dev)
        outs.append(model.forward(split.gather(rows, m, members=members), train=False))
    return torch.cat(outs, dim=1)


def _losses(out: torch.Tensor, split: SplitInputs, rows: torch.Tensor, loss: MemberLoss, alpha: torch.Tensor,
            tau: torch.Tensor) -> torch.Tensor:
    """Per-member batch-mean loss of logits ``out`` ``[M, B, C]`` on ``rows`` (``[M, B]`` or ``[B]``)."""
    y = split.y[rows]
    t = None if split.teacher is None else split.teacher[rows]
    if rows.dim() == 1:
        y = y.unsqueeze(0).expand(out.shape[0], -1)
        t = None if t is None else t.unsqueeze(0).expand(out.shape[0], -1, -1)
    return loss(out, y, t, alpha, tau)


@torch.no_grad()
def _score(model: Any, split: SplitInputs, m: int, loss: MemberLoss, alpha: torch.Tensor, tau: torch.Tensor,
           members: torch.Tensor | None) -> tuple[list[float], list[float]]:
    """Per member: accuracy and mean training loss on a whole split (eval mode)."""
    logits = predict(model, split, m, members=members)
    acc = (logits.argmax(-1) == split.y.unsqueeze(0)).float().mean(1)
    rows = torch.arange(len(split), device=split.y.device)
    return acc.tolist(), _losses(logits, split, rows, loss, alpha, tau).tolist()


# The smoothed-acc signal's moving average: ema = SMOOTHING * ema + (1 - SMOOTHING) * accuracy
# (about five epochs of memory), started at the first epoch's accuracy.
SMOOTHING = 0.7


def _better(acc: float, loss: float, best: tuple[float, float] | None, min_delta: float) -> bool:
    """Val score order: higher accuracy wins; equal accuracy, a lower loss (by ``min_delta``) wins."""
    if best is None:
        return True
    if acc > best[0] + 1e-12:
        return True
    return abs(acc - best[0]) <= 1e-12 and loss < best[1] - min_delta


class MemberSelection:
    """Which epoch each member keeps and when it stops: the one home of the trainer's selection.

    After each epoch every live member is scored on the select split (accuracy, ties broken by its
    loss). ``keep="best"`` copies a member's weights whenever it improves; ``patience`` stops a
    member after that many epochs in which neither the score nor the val loss improved (on a small
    val split accuracy moves in coarse steps and can sit still while the loss keeps falling, which
    would stop a member that is still learning). ``signal="smoothed-acc"`` scores each epoch by a
    moving average of the val accuracy instead (`SMOOTHING`), and only that average's progress
    resets the patience. `compact` drops stopped members from the batched
    model and its optimiser, so the others train on at their own cost; `finish` restores the kept
    weights and records why each member kept what it kept.
    """

    def __init__(self, params: Sequence[torch.Tensor], n_members: int, *, keep: str, patience: int | None,
                 min_delta: float, epochs: int, select_split: str, signal: str = EARLY_STOPS[0]) -> None:
        if signal not in EARLY_STOPS:
            raise ConfigError(f"unknown --early-stop '{signal}' (choices: {', '.join(EARLY_STOPS)})")
        self.keep, self.patience, self.min_delta, self.signal = keep, patience, min_delta, signal
        self._ema: list[float | None] = [None] * n_members
        self.epochs, self.select_split = epochs, select_split
        self.history = [MemberHistory(max_epochs=epochs, patience=patience) for _ in range(n_members)]
        self.live = list(range(n_members))          # original indices of the members still training
        self._best: list[tuple[float, float] | None] = [None] * n_members
        self._since = [0] * n_members
        self._best_loss = [math.inf] * n_members
        self._best_params = [p.detach().clone() for p in params] if keep == "best" else None

    def observe(self, epoch: int, model: Any, train_loss: list[float],
                scores: tuple[list[float], list[float]] | None) -> list[int]:
        """Record one epoch of the live members; the positions (in ``live``) of those that stop now."""
        stopped: list[int] = []
        for k, j in enumerate(self.live):
            h = self.history[j]
            h.train_loss.append(float(train_loss[k]))
            if scores is None:
                continue
            acc, vl = scores[0][k], scores[1][k]
            h.val_accuracy.append(float(acc))
            h.val_loss.append(float(vl))
            smoothed = self.signal == "smoothed-acc"
            loss_improved = not smoothed and vl < self._best_loss[j] - self.min_delta
            if smoothed:
                prev = self._ema[j]
                acc = self._ema[j] = float(acc) if prev is None else SMOOTHING * prev + (1 - SMOOTHING) * float(acc)
            self._best_loss[j] = min(self._best_loss[j], float(vl))
            if _better(acc, vl, self._best[j], self.min_delta):
                self._best[j] = (acc, vl)
                h.best_val_epoch = epoch
                self._since[j] = 0
                if self._best_params is not None:
                    for bp, p in zip(self._best_params, model.params):
                        bp[j] = p.detach()[k]
            elif loss_improved:
                self._since[j] = 0
            else:
                self._since[j] += 1
                if self.patience is not None and self._since[j] >= self.patience and epoch < self.epochs:
                    stopped.append(k)
                    what = ("the smoothed val accuracy did not improve" if self.signal == "smoothed-acc"
                            else "neither val accuracy nor val loss improved")
                    h.stop_reason = (f"patience: {what} in {self.patience} "
                                     f"epoch(s); best val accuracy at epoch {h.best_val_epoch}")
        return stopped

    def compact(self, stopped: list[int], model: Any, opt: BatchedAdam) -> tuple[Any, BatchedAdam]:
        """The model and optimiser of the members still live once ``stopped`` (positions) leave."""
        keep_pos = [k for k in range(len(self.live)) if k not in stopped]
        self.live = [self.live[k] for k in keep_pos]
        if not self.live:
            return model, opt
        model = model.subset(keep_pos)
        return model, opt.subset(keep_pos, model.params)

    def finish(self, full: Any) -> list[MemberHistory]:
        """Restore each member's kept weights into ``full`` and say why it kept them and why it stopped."""
        for j in self.live:
            h = self.history[j]
            h.stop_reason = "epoch budget reached" if h.epochs_run == self.epochs else "step limit reached"
        if self._best_params is not None:
            with torch.no_grad():
                for bp, p in zip(self._best_params, full.params):
                    p.copy_(bp)
            full.params_changed()
        for j, h in enumerate(self.history):
            best = self._best[j]
            if self.keep == "best" and best is not None:
                h.kept_epoch = h.best_val_epoch
                smoothed = "smoothed " if self.signal == "smoothed-acc" else ""
                h.kept_because = (f"best {smoothed}{self.select_split} accuracy {100 * best[0]:.2f} % "
                                  f"({self.select_split} loss {best[1]:.4f})")
            else:
                h.kept_epoch = h.epochs_run
                h.kept_because = "last epoch (keep=last)"
        return self.history


def _check_run(keep: str, epochs: int, batch_size: int, patience: int | None, select_split: str,
               evals: dict[str, SplitInputs]) -> None:
    if keep not in KEEP_CHOICES:
        raise ConfigError(f"unknown --keep '{keep}' (choices: {', '.join(KEEP_CHOICES)})")
    if epochs < 1 or batch_size < 1:
        raise ConfigError("epochs and batch size must be at least 1")
    if patience is not None and (patience < 1 or keep != "best"):
        raise ConfigError("--patience must be at least 1 and needs --keep best")
    if keep == "best" and select_split not in evals:
        raise ConfigError(f"--keep best needs a '{select_split}' split to select on")


def train_members(
    model: StackedMLP | VmappedModules,
    train: SplitInputs,
    members: Sequence[MemberHyper],
    *,
    loss: MemberLoss,
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
    patience: int | None = None,
    min_delta: float = 1e-4,
    min_steps: int = 0,
    early_stop: str = EARLY_STOPS[0],
) -> TrainOutput:
    """Train all members of ``model`` together on ``loss``; evaluate on ``evals`` (eval mode) at the end.

    ``loss`` is a `MemberLoss` (`vea_bench.heads.losses.kd_objective`, ``ce_objective``).
    ``train_rows`` (``[M, n]``) gives each member its own training rows (cross-fitting folds);
    by default all members train on every row of ``train``. ``max_steps`` stops early (benchmarks
    time a fraction of an epoch with it). After each epoch every member is scored on
    ``evals[select_split]`` and only on it: no other split is read before the end. ``keep``,
    ``patience``, ``min_delta`` and ``early_stop`` (its ``signal``) are `MemberSelection`'s: ``keep="best"`` keeps each member's
    best-scoring epoch, ``"last"`` (the reference) the final one; a member stopped by patience leaves
    the stacked model and ends exactly as it would alone. With ``keep="best"``, ``min_steps`` raises ``epochs``
    and ``patience`` together on a set too small to make that many steps in ``epochs`` (`scaled_budget`).
    """
    evals = dict(evals or {})
    _check_run(keep, epochs, batch_size, patience, select_split, evals)
    progress = ensure(progress)
    m_all = len(members)
    dev = train.y.device
    if train_rows is None:
        train_rows = torch.arange(len(train), device=dev).unsqueeze(0).expand(m_all, -1)
    train_rows = train_rows.to(dev)
    n = int(train_rows.shape[1])
    if n == 0:
        raise ConfigError("no training rows")
    full = model
    order_gens = [torch.Generator().manual_seed(stream_seed(h.seed, order_stream)) for h in members]
    opt = BatchedAdam(model.params, [h.lr for h in members], [h.weight_decay for h in members])
    alpha_all = torch.tensor([h.alpha for h in members], dtype=torch.float32, device=dev)
    tau_all = torch.tensor([h.tau for h in members], dtype=torch.float32, device=dev)
    steps = math.ceil(n / batch_size)
    if keep == "best":   # a budget early stopping cuts short; keep=last trains exactly the epochs given
        epochs, patience = scaled_budget(epochs, patience, steps, min_steps)
    progress.start(desc, total=epochs * steps)
    selection = MemberSelection(model.params, m_all, keep=keep, patience=patience, min_delta=min_delta,
                                epochs=epochs, select_split=select_split, signal=early_stop)
    sel = evals.get(select_split)
    run = _EpochRunner(train, loss, batch_size, steps, max_steps, progress)
    for epoch in range(1, epochs + 1):
        if run.out_of_steps():
            break
        live = selection.live
        m = len(live)
        live_t = None if m == m_all else torch.as_tensor(live, device=dev)
        alpha, tau = (alpha_all, tau_all) if live_t is None else (alpha_all[live_t], tau_all[live_t])
        perm = torch.stack([torch.randperm(n, generator=order_gens[j]) for j in live]).to(dev)
        order = train_rows[live][torch.arange(m, device=dev).unsqueeze(1), perm]
        tl = (run.epoch(model, opt, order, live_t, alpha, tau, epoch) / n).tolist()
        scores = None if sel is None else _score(model, sel, m, loss, alpha, tau, live_t)
        stopped = selection.observe(epoch, model, tl, scores)
        progress.advance(0, epoch=epoch, loss=float(np.mean(tl)), live=m)
        if stopped:
            model, opt = selection.compact(stopped, model, opt)
            run.gather_bufs = {}
            if not selection.live:
                break
    progress.finish()
    hist = selection.finish(full)
    logits = {name: predict(full, sp, m_all).float().cpu().numpy() for name, sp in evals.items()}
    states = [full.state_dict(j) for j in range(m_all)]
    return TrainOutput(states=states, logits=logits, best_epoch=[h.kept_epoch for h in hist], history=hist)


class _EpochRunner:
    """The optimiser steps of one epoch over per-member row orders; counts steps against ``max_steps``."""

    def __init__(self, train: SplitInputs, loss: MemberLoss, batch_size: int, steps: int, max_steps: int | None,
                 progress: Progress) -> None:
        self.train, self.loss, self.batch_size, self.steps = train, loss, batch_size, steps
        self.max_steps, self.progress = max_steps, progress
        self.report_every = max(1, steps // 50)
        self.gather_bufs: dict[int, torch.Tensor] = {}
        self.done = 0

    def out_of_steps(self) -> bool:
        return self.max_steps is not None and self.done >= self.max_steps

    def epoch(self, model: Any, opt: BatchedAdam, order: torch.Tensor, live_t: torch.Tensor | None,
              alpha: torch.Tensor, tau: torch.Tensor, epoch: int) -> torch.Tensor:
        """One pass over ``order`` (``[M, n]``); the per-member sum of batch losses times batch sizes."""
        m = order.shape[0]
        total = torch.zeros(m, device=order.device)
        pending = 0
        bs = self.batch_size
        for i in range(self.steps):
            if self.out_of_steps():
                break
            self.done += 1
            rows = order[:, i * bs:(i + 1) * bs]
            out = model.forward(self.train.gather(rows, m, self.gather_bufs, members=live_t), train=True)
            per = _losses(out, self.train, rows, self.loss, alpha, tau)
            per.sum().backward()
            opt.step()
            total += per.detach() * rows.shape[1]
            pending += 1
            if pending == self.report_every or i == self.steps - 1:
                self.progress.advance(pending, epoch=epoch)
                pending = 0
        return total
