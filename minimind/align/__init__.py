"""Alignment: DPO, reward models, and RL from rewards (PPO, GRPO, SPO). Importing it registers the stages."""
from . import dpo, reward, rl  # noqa: F401  (registers DPOStage, RewardStage, PPOStage, GRPOStage, SPOStage)
