"""Agentic RL: the policy answers in several turns, calling tools and reading their results, and learns from
whether the task succeeded (MiniMind's train_agent.py, GRPO or CISPO).

A rollout is prompt, then model turn, tool results, model turn, ...: the loss covers only the tokens the model
wrote (the tool results are in the sequence, for the model to read, but masked out of the loss). Advantages are
GRPO's (group_size rollouts per prompt, normalised within the group); CISPO replaces the clipped-ratio surrogate
by the log-probability weighted with the ratio, clipped from above and held constant (so no token's gradient
is ever clipped to zero).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..data.tokenizer import TOOL_TEMPLATES, render_chat
from ..data.tools import parse_tool_calls
from ..model.tools import Episode, ToolBox, tool_turns, toolbox
from ..train.stages import option, register, shared_length
from .rl import GRPOStage, Rollout, _metrics, k3_kl, masked_mean, response_logprobs, unwrap

MINIMIND2_DEFAULT_SYSTEM = "You are a helpful assistant"  # what MiniMind2's template adds without a system turn


def cispo_loss(logp, old_logp, advantages, mask, eps_high: float = 5.0):
    """-sg(min(ratio, eps_high)) * A * log pi per token (CISPO, as MiniMind's train_agent.py): (N, R)."""
    ratio = torch.exp(logp - old_logp).clamp(max=eps_high).detach()  # (N, R)
    return -(ratio * advantages[:, None] * logp)


def call_format_reward(run: "AgentRun", weight: float) -> float:
    """+weight for an episode whose calls were all well-formed, -weight if any was broken, 0 without calls.
    Per episode, not per call: a reward per call pays for extra calls, and where every episode of a group fails
    the task, group normalisation turns that small difference into the whole advantage (measured: calls per
    episode rose from 1.1 to 1.6 in 20 steps while task success fell)."""
    if run.broken:
        return -weight
    return weight if run.calls else 0.0


def turn_suffix(template: str, results: list[str]) -> str:
    """The text after a model turn that called tools (its <|im_end|> already written): the tool results as the
    template renders them, then the next generation prompt. Found by rendering, so it is the template's own."""
    user = [{"role": "user", "content": "?"}]
    call = {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}] * len(results)}
    before = render_chat(user + [call], template=template)
    after = render_chat(user + [call] + [{"role": "tool", "content": r} for r in results],
                        add_generation_prompt=True, template=template)
    return "\n" + after[len(before):]  # "\n": what the template writes after <|im_end|>


def with_tools(prompt: str, template: str, schemas: list[dict]) -> str:
    """A rendered prompt with the tools block the template puts in the system turn (the RL data renders its
    prompts without tools): the head before the first user turn is rendered again, with the tools."""
    if not schemas or "\n<tools>\n" in prompt:  # no tools, or the data's own tools already rendered
        return prompt
    system = None
    if prompt.startswith("<|im_start|>system\n"):
        system = prompt[len("<|im_start|>system\n"):prompt.index("<|im_end|>")]
        if template == "minimind2" and system == MINIMIND2_DEFAULT_SYSTEM:
            system = None  # the template's own default, which it leaves out when there are tools
    head = [{"role": "system", "content": system}] if system is not None else []
    probe = head + [{"role": "user", "content": "\x00"}]
    plain = render_chat(probe, template=template).split("<|im_start|>user\n\x00")[0]
    tooled = render_chat(probe, template=template, tools=schemas).split("<|im_start|>user\n\x00")[0]
    if not prompt.startswith(plain):
        raise ValueError(f"the RL prompt was not rendered with this tokenizer's template ({template}): "
                         f"{prompt[:80]!r}")
    return tooled + prompt[len(plain):]


@dataclass
class AgentRun(Episode):
    """One multi-turn rollout, an `Episode` as tokens too: its prompt's ids, the ids after it, and which of those
    the model wrote (1) or read (0: tool results and the template around them)."""
    prompt: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    own: list = field(default_factory=list)


@torch.no_grad()
def agent_rollouts(policy, tokenizer, template: str, toolbox: ToolBox, prompts: list[list[int]], max_turns: int = 3,
                   max_new_tokens: int = 64, min_shared: int = 32, **sampling) -> list[AgentRun]:
    """Multi-turn rollouts, batched (`tool_turns`): every turn, the unfinished rollouts generate together
    (left-padded); the calls they wrote are run and their results appended, the others end with their answer.
    A prompt of at least min_shared tokens that every rollout opens with (the tools block) runs once per turn,
    not once per row. sampling goes to generate (do_sample, temperature, top_k, top_p); greedy without it."""
    from ..data.datasets import pad_sequences
    eos, room = tokenizer.eos_token_id, policy.config.max_position_embeddings
    runs = [AgentRun(prompt=p) for p in prompts]
    for running, last in tool_turns(runs, max_turns):
        for r in running:
            if len(r.prompt) + len(r.ids) >= room - 1:
                r.ended = "length"  # no room for another turn
        active = [r for r in running if not r.ended]
        if not active:
            break
        contexts = [r.prompt + r.ids for r in active]
        # the prompt every context opens with (the tools block) runs once; each row runs its own tail
        p = shared_length(contexts) if len(contexts) > 1 else 0
        p = p if p >= min_shared else 0
        ids, mask = pad_sequences([c[p:] for c in contexts], tokenizer.pad_token_id, side="left")  # (B, L - P)
        width = ids.shape[1]
        prefix = torch.tensor([contexts[0][:p]], device=policy.device) if p else None  # (1, P)
        out = policy.generate(ids.to(policy.device), max_new_tokens=min(max_new_tokens, room - p - width),
                              attention_mask=mask.to(policy.device), eos_token_id=eos, shared_prefix=prefix,
                              **sampling)
        for r, row in zip(active, out[:, width:].tolist()):
            if eos in row:
                row = row[:row.index(eos) + 1]
            r.ids += row
            r.own += [1] * len(row)
            text = tokenizer.decode(row, skip_special_tokens=True)
            content, calls, problems = parse_tool_calls(text)
            # a turn cut off before <|im_end|> ends the rollout too: the template cannot go on after it
            ran = r.model_turn(toolbox, content, calls, problems, text=text, final=last or row[-1:] != [eos])
            if ran:
                suffix = tokenizer.encode(turn_suffix(template, [result for _, result in ran]))
                r.ids += suffix
                r.own += [0] * len(suffix)  # read, not written: no loss here
    return runs


def agent_collate(items: list[dict], pad_id: int = 0) -> dict:
    """Agent prompts as a batch of lists: each rollout is generated on its own (the turns differ)."""
    return {"prompt": [it["prompt"] for it in items], "prompt_ids": [it["prompt_ids"] for it in items],
            "answer": [it.get("answer") for it in items]}


@register
@dataclass
class AgentStage(GRPOStage):
    """Multi-turn rollouts with tool calls (tools from a `ToolBox`), the loss on the model's own tokens only;
    GRPO or CISPO. Reward = the task's (the final answer checked) + format_weight when the episode's calls were all
    well-formed (minus it when one was broken). Its options are GRPO's and these."""
    name, help = "agent", "agentic RL: multi-turn rollouts that call tools; GRPO or CISPO"
    defaults = dict(lr=1e-4, batch_size=2, log_every=1)
    # the option --loss; a field named `loss` would hide the loss method
    loss_kind: str = option("cispo", "agent: cispo (MiniMind's default) or grpo", name="loss")
    eps_high: float = option(5.0, "agent: CISPO's upper clip of the importance weight")
    max_turns: int = option(3, "agent: model turns per rollout")
    format_weight: float = option(0.1, "agent: reward for an episode whose tool calls were all well-formed "
                                       "(minus it for a broken one)")
    tools: str | ToolBox = option("calculator", "agent: the toolbox the model may call: calculator, course (the "
                                                "course world's register, data/course/registry.json), course:PATH, "
                                                "none")
    collate_fn = staticmethod(agent_collate)

    def __post_init__(self):
        super().__post_init__()
        if self.loss_kind not in ("cispo", "grpo"):
            raise ValueError(f"loss {self.loss_kind!r}: use cispo or grpo")
        template = getattr(self.tokenizer, "template", "minimind")
        if template not in TOOL_TEMPLATES:
            raise ValueError(f"the agent stage needs a chat template with tools ({' or '.join(TOOL_TEMPLATES)}); "
                             f"this tokenizer has {template!r}: train one with `minimind tokenizer train "
                             "--template minimind3`")
        self.template = template
        self.toolbox = self.tools if isinstance(self.tools, ToolBox) else toolbox(self.tools)
        self._prompts: dict[str, list[int]] = {}  # prompt text -> its ids with the tools block

    def prompt_ids(self, prompt: str) -> list[int]:
        if prompt not in self._prompts:
            self._prompts[prompt] = self.tokenizer.encode(with_tools(prompt, self.template, self.toolbox.schemas()))
        return self._prompts[prompt]

    # -- the agent's update: rollout() once per rollout, then loss() on each of its updates_per_rollout steps -----
    @torch.no_grad()
    def rollout(self, model, batch) -> Rollout:
        r = self.sample(model, batch)  # G episodes per prompt: the model's turns, the tools' results between them
        task = self.task_rewards(r)  # R(x, y): the final answer checked, (N,)
        r.rewards = task + self.format_rewards(r)  # r_i = R + format_weight * (all calls well-formed: 1, broken: -1)
        r.data["task_reward"] = task
        # log pi_ref over the episode's tokens; r.mask keeps the model's own (the tools' results are read, not learned)
        r.data["ref_logp"] = response_logprobs(self.reference, r)[0]  # (N, R)
        self.group_advantages(r)  # A_i = (r_i - mean_group r) / (std_group r + eps), as GRPO
        return r

    def loss(self, model, rollout):
        if self.loss_kind == "grpo":
            loss, metrics = super().loss(model, rollout)  # GRPO's clipped surrogate + beta KL_k3
        else:
            d, mask = rollout.data, rollout.mask
            logp, out = response_logprobs(model, rollout)  # log pi_theta(y_t | ...), (N, R)
            old_logp = d.setdefault("old_logp", logp.detach())  # pi_old: the first update's policy is the sampler
            # CISPO: -sg(min(pi_theta / pi_old, eps_high)) A log pi_theta, + beta KL_k3(pi || ref)
            per_token = cispo_loss(logp, old_logp, d["advantages"], mask, self.eps_high) \
                + self.beta * k3_kl(logp, d["ref_logp"])  # (N, R)
            loss = out.with_aux(masked_mean(per_token, mask, dim=1).mean())  # mean per episode, then over episodes
            metrics = _metrics(loss.device, **self.common_metrics(rollout, logp),
                               group_reward_std=d["group_std"].mean(), zero_var_frac=d["zero_variance"].mean())
        d = rollout.data
        metrics.update(_metrics(loss.device, task_reward=d["task_reward"].mean(), tool_calls=d["tool_calls"].mean(),
                                broken_calls=d["broken_calls"].mean(), turns=d["turns"].mean()))
        return loss, metrics

    def format_rewards(self, r: Rollout) -> torch.Tensor:
        """call_format_reward of each episode, (N,)."""
        return torch.tensor([call_format_reward(e, self.format_weight) for e in r.data["episodes"]],
                            device=r.sequences.device)

    @torch.no_grad()
    def sample(self, model, batch) -> Rollout:
        """samples_per_prompt multi-turn episodes per prompt (`agent_rollouts`) as one rollout: prompts left-padded,
        episodes right-padded, the mask 1 on the tokens the model wrote."""
        policy, g = unwrap(model), self.samples_per_prompt
        start = time.perf_counter()
        prompts = [p for p in batch["prompt"] for _ in range(g)]
        answers = [a for a in batch["answer"] for _ in range(g)]
        prompt_seqs = [self.prompt_ids(p) for p in prompts]
        runs = agent_rollouts(policy, self.tokenizer, self.template, self.toolbox, prompt_seqs, self.max_turns,
                              self.max_new_tokens, do_sample=True, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p)
        seconds = time.perf_counter() - start
        p_len, r_len = max(map(len, prompt_seqs)), max(max(len(r.ids) for r in runs), 1)
        n, pad = len(runs), self.tokenizer.pad_token_id
        sequences = torch.full((n, p_len + r_len), pad, dtype=torch.long)
        attention = torch.zeros((n, p_len + r_len), dtype=torch.long)
        mask = torch.zeros((n, r_len))
        for i, (p, r) in enumerate(zip(prompt_seqs, runs)):
            sequences[i, p_len - len(p):p_len] = torch.tensor(p)  # prompts left-padded, responses right-padded
            sequences[i, p_len:p_len + len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
            attention[i, p_len - len(p):p_len + len(r.ids)] = 1
            mask[i, :len(r.own)] = torch.tensor(r.own, dtype=torch.float)
        device = policy.device
        rollout = Rollout(sequences=sequences.to(device), attention_mask=attention.to(device), mask=mask.to(device),
                          rewards=None, prompts=prompts, responses=[r.answer for r in runs], answers=answers,
                          gen_tokens_per_s=float(mask.sum()) / max(seconds, 1e-9))
        rollout.data.update(episodes=runs, tool_calls=torch.tensor([float(r.calls) for r in runs]),
                            broken_calls=torch.tensor([float(r.broken) for r in runs]),
                            turns=torch.tensor([float(r.turns) for r in runs]))
        return rollout

