"""SPO's persistent baseline (Single-stream Policy Optimization): a Beta tracker of the success rate, one for all
prompts (MiniMind2) or one per prompt (the SPO paper), whose old evidence decays faster the more the policy moved."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Optional

import torch


def kl_adaptive_rho(kl: float, d_half: float = 0.06, rho_min: float = 0.5, rho_max: float = 0.96) -> float:
    """SPO's decay: rho = 2^(-KL / D_half), clipped to [rho_min, rho_max]. The more the policy has changed
    since the tracker last looked, the faster the old evidence is forgotten (it halves every D_half)."""
    return float(min(max(2.0 ** (-kl / d_half), rho_min), rho_max))


@dataclass
class BetaTracker:
    """A success rate as a Beta(alpha, beta) belief: alpha counts success, beta failure (fractional for
    rewards in [0, 1]); the baseline is the mean alpha / (alpha + beta)."""
    alpha: float
    beta: float

    @classmethod
    def prior(cls, mean: float, strength: float) -> "BetaTracker":
        """As if `strength` rewards of value `mean` had been seen."""
        return cls(strength * mean, strength * (1 - mean))

    @property
    def baseline(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def update(self, reward01: float, rho: float) -> None:
        """Decay the old evidence by rho, then add the new reward."""
        self.alpha = rho * self.alpha + reward01
        self.beta = rho * self.beta + (1 - reward01)


def prompt_key(prompt) -> str:
    """A short stable name for a prompt (text or messages): the per-prompt tracker's key."""
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


class SPOBaseline:
    """SPO's baselines in [0, 1]: mode "global" (MiniMind2, one tracker) or "per_prompt" (the paper; a new prompt
    meets the global one). A tracker starts as if N_init = 1 / (1 - rho_min) rewards had been seen (MiniMind)."""

    def __init__(self, mode: str = "global", d_half: float = 0.06, rho_min: float = 0.5, rho_max: float = 0.96):
        if mode not in ("global", "per_prompt"):
            raise ValueError(f"SPO baseline mode {mode!r}: use 'global' (MiniMind2) or 'per_prompt' (the paper)")
        self.mode, self.d_half, self.rho_min, self.rho_max = mode, d_half, rho_min, rho_max
        self.strength = 1.0 / (1.0 - rho_min)
        self.global_tracker = BetaTracker.prior(0.5, self.strength)
        self.global_logp: Optional[float] = None
        self.trackers: dict[str, BetaTracker] = {}
        self.logps: dict[str, float] = {}

    def rho(self, logp: float, previous: Optional[float]) -> float:
        # the change in mean log-prob stands in for KL(new policy || old policy), as in MiniMind2
        return self.rho_max if previous is None else kl_adaptive_rho(abs(logp - previous), self.d_half,
                                                                     self.rho_min, self.rho_max)

    def has_own(self, key: str) -> bool:
        return self.mode == "per_prompt" and key in self.trackers

    def baselines(self, keys: list[str]) -> list[float]:
        return [self.trackers[k].baseline if self.has_own(k) else self.global_tracker.baseline for k in keys]

    def update(self, keys: list[str], rewards01: list[float], logps: list[float],
               batch_logp: Optional[float] = None) -> dict:
        """Fold one batch in: rewards rescaled to [0, 1] and each response's mean token log-prob.
        Returns the decays used: {"rho": global, "prompt_rho": mean over revisited prompts (nan if none)}."""
        batch_logp = sum(logps) / len(logps) if batch_logp is None else batch_logp
        rho = self.rho(batch_logp, self.global_logp)
        self.global_tracker.update(sum(rewards01) / len(rewards01), rho)
        self.global_logp = batch_logp
        prompt_rhos = []
        if self.mode == "per_prompt":
            for key, r, lp in zip(keys, rewards01, logps):
                if key in self.trackers:
                    prompt_rhos.append(self.rho(lp, self.logps[key]))
                    self.trackers[key].update(r, prompt_rhos[-1])
                else:
                    self.trackers[key] = BetaTracker.prior(r, self.strength)
                self.logps[key] = lp
        return {"rho": rho, "prompt_rho": sum(prompt_rhos) / len(prompt_rhos) if prompt_rhos else math.nan}

    # -- resumption: plain tensors, so the training loop's checkpoint holds them ---------------------
    def state_tensors(self, prefix: str = "spo.") -> dict[str, torch.Tensor]:
        def row(t, lp):
            return torch.tensor([t.alpha, t.beta, math.nan if lp is None else lp], dtype=torch.float64)
        state = {f"{prefix}global": row(self.global_tracker, self.global_logp)}
        state.update({f"{prefix}prompt.{k}": row(t, self.logps.get(k)) for k, t in self.trackers.items()})
        return state

    def load_state_tensors(self, tensors: dict, prefix: str = "spo.") -> None:
        for name, t in tensors.items():
            a, b, lp = t.double().tolist()
            lp = None if math.isnan(lp) else lp
            if name == f"{prefix}global":
                self.global_tracker, self.global_logp = BetaTracker(a, b), lp
            elif name.startswith(f"{prefix}prompt."):
                key = name[len(f"{prefix}prompt."):]
                self.trackers[key], self.logps[key] = BetaTracker(a, b), lp


def spo_baseline_trace(stream, mode: str = "global", **kw) -> list[float]:
    """The baseline each (prompt, reward in [0, 1]) of `stream` meets, one at a time, with a steady policy
    (no log-prob change): a quick way to see how the global and per-prompt trackers differ."""
    tracker = SPOBaseline(mode, **kw)
    seen = []
    for prompt, reward in stream:
        key = prompt_key(prompt)
        seen.append(tracker.baselines([key])[0])
        tracker.update([key], [reward], [0.0])
    return seen
