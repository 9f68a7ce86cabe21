"""One PPO update over one step's experience, as a function of what it reads.

Why apart from the trainer: the update is the paper's math (rlprompt/ppo/losses.py's terms, put
together) and reads only the step's rollout and advantages, the head, its optimizer and the PPO
settings; the loop around it (sampling, the target, logging, checkpoints) is the trainer's. The
update mutates only the head's weights and the Adam state it is given, and draws minibatch
orders from the generator it is given, so a step is reproducible from its inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from rlprompt.policy.policy import PromptPolicy, Rollout
from rlprompt.ppo import losses as ppo
from rlprompt.ppo.config import PPOConfig
from rlprompt.task import Scenario

GradientSync = Callable[[list[torch.Tensor]], None]  # averages the trainable gradients over ranks


@dataclass
class StepBatch:
    """One step's experience on this rank."""

    rollout: Rollout  # B prompts
    scenarios: list[Scenario]  # (N,) one per scored conversation
    prompt_index: torch.Tensor  # (N,) rollout row that wrote the prompt for conversation n
    group: torch.Tensor  # (N,) z-score group: the scenario, shared by the prompts competing on it
    raw_reward: torch.Tensor  # (N,) reward before stabilization
    parts: dict[str, torch.Tensor]  # module → (N,)
    advantages: torch.Tensor  # (B,) stabilized reward averaged over each prompt's conversations
    sampled: int = -1  # rollout rows [0, sampled) are samples, the rest the greedy prompt(s); -1: all

    def sampled_conversations(self) -> torch.Tensor:
        """(N,) bool: the conversations of sampled prompts (what the training reward averages)."""
        if self.sampled < 0:
            return torch.ones_like(self.prompt_index, dtype=torch.bool)
        return self.prompt_index < self.sampled


@dataclass
class UpdateStats:
    """Means over the update's minibatches (TensorBoard's ppo/* scalars)."""

    pg_loss: float
    kl: float
    entropy: float
    approx_kl: float
    clipfrac: float
    grad_norm: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def per_prompt_mean(
    values: torch.Tensor, prompt_index: torch.Tensor, prompts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of each prompt's conversations' values, conversations per prompt), both (prompts,).

    A prompt answers one scenario (context-conditioned) or all C of the step (task-level): its
    advantage and its logged training reward are the mean over the conversations it played.
    """
    counts = torch.bincount(prompt_index, minlength=prompts)
    means = torch.zeros(prompts).index_add_(0, prompt_index, values)
    means /= counts.clamp_min(1)
    return means, counts


def ppo_update(
    batch: StepBatch,
    policy: PromptPolicy,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    cfg: PPOConfig,
    generator: torch.Generator,
    sync_gradients: GradientSync | None = None,
) -> UpdateStats:
    """`ppo_epochs` passes over the step's prompts in `minibatches` random minibatches: clipped
    surrogate + β·KL to the initial policy − c·entropy, gradients averaged over ranks
    (`sync_gradients`), clipped to `max_grad_norm`, one Adam step per minibatch."""
    rollout = batch.rollout
    B, K = rollout.actions.shape
    advantages = ppo.sequence_advantages(batch.advantages.to(rollout.hidden.device), K)  # (B, K)
    with torch.no_grad():
        ref_logits = policy.action_logits(rollout, reference=True) if cfg.kl_coef > 0 else None
    stats: dict[str, list[float]] = {k: [] for k in UpdateStats.__dataclass_fields__}
    for _ in range(cfg.ppo_epochs):
        order = torch.randperm(B, generator=generator)
        for mb in order.chunk(cfg.minibatches):
            mb_rollout = select_rows(rollout, mb)
            logits = policy.action_logits(mb_rollout)  # (b, K, A)
            logprobs = torch.log_softmax(logits, -1).gather(-1, mb_rollout.actions[..., None]).squeeze(-1)
            pg_loss, diag = ppo.clipped_policy_loss(
                logprobs, mb_rollout.logprobs, advantages[mb], cfg.clip_eps
            )
            entropy = ppo.entropy_bonus(_entropy(logits))
            kl = ppo.kl_to_reference(logits, ref_logits[mb]) if ref_logits is not None else torch.zeros(())
            loss = ppo.ppo_loss(pg_loss, kl, entropy, cfg.kl_coef, cfg.entropy_coef)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sync_gradients is not None:
                sync_gradients([p.grad for p in params if p.grad is not None])
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            for name, value in (
                ("pg_loss", pg_loss),
                ("kl", kl),
                ("entropy", entropy),
                ("approx_kl", diag["approx_kl"]),
                ("clipfrac", diag["clipfrac"]),
                ("grad_norm", grad_norm),
            ):
                stats[name].append(float(value.detach()))
    return UpdateStats(**{k: sum(v) / len(v) for k, v in stats.items()})


def accelerate_gradient_sync(accelerator) -> GradientSync:
    """Average gradients over ranks with accelerate's own collective (`accelerator.reduce`).

    All gradients travel as one flat tensor (one collective per minibatch instead of one per
    parameter); `reduce(..., "mean")` sums then divides by the number of processes, the same
    arithmetic per element as a SUM all-reduce followed by `/= world`. DDP via
    `accelerator.prepare` is not used: the head runs on hidden states cached at sampling time,
    not in a forward pass DDP could hook, and PPO's minibatch loop would need `no_sync` contexts
    for nothing.
    """

    def sync(grads: list[torch.Tensor]) -> None:
        if not grads:
            return
        flat = accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    return sync


def concat_rollouts(first: Rollout, second: Rollout) -> Rollout:
    """The rows of `first`, then those of `second` (same K and hidden size)."""
    return Rollout(
        context_texts=first.context_texts + second.context_texts,
        actions=torch.cat([first.actions, second.actions]),
        logprobs=torch.cat([first.logprobs, second.logprobs]),
        hidden=torch.cat([first.hidden, second.hidden]),
        prompts=first.prompts + second.prompts,
    )


def select_rows(rollout: Rollout, idx: torch.Tensor) -> Rollout:
    rows = idx.tolist()
    return Rollout(
        context_texts=[rollout.context_texts[i] for i in rows],
        actions=rollout.actions[idx],
        logprobs=rollout.logprobs[idx],
        hidden=rollout.hidden[idx],
        prompts=[rollout.prompts[i] for i in rows],
    )


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    from trl.trainer.utils import entropy_from_logits

    return entropy_from_logits(logits)
