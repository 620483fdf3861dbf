"""Stages: each is a loss on the one training loop, registered by name with its options and defaults.

A stage is a dataclass whose `option(...)` fields are its settings: each default and help line is written
once, there. `minimind train STAGE` (its flags and --help), `train_stage` and the course recipe all read the
registry `STAGES`; adding a stage is one dataclass with `@register` (the alignment stages register from
`minimind.align`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from ..data.datasets import IGNORE_INDEX
from ..model import MiniMindForCausalLM
from ..model.attention import KVCache
from ..model.checkpoint import state_tensors
from ..model.lora import DEFAULT_TARGETS, apply_lora, lora_state_dict, save_adapter
from ..model.loss import shift_labels


def option(default, help: str, type: Optional[Callable] = None, nargs=None, name: Optional[str] = None):
    """A stage's setting, as a dataclass field: its default and the line of help the command line shows.
    type parses the command-line string (default: the default's type); nargs is argparse's, for lists;
    name is the option's name where it differs from the field's (a field `loss` would hide the method)."""
    return field(default=default, metadata={"help": help, "type": type, "nargs": nargs, "name": name})


@dataclass(frozen=True)
class Option:
    """One setting of a stage as the command line and `train_stage` see it, read from its `option` field."""
    default: Any
    help: str
    type: Optional[Callable] = None
    nargs: Any = None
    field: str = ""  # the dataclass field that holds it


@dataclass
class StageInputs:
    """What a stage is built from: the resolved tokenizer, the model it trains (a builder may replace it, as
    the reward stage does), and the checkpoint folders named on the command line."""
    tokenizer: Any
    model: torch.nn.Module
    init: Optional[str] = None
    teacher: Optional[str] = None


STAGES: dict[str, type["Stage"]] = {}


def register(cls):
    """Add a stage dataclass to the registry under its `name`; its `options` are its `option` fields."""
    cls.options = {f.metadata["name"] or f.name: Option(f.default, f.metadata["help"], f.metadata["type"],
                                                        f.metadata["nargs"], f.name)
                   for f in fields(cls) if "help" in f.metadata}
    STAGES[cls.name] = cls
    return cls


class Stage:
    """Base stage: next-token cross-entropy on `labels` (-100 where nothing is learned).

    Class attributes describe it to the registry: `data` is the dataset kind it reads (pretrain, sft, dpo,
    rl), `defaults` its TrainArgs starting points; `register` fills `options` from its fields.
    """
    name = "base"
    help = ""
    data = "sft"
    defaults: dict = {}
    options: dict[str, Option] = {}

    @classmethod
    def build(cls, inputs: StageInputs, **options) -> "Stage":
        """The stage for a `train_stage` run; options are its fields, defaults filled in (`resolve_options`)."""
        return cls(**options)

    @classmethod
    def resolve_options(cls, given: dict) -> dict:
        """The options given by name (a flag, `stage_kwargs`) -> every option field's value."""
        unknown = sorted(set(given) - set(cls.options))
        if unknown:
            known = ", ".join(cls.options) or "none"
            raise ValueError(f"stage {cls.name!r} has no option {unknown}; its options: {known}")
        return {o.field: given.get(name, o.default) for name, o in cls.options.items()}

    collate_fn = None  # None: the loop's pad_collate

    def setup(self, model, device) -> None:
        """Prepare the model before the optimizer sees it (freeze, wrap, move helpers to the device)."""

    def param_groups(self, args) -> list[dict]:
        """Optimizer groups for modules beside the model that train with it (PPO's critic), each with its
        own "lr"; gradient clipping covers them too, and the stage saves them itself."""
        return []

    def step_batches(self, model, batches, n: int) -> list:
        """The n micro-batches of one optimizer step. Supervised stages take the loader's next n batches;
        RL stages generate the step's rollouts here (one per batch of prompts), before any backward pass."""
        return [next(batches) for _ in range(n)]

    def batch_tokens(self, batch) -> int:
        """Tokens a micro-batch trains on, for tokens/s."""
        return batch["input_ids"].numel()

    def loss(self, model, batch) -> tuple[torch.Tensor, dict]:
        out = model(batch["input_ids"], labels=batch["labels"])
        return out.loss, moe_metrics(out)

    def state_tensors(self, model) -> dict[str, torch.Tensor]:
        """What resumption needs of the model (all weights; LoRA keeps only its adapters)."""
        return state_tensors(model)

    def load_state_tensors(self, model, tensors) -> None:
        if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in tensors:
            tensors = {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}
        model.load_state_dict(tensors, strict=False)

    def save(self, model, out_dir: Path, tokenizer=None) -> None:
        model.save_pretrained(out_dir, tokenizer=tokenizer)


def moe_metrics(out) -> dict:
    """ce (the cross-entropy alone) and aux (the MoE balancing loss) when the loss holds both."""
    if out.aux_loss is None:
        return {}
    return {"ce": out.ce.detach(), "aux": out.aux_loss.detach()}


@register
@dataclass
class PretrainStage(Stage):
    name, help, data = "pretrain", "next-token prediction on packed text", "pretrain"
    defaults = dict(lr=2e-3, warmup_steps=20, batch_size=16)


@register
@dataclass
class SFTStage(Stage):
    """Same loss as pretraining; the dataset masks the labels to the assistant's turns."""
    name, help = "sft", "supervised fine-tuning on conversations (loss on the assistant's turns)"
    defaults = dict(lr=1e-3, warmup_steps=10, batch_size=16)
    shared_prefix: bool = option(False, "sft: run the prompt that a batch's conversations share (a system turn "
                                        "with tools) once per batch, not once per row: the same loss, fewer tokens")

    def loss(self, model, batch):
        if self.shared_prefix:
            shared = shared_prefix_loss(model, batch["input_ids"], batch["labels"])
            if shared is not None:
                return shared
        return super().loss(model, batch)


def common_prefix(input_ids: torch.Tensor, labels: torch.Tensor, min_len: int = 32) -> tuple[list[int], int]:
    """(the rows that open with the batch's most common first min_len tokens, the length P of the prefix they all
    share and learn nothing in: labels[:, :P + 1] are all ignored, so no row needs a prediction from inside it).
    ([], 0) when fewer than two rows share min_len such tokens."""
    b, t = input_ids.shape
    if b < 2 or t <= min_len:
        return [], 0
    heads = [tuple(row) for row in input_ids[:, :min_len].tolist()]
    most = max(set(heads), key=heads.count)
    rows = [i for i, h in enumerate(heads) if h == most]
    if len(rows) < 2:
        return [], 0
    ids = input_ids[rows]  # (G, T)
    same = int((ids == ids[:1]).all(0).long().cumprod(0).sum())  # tokens every row of the group shares
    learned = (labels[rows] != IGNORE_INDEX).any(0).nonzero()
    first = int(learned[0]) if len(learned) else t  # the first position any row learns
    p = min(same, first - 1, t - 1)
    return (rows, p) if p >= min_len else ([], 0)


def shared_length(seqs: list[list[int]]) -> int:
    """How many leading tokens every sequence shares, leaving each at least one token of its own."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        n = next((i for i in range(n) if s[i] != first[i]), n)
    return max(n, 0)


def length_buckets(ends: list[int], overhead: int = 256) -> list[list[int]]:
    """Rows cut into groups of similar length, each to run padded only to its own longest row: the rows sorted
    by length and split where the padded tokens saved outweigh `overhead` tokens per extra forward
    (an exact dynamic programme over the split points)."""
    order = sorted(range(len(ends)), key=lambda i: ends[i])
    n = len(order)
    best = [0] + [float("inf")] * n  # best[j]: least cost of the j shortest rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # rows order[i:j] as one group, padded to the longest of them
            cost = best[i] + overhead + (j - i) * ends[order[j - 1]]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def learned_ends(labels: torch.Tensor) -> list[int]:
    """Per row, one past its last learned label: the tokens after it change no prediction the loss reads."""
    learned = labels != IGNORE_INDEX  # (B, T)
    last = labels.shape[1] - 1 - learned.flip(1).int().argmax(1)  # (B,) the last learned position
    return torch.where(learned.any(1), last + 1, 1).tolist()  # a row that learns nothing keeps one token


def shared_prefix_loss(model, input_ids, labels, min_len: int = 32):
    """The plain next-token loss, with the prompt that most rows share run once: its keys and values are
    expanded to those rows, which then run only their own tokens; the other rows run whole. Every row is
    cut after its last learned token, and rows of similar length run together (`length_buckets`), so padding
    costs little. None when no prompt of min_len tokens is shared (the caller runs the plain loss)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return None  # DDP expects one forward per backward; this makes several (the plain loss runs instead)
    rows, p = common_prefix(input_ids, labels, min_len)
    if not rows:
        return None
    ends = learned_ends(labels)
    cache = KVCache(model.config.num_hidden_layers)
    model(input_ids[rows[:1], :p], past_key_values=cache, use_cache=True, logits_to_keep=1)  # the prompt once
    parts = []
    own = [max(ends[r], p + 1) - p for r in rows]  # each row's tokens after the prompt, at least one
    for group in length_buckets(own):
        sel, end = [rows[g] for g in group], p + max(own[g] for g in group)
        # (G, end - P): the rows' own tokens, attending to the prompt's keys and values
        parts.append((model(input_ids[sel, p:end], labels=labels[sel, p:end], past_key_values=cache.expand(len(sel))),
                      labels[sel, p:end]))
    others = [i for i in range(input_ids.shape[0]) if i not in rows]
    for group in length_buckets([ends[i] for i in others]):
        sel = [others[g] for g in group]
        end = max(ends[i] for i in sel)
        parts.append((model(input_ids[sel, :end], labels=labels[sel, :end]), labels[sel, :end]))
    counts = [int((shift_labels(lab) != IGNORE_INDEX).sum()) for _, lab in parts]
    # the mean over every learned token; a part that learns nothing has a NaN mean and is left out
    ce = sum(out.ce * n for (out, _), n in zip(parts, counts) if n) / max(sum(counts), 1)
    aux = [out.aux_loss for out, _ in parts if out.aux_loss is not None]
    metrics = {"ce": ce.detach(), "aux": sum(aux).detach() / len(aux)} if aux else {}
    return (ce + sum(aux) / len(aux) if aux else ce), metrics


@register
@dataclass
class ReasonStage(Stage):
    """SFT on <think>...</think> traces; positions whose label is a tag token can weigh more (MiniMind: 10)."""
    name, help = "reason", "SFT on <think> reasoning traces, tag tokens weighted"
    defaults = dict(lr=1e-3, warmup_steps=10, batch_size=16)
    tag_weight: float = option(1.0, "loss weight of the <think> and </think> tag tokens")
    tag_token_ids: tuple = ()  # the tags' ids in the tokenizer (`build` finds them)

    def __post_init__(self):
        self.tag_ids = torch.tensor(sorted(set(self.tag_token_ids)), dtype=torch.long)

    @classmethod
    def build(cls, inputs, tag_weight):
        tok = inputs.tokenizer
        tags = [i for t in ("<think>", "</think>") if (i := tok.token_to_id(t)) is not None]
        return cls(tag_weight=tag_weight, tag_token_ids=tags)

    def loss(self, model, batch):
        if self.tag_weight == 1.0 or not len(self.tag_ids):
            return super().loss(model, batch)
        out = model(batch["input_ids"])
        targets = shift_labels(batch["labels"]).reshape(-1)  # (B*T,)
        ce = F.cross_entropy(out.logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX,
                             reduction="none")
        weights = (targets != IGNORE_INDEX).float()
        is_tag = torch.isin(targets, self.tag_ids.to(targets.device))
        weights = torch.where(is_tag, weights * self.tag_weight, weights)
        loss = (ce * weights).sum() / weights.sum().clamp(min=1)
        return out.with_aux(loss), {"tag_fraction": is_tag.float().sum().detach() / weights.gt(0).sum().clamp(min=1)}


@register
@dataclass
class LoRAStage(Stage):
    """SFT loss through low-rank adapters on a frozen base; saves the adapters alone."""
    name, help = "lora", "SFT through low-rank adapters on a frozen base"
    defaults = dict(lr=3e-3, warmup_steps=10, batch_size=16)
    lora_rank: int = option(8, "rank r of each adapter")
    lora_alpha: float = option(16.0, "adapter scale alpha (the update is alpha/r * B A)")
    lora_targets: Optional[list] = option(None, "module names to adapt (default: attention and MLP)", str, "*")
    base: Optional[str] = None  # the base checkpoint, named in the saved adapter

    @classmethod
    def build(cls, inputs, **options):
        return cls(**options, base=str(inputs.init) if inputs.init else None)

    def setup(self, model, device):
        apply_lora(model, self.lora_rank, self.lora_alpha, tuple(self.lora_targets or DEFAULT_TARGETS))

    def state_tensors(self, model):
        return lora_state_dict(model)

    def save(self, model, out_dir, tokenizer=None):
        save_adapter(model, out_dir, base=self.base)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out_dir))


def distillation_loss(student_logits, teacher_logits, labels, alpha: float = 0.5, temperature: float = 1.0):
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher_T || student_T) over labelled positions; returns
    (loss, ce, kl). Logits (B, T, V) predict the next token; labels (B, T) as the model takes them.
    T softens both distributions; T^2 keeps the gradient scale across temperatures (Hinton et al., 2015)."""
    targets = shift_labels(labels).reshape(-1)  # (B*T,)
    keep = targets != IGNORE_INDEX
    s = student_logits.reshape(-1, student_logits.size(-1))[keep].float()  # (N, V)
    t = teacher_logits.reshape(-1, teacher_logits.size(-1))[keep].float()
    ce = F.cross_entropy(s, targets[keep])
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature ** 2
    return alpha * ce + (1 - alpha) * kl, ce, kl


@register
@dataclass
class DistillStage(Stage):
    """alpha * CE + (1 - alpha) * T^2 * KL(teacher || student) over labelled (assistant) tokens."""
    name, help = "distill", "white-box distillation from --teacher (same tokenizer)"
    defaults = dict(lr=1e-3, warmup_steps=10, batch_size=16)
    teacher: Any = None  # the teacher model (`build` loads it from --teacher)
    alpha: float = option(0.5, "distill: weight of the cross-entropy term (1 - alpha on the KL)")
    temperature: float = option(1.0, "distill: softmax temperature of teacher and student")

    @classmethod
    def build(cls, inputs, **options):
        if not inputs.teacher:
            raise ValueError("distill needs --teacher CKPT (a larger model trained on the same tokenizer)")
        return cls(MiniMindForCausalLM.from_pretrained(inputs.teacher), **options)

    def setup(self, model, device):
        if self.teacher.config.vocab_size != model.config.vocab_size:
            raise ValueError(f"teacher vocab {self.teacher.config.vocab_size} != student vocab "
                             f"{model.config.vocab_size}: distillation needs the same tokenizer")
        self.teacher.to(device).eval().requires_grad_(False)

    def loss(self, model, batch):
        with torch.no_grad():
            teacher_logits = self.teacher(batch["input_ids"]).logits
        out = model(batch["input_ids"])
        loss, ce, kl = distillation_loss(out.logits, teacher_logits, batch["labels"], self.alpha,
                                         self.temperature)
        return out.with_aux(loss), {"ce": ce.detach(), "kl": kl.detach()}
