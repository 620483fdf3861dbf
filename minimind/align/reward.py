"""RL rewards: reward_fn(prompts, responses, answers) -> (N,) tensor, optional reward_range = (low, high).

`RuleReward` checks answers and format; `ModelReward` runs the course's reward model (`ScalarHeadModel`, trained
by `RewardStage` on the DPO pairs); `TransformersReward` a local transformers classifier (never downloaded).
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import pad_sequences
from ..model import MiniMindConfig, MiniMindForCausalLM
from ..model.checkpoint import CONFIG_NAME, Checkpointable
from ..model.transformer import MiniMindModel, init_weights
from ..train.stages import Stage, register
from .dpo import preference_collate

REWARD_ARCHITECTURE = "MiniMindScalarHeadModel"


# --------------------------------------------------------------------------------------------------
# The MiniMind transformer with a scalar head: reward model and PPO critic
# --------------------------------------------------------------------------------------------------
class ScalarHeadModel(Checkpointable, nn.Module):
    """MiniMind's transformer with one number per position instead of the vocabulary head: a reward model
    (read at the last real token, which has seen everything) or PPO's critic (the return to come, per position)."""
    architecture = REWARD_ARCHITECTURE

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.model = MiniMindModel(config)
        self.score = nn.Linear(config.hidden_size, 1)
        init_weights(self, config.initializer_range)
        # a head of the width's scale: initial scores of order 1, not 0.02
        nn.init.normal_(self.score.weight, std=1 / math.sqrt(config.hidden_size + 1))
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_causal_lm(cls, lm: MiniMindForCausalLM) -> "ScalarHeadModel":
        """Start from a language model's transformer (the SFT model): it already reads the chat format."""
        head = cls(lm.config)
        head.model = copy.deepcopy(lm.model)
        head.model.requires_grad_(True)
        return head.to(lm.device)

    def forward(self, input_ids, attention_mask=None, last_token: bool = False) -> torch.Tensor:
        """Values (B, T) in float32; last_token=True: at each row's last real token only, (B,)."""
        values = self.score(self.model(input_ids, attention_mask)).squeeze(-1).float()  # (B, T, H) -> (B, T)
        if last_token:
            values = values.gather(1, last_token_index(input_ids, attention_mask)[:, None]).squeeze(1)  # (B,)
        return values

    def sequence_score(self, input_ids, attention_mask=None) -> torch.Tensor:
        """One score per sequence, (batch,): the value at its last real token (left or right padding)."""
        return self(input_ids, attention_mask, last_token=True)

    @property
    def device(self) -> torch.device:
        return self.score.weight.device


def is_scalar_head_checkpoint(path) -> bool:
    file = Path(path) / CONFIG_NAME
    return file.exists() and REWARD_ARCHITECTURE in json.loads(file.read_text()).get("architectures", [])


def last_token_index(input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Index of each row's last real token: the largest position whose mask is 1."""
    if attention_mask is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
    return (positions * attention_mask.long()).argmax(dim=1)  # (B, T) -> (B,), left or right padding


# --------------------------------------------------------------------------------------------------
# Rule-based rewards on strings: each checkable by eye
# --------------------------------------------------------------------------------------------------
THINK_BLOCK = re.compile(r"^\s*<think>\n(?P<reasoning>.*?)\n</think>\n+(?P<answer>.*\S.*)$", re.S)
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def final_answer(response: str) -> str:
    """What the response answers: the text after the reasoning (`</think>`), inside `<answer>` tags if any."""
    if "</think>" in response:
        response = response.rsplit("</think>", 1)[1]
    tagged = re.search(r"<answer>(.*?)</answer>", response, re.S)
    return (tagged.group(1) if tagged else response).strip()


def answer_reward(response: str, answer) -> float:
    """1.0 when the final answer is right, else 0.0 (also for no answer). A number must be the answer's *last*
    number (containment would reward "8 minus 4 is 5." for 4); a word must appear whole, case aside."""
    answer = "" if answer is None else str(answer).strip()
    if not answer:
        return 0.0
    text = final_answer(response)
    if NUMBER.fullmatch(answer):
        numbers = NUMBER.findall(text)
        return float(bool(numbers) and float(numbers[-1]) == float(answer))
    return float(re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text, re.I) is not None)


def think_format_reward(response: str) -> float:
    """1.0 for `<think>\\n...\\n</think>` followed by a non-empty answer, else 0.0 (the reasoning format)."""
    match = THINK_BLOCK.match(response)
    return float(match is not None and "<think>" not in match.group("answer") and "</think>" not in
                 match.group("answer"))


def think_tag_reward(response: str) -> float:
    """0.5 for each of `<think>` and `</think>` present exactly once: partial credit on the way to the
    format (MiniMind's "mark" reward; a strict format reward alone is too sparse to learn from)."""
    return 0.5 * (response.count("<think>") == 1) + 0.5 * (response.count("</think>") == 1)


def length_penalty(response: str, max_words: int = 48) -> float:
    """0 up to max_words words, then falling linearly to -1 at twice as many; -1 for an empty response."""
    n = len(response.split())
    if n == 0:
        return -1.0
    return -min(1.0, max(0, n - max_words) / max_words)


def repetition_penalty(response: str, n: int = 3) -> float:
    """Minus the fraction of word n-grams that repeat an earlier one: 0 for fresh text, near -1 for a loop."""
    words = response.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return -(1 - len(set(grams)) / len(grams))


class RuleReward:
    """A weighted sum of the rule rewards (weight 0 switches one off); the course default is the answer alone."""

    def __init__(self, answer: float = 1.0, format: float = 0.0, tags: float = 0.0, length: float = 0.0,
                 repetition: float = 0.0, max_words: int = 48, ngram: int = 3):
        self.weights = dict(answer=answer, format=format, tags=tags, length=length, repetition=repetition)
        self.max_words, self.ngram = max_words, ngram

    def parts(self, response: str, answer=None) -> dict[str, float]:
        """Each rule's unweighted value: useful to see why a response scored what it did."""
        return dict(answer=answer_reward(response, answer), format=think_format_reward(response),
                    tags=think_tag_reward(response), length=length_penalty(response, self.max_words),
                    repetition=repetition_penalty(response, self.ngram))

    def score(self, response: str, answer=None) -> float:
        parts = self.parts(response, answer)
        return sum(w * parts[k] for k, w in self.weights.items() if w)

    def __call__(self, prompts, responses: Sequence[str], answers=None) -> torch.Tensor:
        answers = answers if answers is not None else [None] * len(responses)
        return torch.tensor([self.score(r, a) for r, a in zip(responses, answers)], dtype=torch.float32)

    @property
    def reward_range(self) -> tuple[float, float]:
        # answer, format and tags lie in [0, 1]; the penalties in [-1, 0]
        spans = dict(answer=(0, 1), format=(0, 1), tags=(0, 1), length=(-1, 0), repetition=(-1, 0))
        return _weighted_range([(w, spans[k]) for k, w in self.weights.items() if w])


def _weighted_range(pairs) -> tuple[float, float]:
    low = sum(min(w * a, w * b) for w, (a, b) in pairs)
    high = sum(max(w * a, w * b) for w, (a, b) in pairs)
    return float(low), float(high)


class CombinedReward:
    """sum_i weight_i * reward_i(prompts, responses, answers): e.g. a reward model plus a format rule."""

    def __init__(self, *weighted: tuple[float, Callable]):
        self.weighted = list(weighted)

    def __call__(self, prompts, responses, answers=None) -> torch.Tensor:
        return sum(w * fn(prompts, responses, answers).float().cpu() for w, fn in self.weighted)

    @property
    def reward_range(self):
        return _weighted_range([(w, getattr(fn, "reward_range", (0.0, 1.0))) for w, fn in self.weighted])

    def to(self, device):
        for _, fn in self.weighted:
            if hasattr(fn, "to"):
                fn.to(device)
        return self


# --------------------------------------------------------------------------------------------------
# Reward models
# --------------------------------------------------------------------------------------------------
CHATML_TURN = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)<\|im_end\|>", re.S)


def chat_messages(prompt) -> list[dict]:
    """A prompt as a list of messages, whether given as messages or as ChatML text."""
    if isinstance(prompt, str):
        return [{"role": r, "content": c.strip()} for r, c in CHATML_TURN.findall(prompt)]
    return [dict(m) for m in prompt]


class ClippedModelReward:
    """What a learned reward model shares as a reward function: scores clipped to [-clip, clip]."""
    clip: float = 3.0

    @property
    def reward_range(self):
        return (-self.clip, self.clip)

    def to(self, device):
        self.model.to(device)
        return self


class ModelReward(ClippedModelReward):
    """The course's reward model (`RewardStage`'s `ScalarHeadModel`) as a reward function: each response scored in
    its chat-templated conversation, clipped to [-clip, clip] (as MiniMind clips InternLM2's to [-3, 3])."""

    def __init__(self, model: ScalarHeadModel, tokenizer, clip: float = 3.0, batch_size: int = 16,
                 max_length: int = 512):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.clip, self.batch_size, self.max_length = tokenizer, clip, batch_size, max_length

    @classmethod
    def from_pretrained(cls, path, tokenizer=None, device=None, **kw) -> "ModelReward":
        if tokenizer is None:
            from ..data.tokenizer import MiniMindTokenizer
            tokenizer = MiniMindTokenizer.from_pretrained(path)
        return cls(ScalarHeadModel.from_pretrained(path, device=device), tokenizer, **kw)

    @torch.no_grad()
    def __call__(self, prompts, responses, answers=None) -> torch.Tensor:
        texts = [self.tokenizer.apply_chat_template(chat_messages(p) + [{"role": "assistant", "content": r}])
                 for p, r in zip(prompts, responses)]
        scores = []
        for start in range(0, len(texts), self.batch_size):
            ids = [self.tokenizer.encode(t)[-self.max_length:] for t in texts[start:start + self.batch_size]]
            input_ids, mask = pad_sequences(ids, self.tokenizer.pad_token_id)  # (b, T) each
            # (b,): one score per conversation
            scores.append(self.model.sequence_score(input_ids.to(self.model.device), mask.to(self.model.device)))
        return torch.cat(scores).clamp(-self.clip, self.clip).float().cpu()


class TransformersReward(ClippedModelReward):
    """A reward model in a local transformers folder (AutoModelForSequenceClassification, one label), such as
    MiniMind's InternLM2-1.8B-Reward. Local files only: download it beforehand (huggingface-cli download)."""

    def __init__(self, path, device=None, dtype=None, clip: float = 3.0, batch_size: int = 8,
                 max_length: int = 1024, trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"reward model folder {path} not found: download the model first (e.g. huggingface-cli download "
                f"internlm/internlm2-1_8b-reward --local-dir {path}); nothing is downloaded at run time")
        kw = dict(local_files_only=True, trust_remote_code=trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), torch_dtype=dtype, **kw)
        self.model.eval().requires_grad_(False).to(device or "cpu")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:  # it finds each row's last token through the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.clip, self.batch_size, self.max_length = clip, batch_size, max_length

    def render(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    @torch.no_grad()
    def __call__(self, prompts, responses, answers=None) -> torch.Tensor:
        texts = [self.render(chat_messages(p) + [{"role": "assistant", "content": r}])
                 for p, r in zip(prompts, responses)]
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length, add_special_tokens=False)
            logits = self.model(**{k: v.to(device) for k, v in enc.items() if k != "token_type_ids"}).logits
            scores.append(logits[:, 0].float())  # (b, 1) -> (b,)
        return torch.cat(scores).clamp(-self.clip, self.clip).cpu()


def load_reward(spec="rule", tokenizer=None, device=None, **kw):
    """A reward function from a spec: "rule" (checkable answer), "rule+format" (plus the `<think>` format and
    tags), or a folder with a course reward model (`RewardStage`) or a transformers sequence classifier."""
    if callable(spec):
        return spec
    if spec == "rule":
        return RuleReward(**kw)
    if spec == "rule+format":
        return RuleReward(answer=1.0, format=0.5, tags=0.5, **kw)
    path = Path(spec)
    if is_scalar_head_checkpoint(path):
        return ModelReward.from_pretrained(path, tokenizer=tokenizer, device=device, **kw)
    if (path / CONFIG_NAME).exists():
        return TransformersReward(path, device=device, **kw)
    raise ValueError(f"reward {spec!r}: expected 'rule', 'rule+format', or a folder holding a reward model "
                     f"(config.json); {path} has no config.json")


# --------------------------------------------------------------------------------------------------
# Training the reward model: Bradley-Terry on the DPO pairs
# --------------------------------------------------------------------------------------------------
def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(s_chosen - s_rejected): the chosen answer should score higher (InstructGPT's loss)."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


@register
@dataclass
class RewardStage(Stage):
    """Train a `ScalarHeadModel` (the SFT model with a scalar head) to score chosen answers above rejected ones on
    the DPO pairs (`preference_collate`); saves a folder that `load_reward` reads."""
    name, help, data = "reward", "a reward model (scalar head) trained on preference pairs", "dpo"
    defaults = dict(lr=5e-4, warmup_steps=5, batch_size=8)
    collate_fn = staticmethod(preference_collate)

    @classmethod
    def build(cls, inputs):
        inputs.model = ScalarHeadModel.from_causal_lm(inputs.model)  # the SFT model with a scalar head
        return cls()

    def loss(self, model, batch):
        scores = model(batch["input_ids"], batch["attention_mask"], last_token=True)  # (2B,)
        chosen, rejected = scores.chunk(2)  # (B,) each
        loss = bradley_terry_loss(chosen, rejected)
        aux = getattr(model, "module", model).model.aux_loss()  # MoE balancing, in training
        loss = loss if aux is None else loss + aux
        return loss, {"accuracy": (chosen > rejected).float().mean().detach(),
                      "margin": (chosen - rejected).mean().detach(),
                      "score_chosen": chosen.mean().detach(), "score_rejected": rejected.mean().detach()}

    def state_tensors(self, model):
        return dict(model.state_dict())

    def load_state_tensors(self, model, tensors):
        model.load_state_dict(tensors)
