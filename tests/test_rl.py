"""PPO, GRPO and SPO: the math against hand-computed numbers, then each stage on the training loop; chapter 11's
greedy accuracy on prompts with checkable answers and its side-by-side plot of runs."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
from alignment_helpers import ToyTokenizer, bpe_tokenizer, prompt_items, toy_model

from minimind.align.reward import ModelReward, RuleReward, ScalarHeadModel
from minimind.align.rl import (
    BetaTracker,
    GRPOStage,
    PPOStage,
    Rollout,
    SPOBaseline,
    SPOStage,
    completion_mask,
    gae,
    grpo_advantages,
    k3_kl,
    kl_adaptive_rho,
    ppo_policy_loss,
    ppo_value_loss,
    prompt_collate,
    prompt_key,
    response_logprobs,
    spo_baseline_trace,
)
from minimind.data import RLPromptDataset
from minimind.train import STAGES
from minimind.train.loop import TrainArgs, read_metrics, train, train_records
from minimind.use.eval import rl_accuracy


# -- advantages -------------------------------------------------------------------------------------------
def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [0.5, 0.6, 9.9]])   # 9.9 lies past row 2's end: must not leak
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 1: d2 = 1 - .7 = .3; d1 = .9*.7 - .6 = .03, A1 = .03 + .45*.3 = .165; d0 = .9*.6 - .5 = .04,
    #        A0 = .04 + .45*.165 = .11425
    # row 2: d1 = 1 - .6 = .4 (the episode ends: no next value), A0 = .04 + .45*.4 = .22, A2 masked
    torch.testing.assert_close(adv, torch.tensor([[0.11425, 0.165, 0.3], [0.22, 0.4, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.61425, 0.765, 1.0], [0.72, 1.0, 0.0]]))


def test_gae_with_lambda_one_is_return_minus_value():
    torch.manual_seed(0)
    rewards, values = torch.randn(2, 5), torch.randn(2, 5)
    adv, _ = gae(rewards, values, torch.ones(2, 5), gamma=1.0, lam=1.0)
    returns_to_go = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(adv, returns_to_go - values)


def test_grpo_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0])
    adv, zero = grpo_advantages(rewards, group_size=4, eps=0.0)
    # group 1: mean .5, sample std sqrt(4 * .25 / 3) = 0.57735; group 3: mean .75, std sqrt(6.75 / 3) = 1.5
    s = 0.5 / math.sqrt(1 / 3)
    torch.testing.assert_close(adv, torch.tensor([s, -s, -s, s, 0, 0, 0, 0, -0.5, -0.5, -0.5, 1.5]))
    assert zero.tolist() == [False, True, False]  # all four equal: no signal, advantages exactly 0
    assert (grpo_advantages(torch.full((4,), 0.7), 4)[0] == 0).all()
    with pytest.raises(ValueError, match="group_size >= 2"):
        grpo_advantages(rewards, 1)


def test_ppo_clipped_losses_by_hand():
    logp, old = torch.log(torch.tensor([[1.5, 1.0]])), torch.zeros(1, 2)   # ratios 1.5 and 1
    mask = torch.ones(1, 2)
    loss, clipped = ppo_policy_loss(logp, old, torch.tensor([[1.0, 1.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.2 - 1.0) / 2) and clipped.item() == 0.5  # the gain stops at 1.2
    loss, _ = ppo_policy_loss(logp, old, torch.tensor([[-1.0, -1.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx((1.5 + 1.0) / 2)                            # a loss is never clipped
    # value 0.5 -> 1.0 from old 0.5, target 2: unclipped (1 - 2)^2 = 1, clipped (0.7 - 2)^2 = 1.69: the max
    v = ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2)
    assert v.item() == pytest.approx(0.5 * 1.69)


def test_k3_kl_by_hand_and_unbiased():
    assert k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))).item() == pytest.approx(
        0.5 + math.log(2) - 1, abs=1e-6)
    assert k3_kl(torch.tensor(-1.3), torch.tensor(-1.3)).item() == 0.0
    pi, ref = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    exact = (pi * (pi / ref).log()).sum()
    samples = torch.multinomial(pi, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = k3_kl(pi.log()[samples], ref.log()[samples])
    assert (estimate >= 0).all() and estimate.mean().item() == pytest.approx(exact.item(), rel=0.02)


def test_completion_mask_stops_after_the_first_eos():
    completion = torch.tensor([[5, 6, 2, 2], [5, 2, 7, 2], [5, 6, 7, 8]])
    assert completion_mask(completion, 2).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


# -- SPO's baseline ---------------------------------------------------------------------------------------
def test_kl_adaptive_rho():
    assert kl_adaptive_rho(0.06, d_half=0.06) == 0.5          # one half-life: half
    assert kl_adaptive_rho(0.03, d_half=0.06) == pytest.approx(2 ** -0.5)
    assert kl_adaptive_rho(0.0) == 0.96 and kl_adaptive_rho(1.0) == 0.5   # clipped both ways


def test_spo_baseline_updates_by_hand():
    # N_init = 1 / (1 - 0.5) = 2: alpha = beta = 1, baseline 0.5
    glob, per = SPOBaseline("global"), SPOBaseline("per_prompt")
    a, b = prompt_key("prompt A"), prompt_key("prompt B")
    seen = {"global": [], "per_prompt": []}
    for key, reward, logp in [(a, 1.0, -1.0), (b, 0.0, -1.06), (a, 1.0, -1.06)]:
        for t in (glob, per):
            seen[t.mode].append(t.baselines([key])[0])
            t.update([key], [reward], [logp])
    # global: step 1 rho = 0.96 (no earlier log-prob): alpha = 1.96, beta = 0.96 -> 0.671233
    #         step 2 |d logp| = 0.06 = D_half -> rho 0.5: alpha = 0.98, beta = 1.48 -> 0.398374
    assert seen["global"] == pytest.approx([0.5, 1.96 / 2.92, 0.98 / 2.46])
    assert (glob.global_tracker.alpha, glob.global_tracker.beta) == pytest.approx((0.96 * 0.98 + 1, 0.96 * 1.48))
    # per prompt: A and B are new at first (the global baseline), then A meets its own tracker, which
    # started from its reward 1 with weight 2: alpha 2, beta 0 -> baseline 1
    assert seen["per_prompt"] == pytest.approx([0.5, 1.96 / 2.92, 1.0])
    assert (per.trackers[b].alpha, per.trackers[b].beta) == (0.0, 2.0)


def test_per_prompt_baseline_follows_each_prompt_global_averages():
    stream = [("easy", 1.0), ("hard", 0.0)] * 30
    glob = spo_baseline_trace(stream, "global")
    per = spo_baseline_trace(stream, "per_prompt")
    assert abs(glob[-2] - 0.5) < 0.05 and abs(glob[-1] - 0.5) < 0.05   # both prompts meet ~0.5: A = +-0.5
    assert per[-2] > 0.95 and per[-1] < 0.05                              # each meets its own rate: A ~ 0


def test_spo_baseline_state_round_trips():
    t = SPOBaseline("per_prompt")
    t.update(["x", "y"], [1.0, 0.25], [-1.0, -2.0])
    t.update(["x"], [0.0], [-1.5])
    again = SPOBaseline("per_prompt")
    again.load_state_tensors(t.state_tensors())
    assert again.baselines(["x", "y", "new"]) == t.baselines(["x", "y", "new"])
    assert again.logps == t.logps and again.global_logp == t.global_logp
    assert BetaTracker.prior(0.25, 4).baseline == 0.25


# -- rollouts ---------------------------------------------------------------------------------------------
def test_prompt_collate_left_pads_and_strips_dataset_padding():
    items = [{"prompt": "a", "prompt_ids": torch.tensor([0, 0, 5, 6]), "answer": "1"},
             {"prompt": "b", "prompt_ids": [7, 8, 9], "answer": None}]
    batch = prompt_collate(items)
    assert batch["input_ids"].tolist() == [[0, 5, 6], [7, 8, 9]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert batch["prompt"] == ["a", "b"] and batch["answer"] == ["1", None]


def test_response_logprobs_ignore_left_padding():
    tok = ToyTokenizer()
    model = toy_model(tok).eval()
    stage = GRPOStage(RuleReward(), tok, group_size=2, max_new_tokens=5)
    batch = prompt_collate(prompt_items(tok, 8)[::5])   # prompts of different lengths
    assert (batch["attention_mask"] == 0).any()
    torch.manual_seed(0)
    rollout = stage.sample(model, batch)
    assert rollout.sequences.shape[0] == 4 and len(rollout.responses) == 4
    with torch.no_grad():
        batched, _ = response_logprobs(model, rollout)
        for row in range(4):  # each row alone, without padding
            keep = rollout.attention_mask[row].bool()
            n = int(rollout.mask[row].sum())
            alone = Rollout(rollout.sequences[row:row + 1, keep], torch.ones(1, int(keep.sum()), dtype=torch.long),
                            torch.ones(1, n), None, [], [], [], 0.0)
            torch.testing.assert_close(response_logprobs(model, alone)[0][0], batched[row, :n], rtol=1e-4, atol=1e-4)


def shared_prompt_rollout(seed=0):
    """Three rows whose prompts open with the same 40 tokens (then own tails of 3, 7 and 1), left-padded, and
    responses of 5, 9 and 2 tokens, right-padded: as the agent stage writes them."""
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(3, 97, (40,), generator=g).tolist()
    prompts = [system + torch.randint(3, 97, (k,), generator=g).tolist() for k in (3, 7, 1)]
    responses = [torch.randint(3, 97, (k,), generator=g).tolist() for k in (5, 9, 2)]
    p, r = max(map(len, prompts)), max(map(len, responses))
    seq, attn = torch.zeros(3, p + r, dtype=torch.long), torch.zeros(3, p + r, dtype=torch.long)
    mask = torch.zeros(3, r)
    for i, (pr, re) in enumerate(zip(prompts, responses)):
        seq[i, p - len(pr):p], seq[i, p:p + len(re)] = torch.tensor(pr), torch.tensor(re)
        attn[i, p - len(pr):p + len(re)], mask[i, :len(re)] = 1, 1
    return Rollout(seq, attn, mask, torch.zeros(3), [], [], [], 0.0)


@pytest.mark.parametrize("moe", [False, True])
def test_a_shared_prompt_runs_once_with_the_same_logprobs_and_gradients(moe):
    from conftest import random_model, small_config

    from minimind.align.rl import masked_mean
    extra = dict(use_moe=True, n_routed_experts=4, num_experts_per_tok=2) if moe else {}
    model = random_model(small_config(**extra)).train()
    rollout = shared_prompt_rollout()
    results = {}
    for shared in (True, False):
        model.zero_grad()
        logp, out = response_logprobs(model, rollout, min_shared=32 if shared else 10 ** 9)
        out.with_aux(masked_mean(logp, rollout.mask)).backward()
        grads = {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}
        results[shared] = logp.detach(), grads, out.aux_loss
    (lp_s, g_s, aux_s), (lp_p, g_p, _) = results[True], results[False]
    real = rollout.mask.bool()
    torch.testing.assert_close(lp_s[real], lp_p[real], rtol=1e-5, atol=1e-5)
    assert (lp_s[~real] == 0).all()
    assert (aux_s is None) == (not moe)
    if not moe:  # MoE: the balance loss sees the prompt once, not per row, so its gradient differs (as in SFT)
        for name in g_p:
            torch.testing.assert_close(g_s[name], g_p[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_shared_prompt_under_bf16_autocast_and_compiled():
    from conftest import random_model, small_config
    model = random_model(small_config())
    rollout = shared_prompt_rollout(1)
    real = rollout.mask.bool()
    with torch.no_grad():
        plain = response_logprobs(model, rollout, min_shared=10 ** 9)[0][real]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = response_logprobs(model, rollout)[0][real]
        compiled = response_logprobs(torch.compile(model), rollout)[0][real]
    torch.testing.assert_close(half.float(), plain, rtol=0.05, atol=0.1)
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-4)


# -- the stages on the training loop ----------------------------------------------------------------------
FAST = dict(batch_size=2, lr=3e-3, device="cpu")


def test_ppo_reuses_each_rollout_for_its_epochs_and_trains_the_critic(tmp_path):
    tok = ToyTokenizer()
    model = toy_model(tok)
    stage = PPOStage(RuleReward(answer=1.0, length=0.5, max_words=2), tok, ppo_epochs=2, max_new_tokens=4)
    rollouts = []
    real = stage.rollout
    stage.rollout = lambda m, b: rollouts.append(real(m, b)) or rollouts[-1]
    stage.setup(model, torch.device("cpu"))
    critic_start = {k: v.clone() for k, v in stage.critic.state_dict().items()}
    ref_start = {k: v.clone() for k, v in stage.reference.state_dict().items()}
    records = train_records(model, stage, prompt_items(tok, 8), out_dir=tmp_path, max_steps=4, **FAST)
    assert len(rollouts) == 2                          # 4 steps, 2 epochs per rollout
    assert records[1]["reward_mean"] == records[0]["reward_mean"]    # the same rollout, reused
    assert all(math.isfinite(records[-1][k]) for k in ("policy_loss", "value_loss", "kl", "clip_frac",
                                                         "gen_tokens_per_s", "reward_std", "value_mean"))
    assert any(not torch.equal(v, critic_start[k]) for k, v in stage.critic.state_dict().items())
    assert all(torch.equal(v, ref_start[k]) for k, v in stage.reference.state_dict().items())
    critic = ScalarHeadModel.from_pretrained(tmp_path / "critic")
    assert torch.equal(critic.score.weight, stage.critic.score.weight)
    assert any(k.startswith("critic.") for k in stage.state_tensors(model))


def test_grpo_on_the_course_prompt_dataset(tmp_path):
    tok = bpe_tokenizer()
    rows = [{"conversations": [{"role": "user", "content": f"what is {i} plus 2?"}], "answer": str(i + 2)}
            for i in range(6)]
    file = tmp_path / "rl.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = RLPromptDataset(file, tok)
    model = toy_model(tok)
    stage = GRPOStage("rule", tok, group_size=3, max_new_tokens=4)
    records = train_records(model, stage, dataset, max_steps=2, **FAST)
    rollout = stage.last_rollout
    assert len(rollout.responses) == 6 and rollout.prompts[0] == rollout.prompts[2] != rollout.prompts[3]
    assert rollout.answers[:3] == [rollout.answers[0]] * 3
    assert 0.0 <= records[-1]["zero_var_frac"] <= 1.0 and math.isfinite(records[-1]["group_reward_std"])
    # a random model answers nothing right: every group is all-zero, so there is no gradient signal
    assert records[-1]["reward_mean"] == 0.0 and records[-1]["zero_var_frac"] == 1.0


def test_spo_keeps_per_prompt_trackers_and_resumes_them(tmp_path):
    tok = ToyTokenizer()
    items = prompt_items(tok, 4)
    reward = RuleReward(answer=1.0, length=1.0, max_words=1)
    stage = SPOStage(reward, tok, baseline="per_prompt", max_new_tokens=4)
    args = TrainArgs(max_steps=3, log_every=1, progress=False, **FAST)
    train(toy_model(tok), stage, items, args, tmp_path, collate_fn=stage.collate_fn)
    records = read_metrics(tmp_path)
    assert len(stage.tracker.trackers) == 4            # 3 steps of 2 over 4 prompts: each seen, two twice
    assert records[0]["own_baseline_frac"] == 0.0 and records[-1]["own_baseline_frac"] == 1.0
    assert (stage.low, stage.high) == (-1.0, 1.0)      # rescaled with the reward's own range
    resumed = SPOStage(reward, tok, baseline="per_prompt", max_new_tokens=4)
    train(toy_model(tok, seed=1), resumed, items, args, tmp_path,
          collate_fn=stage.collate_fn, resume=True)
    assert resumed.tracker.baselines(list(stage.tracker.trackers)) == stage.tracker.baselines(
        list(stage.tracker.trackers))


def test_a_trained_reward_model_drives_rl():
    tok = ToyTokenizer()
    reward = ModelReward(ScalarHeadModel.from_causal_lm(toy_model(tok, seed=2)), tok)
    stage = STAGES["spo"](reward, tok, max_new_tokens=5)
    assert isinstance(stage, SPOStage) and stage.reward_fn is reward and (stage.low, stage.high) == (-3.0, 3.0)
    records = train_records(toy_model(tok), stage, prompt_items(tok, 4), max_steps=1, **FAST)
    rollout = stage.last_rollout
    torch.testing.assert_close(rollout.rewards, reward(rollout.prompts, rollout.responses))
    assert records[0]["reward_std"] > 0


def test_rollouts_are_a_visible_step_split_by_grad_accum(tmp_path):
    """Each optimizer step generates grad_accum rollouts from fresh prompt batches, all with the policy
    as it stood at the start of the step; tokens/s counts the generated tokens."""
    tok = ToyTokenizer()
    model = toy_model(tok)
    stage = GRPOStage(RuleReward(answer=1.0, length=0.5, max_words=2), tok, group_size=2, max_new_tokens=4)
    made = []
    real = stage.rollout

    def spy(m, batch):
        made.append((sum(p.detach().sum().item() for p in m.parameters()), batch["prompt"], real(m, batch)))
        return made[-1][2]
    stage.rollout = spy
    summary = train(model, stage, prompt_items(tok, 8), TrainArgs(max_steps=2, grad_accum=2, log_every=1,
                                                                    progress=False, **FAST), tmp_path)
    assert len(made) == 4                                  # 2 steps x 2 micro-batches
    assert made[0][0] == made[1][0] != made[2][0] == made[3][0]  # one policy per step, a new one after it
    assert len({tuple(p) for _, prompts, _ in made for p in [prompts]}) == 4  # each from its own prompts
    assert summary["tokens"] == sum(int(r.mask.sum()) for *_, r in made)  # generated tokens, not prompts


def test_the_critic_has_its_own_learning_rate(tmp_path):
    tok = ToyTokenizer()
    frozen = PPOStage(RuleReward(answer=1.0, length=0.5, max_words=2), tok, critic_lr=0.0, max_new_tokens=4)
    model = toy_model(tok)
    policy_start = {k: v.clone() for k, v in model.state_dict().items()}
    frozen.setup(model, torch.device("cpu"))
    critic_start = {k: v.clone() for k, v in frozen.critic.state_dict().items()}
    train_records(model, frozen, prompt_items(tok, 8), max_steps=2, **FAST)
    assert all(torch.equal(v, critic_start[k]) for k, v in frozen.critic.state_dict().items())
    assert any(not torch.equal(v, policy_start[k]) for k, v in model.state_dict().items())
    args = TrainArgs(lr=1e-3)
    stage = PPOStage("rule", tok, critic_lr=5e-5)
    stage.setup(toy_model(tok), torch.device("cpu"))
    assert [g["lr"] for g in stage.param_groups(args)] == [5e-5]


# -- learning: the reward goes up ------------------------------------------------------------------------
def early_letters(prompts, responses, answers=None):
    """A reward a tiny random model can learn fast: the share of characters among a..j."""
    return torch.tensor([sum(c in "abcdefghij" for c in r) / max(len(r), 1) for r in responses])


early_letters.reward_range = (0.0, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name, kw", [
    ("grpo", dict(group_size=4)), ("spo", dict(baseline="global")), ("spo", dict(baseline="per_prompt")),
    # at this toy learning rate the policy leaves the reference within a few steps, and PPO's per-token KL
    # penalty (in the reward) outweighs the weak reward: switched off here, where only learning is tested
    ("ppo", dict(ppo_epochs=1, lam=1.0, kl_coef=0.0))])
def test_rl_raises_the_reward(name, kw):
    tok = ToyTokenizer()
    stage = STAGES[name](early_letters, tok, max_new_tokens=8, **kw)
    records = train_records(toy_model(tok), stage, prompt_items(tok, 8), max_steps=20, batch_size=4, lr=1e-2,
                          device="cpu")
    rewards = [r["reward_mean"] for r in records]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.15, rewards


def test_grpo_moves_probability_to_the_rewarded_answer():
    """A two-answer task: replies are one token sampled from each prompt's two likeliest, and the reward is 1 for
    the one the untrained model likes less. Six GRPO steps must make it the likelier of the two on every prompt."""
    tok = ToyTokenizer()
    model = toy_model(tok, seed=1)
    items = prompt_items(tok, 4)

    def first_token_probs(m):  # (n, V): the next-token distribution after each prompt
        with torch.no_grad():
            return torch.stack([m(torch.tensor([it["prompt_ids"]])).logits[0, -1].float().softmax(-1)
                                for it in items])
    start = first_token_probs(model)
    top2 = start.topk(2, dim=-1).indices  # (n, 2)
    assert (top2 >= 3).all()  # both candidates are characters, not special tokens, for this seed
    rewarded = {it["prompt"]: tok.decode([int(top2[i, 1])]) for i, it in enumerate(items)}

    def reward(prompts, responses, answers=None):
        return torch.tensor([float(r == rewarded[p]) for p, r in zip(prompts, responses)])
    reward.reward_range = (0.0, 1.0)
    stage = GRPOStage(reward, tok, group_size=8, max_new_tokens=1, top_k=2, beta=0.0)
    records = train_records(model, stage, items, max_steps=6, batch_size=2, lr=3e-3, device="cpu")
    assert records[0]["zero_var_frac"] < 1  # a group mixed both answers: a gradient from the first step
    end = first_token_probs(model)
    rows = torch.arange(len(items))
    share = lambda p: p[rows, top2[:, 1]] / (p[rows, top2[:, 0]] + p[rows, top2[:, 1]])  # noqa: E731
    assert (share(start) < 0.5).all() and (share(end) > 0.6).all(), (share(start), share(end))  # about .33 -> .8
    assert records[-1]["reward_mean"] > records[0]["reward_mean"]


# -- measuring and plotting chapter 11's runs ----------------------------------------------------------------
class AnswersSeven:
    """A stand-in model whose greedy reply is "it is 7." to every prompt (one token per call, KV cache or not)."""
    device = torch.device("cpu")
    config = SimpleNamespace(max_position_embeddings=256)
    training = False

    def __init__(self, tok):
        self.reply, self.vocab = tok.encode("it is 7.") + [tok.eos_token_id], tok.vocab_size
        self.calls = 0

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def __call__(self, input_ids, past_key_values=None, **kw):
        self.calls = 0 if past_key_values is None else self.calls + 1  # a new batch starts without a cache
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab)
        logits[:, -1, self.reply[min(self.calls, len(self.reply) - 1)]] = 1.0
        return SimpleNamespace(logits=logits, past_key_values="cache")


def test_rl_accuracy_grades_checkable_answers_and_skips_the_rest(tmp_path):
    tok = ToyTokenizer()
    rows = [{"conversations": [{"role": "user", "content": "what is 3 plus 4?"}], "answer": "7"},
            {"conversations": [{"role": "user", "content": "what is 2 plus 2?"}], "answer": "4"},
            {"conversations": [{"role": "user", "content": "what is 9 minus 2?"}], "answer": 7},
            {"conversations": [{"role": "user", "content": "write a poem"}]},                 # no answer: skipped
            {"conversations": [{"role": "user", "content": "hello"}], "answer": ""}]            # empty: skipped
    file = tmp_path / "rl.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = rl_accuracy(AnswersSeven(tok), tok, file, batch_size=2)
    assert result["n"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert [r["correct"] for r in result["rows"]] == [True, False, True]
    assert result["rows"][0]["output"] == "it is 7."
    assert rl_accuracy(AnswersSeven(tok), tok, file, limit=1)["n"] == 1
    open_ended = tmp_path / "rlaif.jsonl"
    open_ended.write_text(json.dumps(rows[3]) + "\n")
    none = rl_accuracy(AnswersSeven(tok), tok, open_ended)
    assert none["n"] == 0 and math.isnan(none["accuracy"])


def test_running_mean_and_side_by_side_plot():
    import matplotlib
    matplotlib.use("Agg")
    from minimind.course.plots import plot_runs_side_by_side, running_mean
    assert running_mean([1, 3, 5, 7], 2) == [1, 2, 4, 6]
    assert running_mean([1, 3, 5], 1) == [1, 3, 5] and running_mean([], 3) == []
    runs = {"a": [{"step": s, "reward_mean": s / 10, "kl": 0.01 * s} for s in range(1, 6)],
            "b": [{"step": s, "reward_mean": 0.5} for s in range(1, 6)]}     # b has no kl: its line is skipped
    fig = plot_runs_side_by_side(runs, smooth=3)
    top, kl = fig.axes
    assert len(top.get_lines()) == 4 and len(kl.get_lines()) == 2      # raw + smoothed per run that has the key
    assert list(top.get_lines()[1].get_ydata()) == pytest.approx(running_mean([0.1, 0.2, 0.3, 0.4, 0.5], 3))
