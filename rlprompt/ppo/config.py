"""The PPO trainer's settings (`optimizer=ppo` and `optimizer=components`).

Kept apart from the trainer so that validating a config needs no torch: the defaults are the
ones every PPO run has had (configs/optimizer/ppo.yaml and components.yaml set the tuned values).
"""

from __future__ import annotations

from dataclasses import dataclass

from rlprompt.config import OptimizerConfig


@dataclass
class PPOConfig(OptimizerConfig):
    """PPO (RLPrompt, Deng et al. 2022) with its reward stabilizers; each term switches off."""

    steps: int = 80
    contexts_per_step: int = 4  # C
    prompts_per_context: int = 4  # G
    lr: float = 2e-5
    adam_eps: float = 1e-8
    # Linear learning-rate warmup over this fraction of the run's steps (0 = constant lr). Adam's
    # step is ~lr per weight whatever the gradient's size, so without it the first noisy comparison
    # moves the policy as far as any later one (docs/LEARNING.md 4k).
    lr_warmup_fraction: float = 0.0
    max_grad_norm: float = 5.0
    ppo_epochs: int = 4
    minibatches: int = 2
    clip_eps: float = 0.2
    kl_coef: float = 0.05  # 0 switches the KL penalty off
    entropy_coef: float = 0.001  # 0 switches the entropy bonus off
    shaping: bool = True  # linear [low, high] → [0, shaping_scale]
    shaping_scale: float = 5.0
    zscore: bool = True  # per-context z-score across the G prompts (RLPrompt)
    reward_clip: float = 3.0  # 0 switches clipping off
    # Floor on a group's std in the z-score (stabilized units, after shaping): a group whose prompts
    # score almost alike gets a small advantage instead of noise blown up to +-1. 0 = RLPrompt's 1e-4.
    zscore_min_std: float = 0.0
    stratify_stages: bool = False  # each step's C contexts cycle through the task's stages
    # The second half of the run replays the first half's scenarios step for step (step t + steps/2
    # answers step t's), so the training reward's rise is a paired difference (docs/LEARNING.md 4j).
    paired_halves: bool = False
    # The policy's greedy prompt joins each step's G samples as one more member of every group,
    # scored and updated like them: it is what ships, so it is pushed up when it beats the samples
    # on the step's scenarios and down when one of them beats it (docs/LEARNING.md 4m). The
    # training reward (and its rise) stays the samples' alone. Costs C calls a step (fewer when
    # the greedy prompt and the scenarios repeat: cached).
    greedy_in_group: bool = False
