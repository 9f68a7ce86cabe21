"""PPO with RLPrompt's reward stabilization, as pure functions.

Each function is one term of the papers, named as there, so the update in update.py reads like
the math. References:
- PPO clipped surrogate: Schulman et al. 2017, https://arxiv.org/abs/1707.06347 ; naming follows
  CleanRL's ppo.py (https://github.com/vwxyzjn/cleanrl/blob/master/cleanrl/ppo.py).
- Reward stabilization (shaping, per-input z-score): Deng et al. 2022, RLPrompt,
  https://arxiv.org/abs/2205.12548 §2.3 and mingkaid/rl-prompt (`_compute_reward` z-score).
- Approx-KL estimator: http://joschu.net/blog/kl-approx.html (k3), as logged by CleanRL.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ZSCORE_EPS = 1e-4  # RLPrompt: (r - mean) / (std + 1e-4)


def linear_shaping(reward: torch.Tensor, low: float, high: float, scale: float) -> torch.Tensor:
    """Map rewards from [low, high] onto [0, scale] (RLPrompt shapes [0,1] → [0,5])."""
    return (reward - low) / (high - low) * scale


def zscore_per_group(reward: torch.Tensor, group: torch.Tensor, min_std: float = 0.0) -> torch.Tensor:
    """Z-score each reward against the other prompts sampled for the same input.

    reward: (N,); group: (N,) integer id of the input (context / scenario) each reward belongs to.
    A group of one gets 0: with no competing prompt there is no signal. Uses the population std,
    as RLPrompt's `torch.std(..., unbiased=False)`-free numpy equivalent does.
    `min_std` floors the std (RLPrompt: none, only 1e-4): where G prompts score almost alike, plain
    z-scoring inflates differences of 0.001 into advantages of +-1, i.e. it trains on noise; with
    the floor such a group's advantages stay as small as its differences (docs/LEARNING.md).
    """
    out = torch.zeros_like(reward)
    for g in torch.unique(group):
        idx = group == g
        r = reward[idx]
        if r.numel() < 2:
            continue
        out[idx] = (r - r.mean()) / (r.std(unbiased=False).clamp_min(min_std) + ZSCORE_EPS)
    return out


def clip_rewards(reward: torch.Tensor, bound: float) -> torch.Tensor:
    """Clip stabilized rewards to [-bound, bound]; bound <= 0 switches clipping off."""
    return reward if bound <= 0 else reward.clamp(-bound, bound)


@dataclass(frozen=True)
class StabilizerConfig:
    shaping: bool = True
    shaping_scale: float = 5.0
    zscore: bool = True
    reward_clip: float = 3.0
    zscore_min_std: float = 0.0


def stabilize(
    reward: torch.Tensor, group: torch.Tensor, low: float, high: float, cfg: StabilizerConfig
) -> torch.Tensor:
    """shaping → per-group z-score → clip. Each stage can be switched off (ablations)."""
    r = reward.to(torch.float32)
    if cfg.shaping:
        r = linear_shaping(r, low, high, cfg.shaping_scale)
    if cfg.zscore:
        r = zscore_per_group(r, group, cfg.zscore_min_std)
    return clip_rewards(r, cfg.reward_clip)


def sequence_advantages(stabilized: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """A prompt is one action sequence scored once: every token shares its sequence's advantage.

    stabilized: (B,) → (B, K). With no value function, the z-scored reward is the advantage
    (the group mean is the baseline), as in RLPrompt and GRPO.
    """
    return stabilized[:, None].expand(-1, num_tokens)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate. All inputs (B, K); returns the scalar loss and diagnostics."""
    logratio = logprobs - old_logprobs
    ratio = logratio.exp()
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        approx_kl = masked_mean((ratio - 1) - logratio, mask)
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask)
    return pg_loss, {"approx_kl": approx_kl, "clipfrac": clipfrac}


def kl_to_reference(
    logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact KL(π_θ || π_ref) over the action set at each position, averaged.

    The action sets are small enough (a vocabulary or a phrase bank) to sum exactly instead of
    estimating from samples. logits, ref_logits: (B, K, A).
    """
    logp = F.log_softmax(logits, dim=-1)
    ref_logp = F.log_softmax(ref_logits, dim=-1)
    kl = (logp.exp() * (logp - ref_logp)).sum(-1)
    return masked_mean(kl, mask)


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-position entropy (B, K) → scalar; subtracted from the loss with its coefficient."""
    return masked_mean(entropy, mask)


def ppo_loss(
    pg_loss: torch.Tensor, kl: torch.Tensor, entropy: torch.Tensor, kl_coef: float, entropy_coef: float
) -> torch.Tensor:
    """loss = pg_loss + β·KL(π_θ || π_init) − c_ent·H(π_θ)."""
    return pg_loss + kl_coef * kl - entropy_coef * entropy


def warmup_lr(lr: float, step: int, warmup_steps: int) -> float:
    """Learning rate of PPO step `step` (0-based): a linear ramp to `lr` over `warmup_steps` steps.

    Adam normalizes each weight's step to ~lr whatever the gradient's size, and its early
    second-moment estimates rest on few gradients (Liu et al. 2019, RAdam, "On the Variance of the
    Adaptive Learning Rate and Beyond", https://arxiv.org/abs/1908.03265 §3: warmup is the fix).
    Here a step's gradient comes from one noisy comparison of G prompts, so an un-warmed first step
    commits the policy to whichever sample won it. A function of the step alone, so a resumed run
    gets the same rate without optimizer-scheduler state.
    """
    if warmup_steps <= 0:
        return lr
    return lr * min(1.0, (step + 1) / warmup_steps)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)
