"""Reward modules (installed as `rlprompt.rewards`). Importing this package registers the built-ins.

Built-ins: expert, preference, relevance, rubric, similarity, judge, customer, length, repetition (docs/REWARDS.md).
"""

from rlprompt.rewards import customer, expert, judge, penalties, preference, rubric, similarity  # noqa: F401  (registers them)
from rlprompt.rewards.base import (
    REWARDS,
    RewardBatch,
    RewardFunction,
    RewardModule,
    RewardResult,
    Sample,
    build_reward,
    register_reward,
)
from rlprompt.rewards.factory import RewardSetup, load_plugins, reward_from_config

__all__ = [
    "REWARDS",
    "RewardBatch",
    "RewardFunction",
    "RewardModule",
    "RewardResult",
    "RewardSetup",
    "Sample",
    "build_reward",
    "load_plugins",
    "register_reward",
    "reward_from_config",
]
