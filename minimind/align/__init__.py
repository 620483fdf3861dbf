"""Alignment: DPO, reward models, RL from rewards (PPO, GRPO, SPO) and agentic RL with tools. Importing it
registers the stages."""
from . import agent, dpo, reward, rl  # noqa: F401  (registers DPO, Reward, PPO, GRPO, SPO and Agent stages)
