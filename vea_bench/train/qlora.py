"""Stage 1: QLoRA instruction tuning of the VLM on the three emotion instruction kinds (SPEC).

Recipe (all from SPEC, all overridable): the base model in 4-bit NF4 with double quantisation and
bf16 compute (bitsandbytes' CUDA kernels, or its CPU kernels for small models and tests); LoRA r 8, alpha 8, dropout 0.05 on q_proj, k_proj, v_proj, o_proj of the LANGUAGE
MODEL only (a target-module regex rooted at the model's ``language_model`` submodule keeps the
vision tower frozen and untouched); AdamW lr 1e-4, grad-norm clip 0.3, warmup ratio 0.03 then a
constant rate, gradient checkpointing, batch 1, 5 epochs.

Each instruction is a chat (system message, user turn with the image and the question, assistant
answer) rendered by the processor's own chat template; ``image_position="last"`` puts the question
first, as the reference does. By default only the assistant's answer tokens (and the end-of-turn
token that closes it, so the model learns to stop) carry loss: prompt, image and padding positions
are -100. ``loss_on="all"`` trains on every non-pad, non-image token instead, as the reference does.

A plain loop rather than a Trainer: every step reseeds from (seed, step), so runs are deterministic
and a resumed run continues exactly. Checkpoints (adapter + optimizer + scheduler + position) are
written at each epoch end (and every ``save_every`` steps) into a temporary folder renamed into
place; the final adapter goes to ``<out>/adapter`` the same way, so an interrupted run never
leaves an adapter that looks complete.
"""
from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vea_bench.errors import ConfigError, DatasetError, ModelError
from vea_bench.hashing import config_hash, file_sha256
from vea_bench.models.base import GenerationOptions
from vea_bench.models.engine import cap_image
from vea_bench.progress import Progress, ensure
from vea_bench.prompts import SYSTEM_MESSAGE, categorical_instruction, user_content
from vea_bench.results import ResultsStore, RunRecord
from vea_bench.schema import doc
from vea_bench.tracking.base import Tracker, ensure_tracker
from vea_bench.train.instructions import (
    INSTRUCTION_KINDS,
    Instruction,
    load_instructions,
)
from vea_bench.train.state import (
    STATE_FILE,
    atomic_dir,
    check_same_config,
    load_optimizer,
    read_state,
    recover_dir,
    save_optimizer,
    write_json_atomic,
)

if TYPE_CHECKING:
    import torch

    from vea_bench.datasets.base import DatasetIndex

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoint"
ADAPTER_META = "vea_bench_adapter.json"
ADAPTER_FORMAT = "vea-bench/adapter/1"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LOSS_ON = ("answer", "all")


@dataclass
class QLoRAConfig:
    """What decides the adapter (hashed into the run identity); device and eval options are not in it."""

    vlm: str = field(metadata=doc("Base VLM: hub id (Qwen/Qwen2-VL-7B-Instruct) or local folder."))
    quantize: bool = field(default=True, metadata=doc(
        "4bit: NF4 + double quantisation (SPEC, the default; GPU, or CPU through bitsandbytes' CPU kernels); "
        "none: plain LoRA on unquantised weights.", words={"4bit": True, "nf4": True, "none": False}))
    epochs: int = field(default=5, metadata=doc("Epochs (SPEC: 5)."))
    lr: float = field(default=1e-4, metadata=doc("AdamW learning rate (SPEC: 1e-4)."))
    max_steps: int | None = field(default=None, metadata=doc("Stop after this many optimiser steps."))
    seed: int = field(default=0, metadata=doc("Seed of LoRA init, data order and dropout."))
    batch_size: int = field(default=1, metadata=doc("Instructions per optimiser step (SPEC: 1)."))
    lora_r: int = field(default=8, metadata=doc("LoRA rank (SPEC: 8)."))
    lora_alpha: int = field(default=8, metadata=doc("LoRA alpha (SPEC: 8)."))
    lora_dropout: float = field(default=0.05, metadata=doc("LoRA dropout (SPEC: 0.05)."))
    target_modules: tuple[str, ...] = field(default=LORA_TARGETS, metadata=doc(
        "Linear layers of the language model LoRA adapts (SPEC: q/k/v/o)."))
    max_grad_norm: float = field(default=0.3, metadata=doc("Gradient clipping norm (SPEC: 0.3)."))
    warmup_ratio: float = field(default=0.03, metadata=doc("Warmup share of the steps (SPEC: 3 %)."))
    weight_decay: float = field(default=0.0, metadata=doc("AdamW weight decay (SPEC: none)."))
    gradient_checkpointing: bool = field(default=True, metadata=doc("Trade compute for memory (SPEC: on)."))
    max_side: int = field(default=1024, metadata=doc(
        "Longer image side cap before the processor (SPEC: 1024)."))
    max_pixels: int | None = field(default=None, metadata=doc(
        "Optional pixel budget per image; pass the same to extract."))
    kinds: tuple[str, ...] = field(default=INSTRUCTION_KINDS, metadata=doc(
        "Instruction kinds to train on (SPEC: categorical, conversation, reasoning)."))
    dtype: str = field(default="auto", metadata=doc(
        "Compute / weight dtype when not quantised (auto: bf16 on GPU, fp32 on CPU)."))
    loss_on: str = field(default="answer", metadata=doc(
        "answer: loss on the answer tokens only (default); all: on every non-pad, non-image token, as the "
        "reference trains."))
    image_position: str = field(default="first", metadata=doc(
        "first: image before the question in the user turn (default); last: after it, as the reference does. "
        "Pass the same to extract."))

    def validate(self) -> None:
        from vea_bench.prompts import check_image_position

        if self.loss_on not in LOSS_ON:
            raise ConfigError(f"--loss-on '{self.loss_on}' is not one of {', '.join(LOSS_ON)}")
        check_image_position(self.image_position)
        if self.epochs < 1:
            raise ConfigError("--epochs must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be at least 1")
        if self.batch_size < 1:
            raise ConfigError("--batch-size must be at least 1")
        if self.lr <= 0:
            raise ConfigError("--lr must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("--warmup-ratio must be in [0, 1)")


@dataclass
class QLoRAResult:
    """Where the adapter and record went, and how the loss moved."""

    out: Path
    adapter_dir: Path
    record: RunRecord
    record_paths: list[Path]
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    resumed_from_step: int = 0


# ------------------------------------------------------------------------------------------------
# Model pieces
# ------------------------------------------------------------------------------------------------

def _family(model: Any) -> Any:
    """The `VLMFamily` of a loaded model (by its config's model type): where its language model
    sits and which Linear layers LoRA adapts there."""
    from vea_bench.models.generic import family_of

    return family_of(getattr(getattr(model, "config", None), "model_type", None) or "unknown")


def language_model_prefix(model: Any) -> str:
    """Dotted name of the model's language-model submodule, as its family declares it
    (``model.language_model`` for Qwen2-VL, ``model.text_model`` for Idefics3 / SmolVLM)."""
    prefix = _family(model).language_module
    try:
        model.get_submodule(prefix)
    except AttributeError:
        raise ModelError(f"{type(model).__name__} has no '{prefix}' submodule; cannot restrict LoRA to it") from None
    return prefix


def lora_target_regex(model: Any, names: Sequence[str] | None = None) -> str:
    """A peft ``target_modules`` regex matching ``names`` (default: the family's LoRA targets)
    inside the language model only."""
    prefix = language_model_prefix(model)
    names = tuple(names) if names else _family(model).lora_targets
    regex = rf"{re.escape(prefix)}\..*\.({'|'.join(re.escape(n) for n in names)})"
    hits = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if not hits:
        raise ModelError(f"no {', '.join(names)} modules under {prefix} in {type(model).__name__}")
    return regex


def _source_family(source: str) -> Any:
    """The `VLMFamily` of a checkpoint, read from its config alone (before any weight loads)."""
    from transformers import AutoConfig

    from vea_bench.models.generic import family_of

    cfg = AutoConfig.from_pretrained(source)
    return family_of(getattr(cfg, "model_type", None) or "unknown")


def _model_class(fam: Any) -> Any:
    """The transformers class the family (`_source_family`) declares (missing here: one line)."""
    import transformers

    cls = getattr(transformers, fam.model_class, None)
    if cls is None:
        raise ModelError(f"transformers {transformers.__version__} has no {fam.model_class}; upgrade it")
    return cls


def load_base(cfg: QLoRAConfig, device: str) -> tuple[Any, Any, dict[str, Any]]:
    """(model, processor, provenance): the base VLM, 4-bit NF4 when ``cfg.quantize``, ready for LoRA."""
    from transformers import AutoProcessor

    from vea_bench.models.base import LoadOptions
    from vea_bench.models.loading import (
        _quiet_transformers,
        from_pretrained_kwargs,
        resolve_source,
        weights_sha256,
    )

    _quiet_transformers()
    opts = LoadOptions(model=cfg.vlm, device=device, dtype=cfg.dtype,
                       quantization="4bit" if cfg.quantize else None)
    source, _ = resolve_source(cfg.vlm)
    try:
        family = _source_family(source)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load VLM '{cfg.vlm}': {first[:200]}") from None
    # the same template rule as extraction: a position the family's template ignores is refused
    family.check_image_position(cfg.image_position)
    source, kwargs, device, dtype = from_pretrained_kwargs(opts, family)
    if cfg.quantize:
        import torch

        # SPEC: bf16 compute for the 4-bit weights.
        kwargs["quantization_config"].bnb_4bit_compute_dtype = torch.bfloat16
        kwargs["dtype"] = dtype = torch.bfloat16
    try:
        model = _model_class(family).from_pretrained(source, **kwargs)
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load VLM '{cfg.vlm}': {first[:200]}") from None
    if "device_map" not in kwargs:
        model.to(device)
    if getattr(processor, "chat_template", None) is None:
        raise ModelError(f"'{cfg.vlm}' has no chat template; instruction tuning needs a chat VLM")
    _, is_local = resolve_source(cfg.vlm)
    prov = {"vlm": cfg.vlm, "source": source, "model_type": model.config.model_type,
            "dtype": str(dtype).replace("torch.", ""), "quantization": "nf4-double" if cfg.quantize else None,
            "weights_sha256": weights_sha256(source) if is_local else None,
            "revision": getattr(model.config, "_commit_hash", None)}
    return model, processor, prov


def wrap_lora(model: Any, cfg: QLoRAConfig) -> Any:
    """Freeze the base, add LoRA to the language model's attention projections; returns the peft model."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    gc_kwargs = {"use_reentrant": False}  # non-reentrant: no input-grad hook needed for frozen embeddings
    for c in (model.config, getattr(model.config, "text_config", None)):
        if c is not None:
            c.use_cache = False  # no KV cache while training (and no notice about checkpointing)
    if cfg.quantize:
        # peft's own checkpointing call uses transformers' deprecated name: enable it below instead.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it (the old name still works but warns).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                      target_modules=lora_target_regex(model, cfg.target_modules), task_type="CAUSAL_LM")
    torch.manual_seed(cfg.seed)  # LoRA A matrices are drawn here
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` (peft's call, not ours).
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return get_peft_model(model, lcfg)


# ------------------------------------------------------------------------------------------------
# Examples and the label mask
# ------------------------------------------------------------------------------------------------

def chat_messages(question: str, image: Any, answer: str | None = None, *,
                  image_position: str = "first") -> list[dict[str, Any]]:
    """System message, the user's image and question, then the answer.

    The order of image and question follows ``image_position`` exactly as extraction's
    `Preparer.chat_text` does (pass the same ``--image-position`` to both), so the tuned model is
    evaluated on the prompt layout it was trained on.
    """
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_MESSAGE}]},
        {"role": "user", "content": user_content(question, image, image_position=image_position)},
    ]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def answer_span(processor: Any, question: str, answer: str, image: Any, *,
                image_position: str = "first") -> tuple[dict[str, Any], int, int]:
    """(model inputs of the full chat, start, end): positions ``[start, end)`` are the answer's tokens.

    ``start`` is where the full chat's ids leave the prompt's (prompt = the chat up to the
    assistant's turn header, image tokens included). The span runs to the first special token
    after the answer (the end-of-turn / eos, included so that the model learns to stop); what
    the template puts after it (a newline) is not trained.
    """
    full_text = processor.apply_chat_template(chat_messages(question, image, answer, image_position=image_position),
                                              tokenize=False)
    prompt_text = processor.apply_chat_template(chat_messages(question, image, image_position=image_position),
                                                tokenize=False, add_generation_prompt=True)
    if not full_text.startswith(prompt_text):
        raise ModelError("the processor's chat template does not render the prompt as a prefix of the "
                         "conversation; cannot tell answer tokens from prompt tokens")
    from vea_bench.models.engine import chat_text_kwargs  # one BOS where the template writes it (Gemma)

    full = processor(text=[full_text], images=[image], return_tensors="pt",
                     **chat_text_kwargs(processor.tokenizer, full_text))
    prompt_ids = processor(text=[prompt_text], images=[image], return_tensors="pt",
                           **chat_text_kwargs(processor.tokenizer, prompt_text))["input_ids"][0].tolist()
    ids = full["input_ids"][0].tolist()
    start = 0
    while start < min(len(ids), len(prompt_ids)) and ids[start] == prompt_ids[start]:
        start += 1
    special = set(processor.tokenizer.all_special_ids)
    end = start
    while end < len(ids) and ids[end] not in special:
        end += 1
    if end < len(ids):
        end += 1  # the end-of-turn token closes the answer
    if end <= start:
        raise ModelError("the chat template left no answer tokens to train on")
    return dict(full), start, end


def _image_token_ids(processor: Any) -> set[int]:
    """Ids of the image placeholder tokens the processor expands (never trained on)."""
    tok = processor.tokenizer
    ids: set[int] = set()
    for attr in ("image_token_id", "video_token_id"):
        v = getattr(processor, attr, None)
        if isinstance(v, int):
            ids.add(v)
    for attr in ("image_token", "video_token"):
        t = getattr(processor, attr, None)
        t = getattr(t, "content", t)
        if isinstance(t, str):
            v = tok.convert_tokens_to_ids(t)
            if isinstance(v, int) and v != tok.unk_token_id:
                ids.add(v)
    return ids


def encode_example(processor: Any, inst: Instruction, image: Any, *, loss_on: str = "answer",
                   image_position: str = "first") -> dict[str, Any]:
    """Model inputs plus ``labels``.

    ``loss_on="answer"``: -100 everywhere except the answer span (ours). ``"all"``: every token
    but padding and image placeholders carries loss: system message, question and template
    text too, as the reference's stage 1 trains.
    """
    inputs, start, end = answer_span(processor, inst.question, inst.answer, image, image_position=image_position)
    ids = inputs["input_ids"]
    labels = ids.clone()
    if loss_on == "all":
        pad = processor.tokenizer.pad_token_id
        drop = _image_token_ids(processor) | ({pad} if pad is not None else set())
        for t in drop:
            labels[ids == t] = -100
        if "attention_mask" in inputs:
            labels[inputs["attention_mask"] == 0] = -100
    else:
        labels[:, :start] = -100
        labels[:, end:] = -100
    inputs["labels"] = labels
    return inputs


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad token tensors (pad -> attention 0, label -100) and join the image tensors."""
    import torch

    if len(examples) == 1:
        return examples[0]
    width = max(e["input_ids"].shape[1] for e in examples)
    out: dict[str, Any] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100), ("mm_token_type_ids", 0),
                      ("token_type_ids", 0)):
        if key not in examples[0]:
            continue
        rows = []
        for e in examples:
            t = e[key]
            rows.append(torch.nn.functional.pad(t, (0, width - t.shape[1]), value=fill))
        out[key] = torch.cat(rows)
    for key in examples[0]:
        if key not in out:
            vals = [e[key] for e in examples]
            out[key] = torch.cat(vals) if hasattr(vals[0], "shape") else vals
    return out


class _Examples:
    """Lazy instruction examples: the image is opened, capped and processed when the step needs it."""

    def __init__(self, instructions: list[Instruction], root: Path, processor: Any, cfg: QLoRAConfig) -> None:
        self.instructions = instructions
        self.root = root
        self.processor = processor
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.instructions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from vea_bench.datasets import open_image

        inst = self.instructions[i]
        path = Path(inst.image)
        img = open_image(path if path.is_absolute() else self.root / path)
        return encode_example(self.processor, inst, cap_image(img, self.cfg.max_side, self.cfg.max_pixels),
                              loss_on=self.cfg.loss_on, image_position=self.cfg.image_position)


# ------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------

def _to(batch: dict[str, Any], device: str, dtype: Any) -> dict[str, Any]:
    import torch

    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def train_step(
    model: Any,
    batch: dict[str, Any],
    opt: torch.optim.Optimizer,
    sched: Any,
    trainable: list[torch.Tensor],
    *,
    max_grad_norm: float,
    device: str,
    dtype: Any,
    tokens: Any = None,
    scale: float = 1.0,
) -> float:
    """One optimiser step on a collated batch (with ``labels``): masked LM loss, clip, AdamW, schedule.

    Data-parallel: ``tokens`` is the number of trained tokens of the whole global batch, so the
    loss is this process's summed token loss over it, times ``scale`` (the number of processes,
    undoing DistributedDataParallel's mean; 0 for a stand-in example); returns that loss.
    """
    import torch

    batch = dict(batch)
    labels = batch.pop("labels").to(device)
    extra = {} if tokens is None else {"num_items_in_batch": tokens}
    loss = model(**_to(batch, device, dtype), labels=labels, **extra).loss
    if tokens is not None:
        loss = loss * scale
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    opt.step()
    sched.step()
    return float(loss.detach())


def _order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    g = torch.Generator()
    g.manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _trained_tokens(batch: dict[str, Any]) -> int:
    """Tokens that carry loss once the labels are shifted (what the model's mean loss divides by)."""
    return int((batch["labels"][..., 1:] != -100).sum())


@dataclass
class _VLMRun:
    """One stage-1 run's fixed facts and its moving parts (model, optimiser, position)."""

    index: DatasetIndex
    cfg: QLoRAConfig
    out: Path
    identity: dict[str, Any]
    chash: str
    device: str
    launch: Any
    insts: list[Instruction]
    model: Any = None
    processor: Any = None
    prov: dict[str, Any] = field(default_factory=dict)
    opt: Any = None
    sched: Any = None
    trainable: list[Any] = field(default_factory=list)
    compute_dtype: Any = None
    total_steps: int = 0
    steps_per_epoch: int = 0
    global_step: int = 0
    losses: list[float] = field(default_factory=list)
    track: Tracker = field(default_factory=lambda: ensure_tracker(None))  # rank 0's tracker

    @property
    def ckpt_dir(self) -> Path:
        return self.out / CHECKPOINT_DIR

    @property
    def adapter_dir(self) -> Path:
        return self.out / ADAPTER_DIR

    def checkpoint(self, finished: bool = False, record: str | None = None) -> None:
        """Rank 0: adapter, optimizer, scheduler and position, renamed into place when complete."""
        if not self.launch.is_main:
            return
        with atomic_dir(self.ckpt_dir) as tmp:
            _bare(self.model).save_pretrained(str(tmp / "adapter"))
            st: dict[str, Any] = {"config_hash": self.chash, "config": self.identity, "global_step": self.global_step,
                                  "total_steps": self.total_steps, "losses": self.losses, "finished": finished}
            if finished:
                st["record"] = record
            else:
                st["optimizer"] = save_optimizer(self.opt, tmp)
                st["scheduler"] = self.sched.state_dict()
            write_json_atomic(tmp / STATE_FILE, st)


def _bare(model: Any) -> Any:
    """The peft model inside a DistributedDataParallel wrapper (the model itself otherwise)."""
    return getattr(model, "module", model)


def train_vlm(
    index: DatasetIndex,
    cfg: QLoRAConfig,
    instructions: str | Path,
    out: str | Path,
    *,
    device: str = "auto",
    save_every: int = 0,
    eval_split: str | None = "test",
    eval_limit: int | None = None,
    results_dir: str | Path | None = "results",
    eval_generation: GenerationOptions | None = None,
    progress: Progress | None = None,
    tracker: Tracker | None = None,
) -> QLoRAResult:
    """Instruction-tune ``cfg.vlm`` with LoRA on ``instructions`` (validated against ``index``).

    Resumes an unfinished run in ``out`` with the same config; refuses one with another config.
    ``eval_split``: categorical accuracy of the tuned model there (answers decoded by extraction's
    engine with ``eval_generation``, greedy by default, then parsed) goes into the run record;
    None skips it. Under a launcher (`vea_bench.distributed`) each process loads the (4-bit) base
    on its own device and trains its share of every global batch of ``cfg.batch_size`` examples
    with DistributedDataParallel (the loss weighted by trained tokens, as one process computes
    it); rank 0 alone evaluates and writes checkpoints, the adapter and the record. A run
    resumes with any number of processes.
    """
    import torch

    from vea_bench import distributed as dist

    cfg.validate()
    launch, device = dist.setup(device)
    if cfg.batch_size < launch.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} (the global batch) is smaller than the {launch.world_size} "
                          f"processes: give at least {launch.world_size}, so that each process has an example a step")
    run = _vlm_run(index, cfg, instructions, Path(out), device, launch)
    if launch.is_main:
        run.track = ensure_tracker(tracker)
        recover_dir(run.ckpt_dir)
        recover_dir(run.adapter_dir)
    dist.barrier()
    state = read_state(run.ckpt_dir)
    if state is not None:
        check_same_config(state, run.identity, run.chash, run.out, "vlm")
        if state.get("finished") and run.adapter_dir.is_dir():
            rec_path = Path(state["record"])
            log.info("%s already holds this finished run; returning its record %s", run.out, rec_path)
            return QLoRAResult(run.out, run.adapter_dir, RunRecord.load(rec_path), [rec_path], state.get("losses", []),
                               int(state["global_step"]), int(state["global_step"]))

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    _build_training(run)
    _resume_vlm(run, state)
    resumed_from = run.global_step
    _fit_vlm(run, save_every, progress)
    meta = _save_adapter(run)
    dist.barrier()
    metrics: dict[str, Any] = {}
    if eval_split is not None:  # every process answers its share of the split
        metrics[eval_split] = evaluate_categorical(
            _bare(run.model), run.processor, run.index, eval_split, device=run.device, dtype=run.compute_dtype,
            max_side=cfg.max_side, max_pixels=cfg.max_pixels, limit=eval_limit, generation=eval_generation,
            model_ref=cfg.vlm, adapter=str(run.adapter_dir), progress=progress if launch.is_main else None,
            image_position=cfg.image_position)
    result = _record_vlm(run, meta, metrics, t0, resumed_from, results_dir) if launch.is_main else None
    return dist.broadcast_object(result)


def _vlm_run(index: DatasetIndex, cfg: QLoRAConfig, instructions: str | Path, out: Path, device: str,
             launch: Any) -> _VLMRun:
    """Validate the instructions (cheap, before a 7B model loads) and fix the run's identity."""
    space = index.label_space
    insts = load_instructions(instructions, space, index=index, kinds=cfg.kinds)
    identity = {
        "task": "vlm",
        **{k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "instructions": str(instructions),
        "instructions_sha256": file_sha256(instructions),
        "n_instructions": len(insts),
        "dataset": index.name,
        "label_space": space.name,
        "label_names": list(space.labels),
        "manifest_train": index.manifest_hash("train"),
    }
    return _VLMRun(index, cfg, out, identity, config_hash(identity), device, launch, insts)


def _build_training(run: _VLMRun) -> None:
    """Base (per process, on its own device), LoRA, optimiser and schedule; DDP-wrapped under a launcher."""
    import torch
    from transformers import get_constant_schedule_with_warmup

    cfg = run.cfg
    base, run.processor, run.prov = load_base(cfg, run.device)
    model = wrap_lora(base, cfg)
    run.compute_dtype = torch.bfloat16 if cfg.quantize else next(p for p in model.parameters()).dtype
    run.trainable = [p for p in model.parameters() if p.requires_grad]
    run.opt = torch.optim.AdamW(run.trainable, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=run.device.startswith("cuda"))
    run.steps_per_epoch = math.ceil(len(run.insts) / cfg.batch_size)
    run.total_steps = cfg.epochs * run.steps_per_epoch
    if cfg.max_steps is not None:
        run.total_steps = min(run.total_steps, cfg.max_steps)
    run.sched = get_constant_schedule_with_warmup(run.opt, num_warmup_steps=math.ceil(cfg.warmup_ratio * run.total_steps))
    if run.launch.distributed:
        from torch.nn.parallel import DistributedDataParallel

        from vea_bench.distributed import broadcast_tensors

        # Every process loaded the same base: only the trainable LoRA weights start from rank 0's,
        # and the (4-bit) base weights are left as each process loaded them on its own device.
        broadcast_tensors(run.trainable)
        model = DistributedDataParallel(model, device_ids=[run.device] if run.device.startswith("cuda") else None,
                                        init_sync=False)
    run.model = model


def _resume_vlm(run: _VLMRun, state: dict[str, Any] | None) -> None:
    """Load an unfinished run's adapter, optimiser, schedule and position (written by any number of processes)."""
    if state is None or state.get("finished"):
        return
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(str(run.ckpt_dir / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(_bare(run.model), weights)
    load_optimizer(run.opt, run.ckpt_dir, state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    run.global_step, run.losses = int(state["global_step"]), list(state["losses"])
    log.info("resuming %s at step %d of %d", run.out, run.global_step, run.total_steps)


def _fit_vlm(run: _VLMRun, save_every: int, progress: Progress | None) -> None:
    """The optimiser steps still to take, epoch by epoch, with a checkpoint at each epoch end."""
    import torch

    from vea_bench import distributed as dist

    cfg = run.cfg
    run.processor.tokenizer.padding_side = "right"
    pad_id = run.processor.tokenizer.pad_token_id if run.processor.tokenizer.pad_token_id is not None else 0
    examples = _Examples(run.insts, run.index.root, run.processor, cfg)
    prog = ensure(progress if run.launch.is_main else None)
    run.model.train()
    while run.global_step < run.total_steps:
        epoch, pos = divmod(run.global_step, run.steps_per_epoch)
        order = _order(len(run.insts), cfg.seed, epoch)
        prog.start(f"QLoRA epoch {epoch + 1}/{cfg.epochs}",
                   total=min(run.steps_per_epoch, run.total_steps - epoch * run.steps_per_epoch))
        prog.advance(pos)
        for b in range(pos, run.steps_per_epoch):
            if run.global_step >= run.total_steps:
                break
            torch.manual_seed(cfg.seed * 1_000_003 + run.global_step)  # dropout: a function of (seed, step)
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            run.losses.append(_step(run, examples, idx, pad_id))
            run.global_step += 1
            prog.advance(1, loss=run.losses[-1], lr=run.sched.get_last_lr()[0])
            run.track.step(run.global_step, loss=run.losses[-1], lr=run.sched.get_last_lr()[0])
            if save_every and run.global_step % save_every == 0 and run.global_step < run.total_steps:
                run.checkpoint()
                dist.barrier()
        prog.finish()
        run.checkpoint()
        dist.barrier()


def _step(run: _VLMRun, examples: _Examples, idx: list[int], pad_id: int) -> float:
    """One global step: one process trains the whole batch; under a launcher each trains its share."""
    from vea_bench import distributed as dist

    launch = run.launch
    scale = 1.0
    if launch.distributed:
        share = idx[launch.rank::launch.world_size]
        scale = float(launch.world_size) if share else 0.0
        idx = share or idx[:1]  # a stand-in example, weighted 0, keeps this process in the gradient exchange
    try:
        batch = collate([examples[i] for i in idx], pad_id)
    except DatasetError as exc:
        raise DatasetError(f"instruction image for step {run.global_step}: {exc}") from None
    kwargs = dict(max_grad_norm=run.cfg.max_grad_norm, device=run.device, dtype=run.compute_dtype)
    if not launch.distributed:
        return train_step(run.model, batch, run.opt, run.sched, run.trainable, **kwargs)
    import torch

    tokens = dist.all_reduce_sum([_trained_tokens(batch) if scale else 0])[0]
    loss = train_step(run.model, batch, run.opt, run.sched, run.trainable, tokens=torch.tensor(tokens), scale=scale,
                      **kwargs)
    return dist.all_reduce_sum([loss])[0] / launch.world_size


def _save_adapter(run: _VLMRun) -> dict[str, Any]:
    """The final adapter (rank 0): peft files + our provenance, renamed into place only when complete."""
    cfg, prov, losses, model = run.cfg, run.prov, run.losses, _bare(run.model)
    model.eval()
    meta = {
        "format": ADAPTER_FORMAT, "base_model": cfg.vlm, "base_source": prov["source"],
        "base_weights_sha256": prov["weights_sha256"], "base_revision": prov["revision"],
        "model_type": prov["model_type"], "quantization": prov["quantization"], "config": run.identity,
        "config_hash": run.chash, "steps": run.global_step, "trainable_params": sum(p.numel() for p in run.trainable),
        "final_loss": losses[-1] if losses else None, "system_message": SYSTEM_MESSAGE,
    }
    if run.launch.is_main:
        with atomic_dir(run.adapter_dir) as tmp:
            model.save_pretrained(str(tmp))
            (tmp / ADAPTER_META).write_text(json.dumps(meta, indent=2, default=str))
    return meta


def _record_vlm(run: _VLMRun, meta: dict[str, Any], metrics: dict[str, Any], t0: float, resumed_from: int,
                results_dir: str | Path | None) -> QLoRAResult:
    """Rank 0: the run record (in ``out`` and ``results_dir``), then the state marks the run finished."""
    from vea_bench.results import environment, experiment_id

    cfg, prov, losses = run.cfg, run.prov, run.losses
    window = max(1, min(10, len(losses) // 4 or 1))
    record = RunRecord(
        kind="vlm",
        method="QLoRA",
        dataset=run.index.name,
        # the stage identity without the seed; the config below also holds this run's losses and paths
        experiment_id=experiment_id("vlm", "QLoRA", "QLoRA", run.index.name, run.identity),
        config={**run.identity, "vlm": cfg.vlm, "adapter_dir": str(run.adapter_dir), "device": run.device,
                "base": prov, "steps": run.global_step,
                "train_loss_first": sum(losses[:window]) / window if losses else None,
                "train_loss_last": sum(losses[-window:]) / window if losses else None},
        metrics=metrics,
        seed=cfg.seed,
        params=meta["trainable_params"],
        label_names=list(run.index.label_space.labels),
        artifacts={"adapter": str(run.adapter_dir)},
        wall_time_s=time.time() - t0,
        environment={**environment(), **run.launch.facts()},  # how many processes trained it
    )
    paths = [ResultsStore(run.out).save(record, flat=True)]
    if results_dir is not None:
        paths.append(ResultsStore(results_dir).save(record))
    run.checkpoint(finished=True, record=str(paths[0]))
    return QLoRAResult(run.out, run.adapter_dir, record, paths, losses, run.global_step, resumed_from)


def evaluate_categorical(
    model: Any,
    processor: Any,
    index: DatasetIndex,
    split: str,
    *,
    device: str,
    dtype: Any,
    max_side: int = 1024,
    max_pixels: int | None = None,
    limit: int | None = None,
    generation: GenerationOptions | None = None,
    model_ref: str | None = None,
    adapter: str | None = None,
    progress: Progress | None = None,
    image_position: str = "first",
) -> dict[str, Any]:
    """Categorical answers on ``split``, parsed into labels: SplitMetrics as a dict.

    The answers come from extraction's own engine (`HFVLMBackend.run`: the same chat prompt, the
    same ``generation`` decoding, greedy by default, and the same stop at the closing brace), so
    this check and a later `vea-bench extract --adapter` agree. Unparseable answers count as
    wrong (the paper's 'none'). Extraction (`vlm-eval` records) is the full evaluation; this is
    the training run's own check.
    """
    import numpy as np

    from vea_bench import distributed as dist
    from vea_bench.datasets import open_image
    from vea_bench.metrics import split_metrics
    from vea_bench.models import backend_for_model_type
    from vea_bench.models.base import LoadOptions
    from vea_bench.models.loading import unwrap
    from vea_bench.models.parse import onehot, parse_answer

    gen = generation or GenerationOptions()
    core = unwrap(model)
    opts = LoadOptions(model=model_ref or str(getattr(core.config, "_name_or_path", "") or "vlm"), adapter=adapter,
                       device=device, max_side=max_side, max_pixels=max_pixels, image_position=image_position)
    backend = backend_for_model_type(core.config.model_type)(model, processor, opts, core.config, device, dtype)
    space = index.label_space
    samples = index.split(split)[:limit] if limit else index.split(split)
    question = categorical_instruction(space)
    mine = dist.share(range(len(samples)))  # under a launcher each process answers its share
    prog = ensure(progress)
    prog.start(f"eval {split}", total=len(mine))
    answers: dict[int, str | None] = {}  # sample position -> answer (None: the image could not be read)
    model.eval()
    for i in mine:
        try:
            img = open_image(index.root / samples[i].path)
        except DatasetError:
            answers[i] = None
            prog.advance(1)
            continue
        out = backend.run(backend.prepare([img], question), generate=True, score_labels=None, generation=gen)
        answers[i] = out.texts[0]
        prog.advance(1)
    prog.finish()
    for part in dist.gather_objects(answers):
        answers.update(part)
    kept = [i for i in range(len(samples)) if answers[i] is not None]
    results = [parse_answer(answers[i], space) for i in kept]
    y, failed = [samples[i].label for i in kept], len(samples) - len(kept)
    m = split_metrics(np.asarray(y, dtype=np.int64), onehot(results, space.num_classes), list(space.labels))
    m.extra.update({"skipped": failed, "eval": "categorical answer from extraction's engine, parsed", "limit": limit,
                    "decoding": backend.decoding_provenance(gen)})
    return asdict(m)
