"""The PPO loop: rollout → score → stabilize → update → log → checkpoint.

Per step, C training contexts are drawn; the policy writes G prompts for each (context-
conditioned) or G prompts shared by all C (task-level); the target answers every (scenario,
prompt) pair through the cache; the reward scores the conversations; rewards are stabilized per
scenario across its prompts (RLPrompt's z-score); PPO updates the head on the cached hidden
states. Under accelerate, each rank takes a slice of the contexts, gradients are all-reduced,
and only the main process writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from rlprompt import ppo
from rlprompt.checkpoint import Checkpointer, check_trainable_state, run_meta
from rlprompt.config import RunConfig
from rlprompt.conversation import run_conversations
from rlprompt.distributed import agree_on_stop
from rlprompt.errors import ConfigError, TargetError
from rlprompt.learning import LearningLog, step_diagnostics
from rlprompt.policy import PromptPolicy, Rollout
from rlprompt.prompting import assemble_system_prompt
from rlprompt.rewards.factory import RewardSetup
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.cache import BudgetExhausted, CachedTarget
from rlprompt.task import Scenario, Task

log = logging.getLogger(__name__)
TASK_LEVEL_CONTEXT = "Any customer type, any stage, any urgency."


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


class PPOTrainer:
    def __init__(
        self,
        run: RunConfig,
        task: Task,
        policy: PromptPolicy,
        target: CachedTarget,
        reward: RewardSetup,
        params: GenerationParams,
        run_dir: Path,
        accelerator=None,
    ) -> None:
        self.run, self.cfg, self.task, self.policy = run, run.optimizer, task, policy
        self.target, self.reward, self.params, self.run_dir = target, reward, params, Path(run_dir)
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        self.is_main = self.rank == 0
        if self.cfg.contexts_per_step % self.world:
            raise ConfigError(
                f"optimizer.contexts_per_step={self.cfg.contexts_per_step} must divide by the {self.world} processes"
            )
        self.train_scenarios = task.split("train")
        self.contexts = sorted({s.context for s in self.train_scenarios})
        self.params_trainable = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.params_trainable, lr=self.cfg.lr, eps=self.cfg.adam_eps)
        self.stabilizer = ppo.StabilizerConfig(
            shaping=self.cfg.shaping,
            shaping_scale=self.cfg.shaping_scale,
            zscore=self.cfg.zscore,
            reward_clip=self.cfg.reward_clip,
            zscore_min_std=self.cfg.zscore_min_std,
        )
        self.low, self.high = reward_bounds(reward.reward)
        # Same context draws on every rank (each takes its slice); own sampling noise per rank.
        self.context_rng = random.Random(run.seed)
        self.sample_gen = torch.Generator().manual_seed(run.seed * 1000 + self.rank)
        self.step_index = 0
        self.phases = PhaseTimer()  # seconds per phase of a step (benchmarks/trainer_overhead.py)
        self.reward_stats = RunningStats()
        # Reward curve, greedy prompts at checkpoints, best samples (learning_curve.png, selection)
        self.learning = LearningLog(keep_samples=run.eval.select_samples)
        self.checkpointer = Checkpointer(
            self.run_dir / "checkpoints", self.rank, self.is_main, meta=run_meta(run, self.world)
        )
        self.writer = None
        if self.is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tb"))

    # ------------------------------------------------------------------ experience

    def draw_contexts(self) -> list[Scenario]:
        """C scenarios from C distinct training contexts, then this rank's slice.

        With `optimizer.stratify_stages`, the C contexts cycle through the task's stages (a
        Closure turn scores very differently from an Introduction one), so a step's mean reward
        reflects the prompts more than the luck of the draw: stratified sampling.
        """
        if self.cfg.stratify_stages:
            stages = [st.name for st in self.task.stages]
            start = self.context_rng.randrange(len(stages))
            order = [stages[(start + i) % len(stages)] for i in range(self.cfg.contexts_per_step)]
            chosen: list = []
            for stage in order:
                pool = [c for c in self.contexts if c[1] == stage and c not in chosen]
                chosen.append(self.context_rng.choice(pool))
        else:
            chosen = self.context_rng.sample(self.contexts, self.cfg.contexts_per_step)
        scenarios = [
            self.context_rng.choice([s for s in self.train_scenarios if s.context == c]) for c in chosen
        ]
        per_rank = len(scenarios) // self.world
        return scenarios[self.rank * per_rank : (self.rank + 1) * per_rank]

    def collect(self) -> StepBatch:
        scenarios = self.draw_contexts()
        G = self.cfg.prompts_per_context
        with self.phases.time("policy_sampling"):
            if self.run.policy.conditioning == "context_conditioned":
                rollout = self.policy.sample(
                    [s.context_text() for s in scenarios for _ in range(G)], generator=self.sample_gen
                )
                rows = [(s, i * G + g, i) for i, s in enumerate(scenarios) for g in range(G)]
            elif self.run.policy.conditioning == "task_level":
                rollout = self.policy.sample([TASK_LEVEL_CONTEXT] * G, generator=self.sample_gen)
                rows = [(s, g, i) for i, s in enumerate(scenarios) for g in range(G)]
            else:
                raise ConfigError(
                    f"unknown policy.conditioning '{self.run.policy.conditioning}'. "
                    "Valid: context_conditioned, task_level"
                )
        row_scenarios = [r[0] for r in rows]
        prompt_index = torch.tensor([r[1] for r in rows])
        group = torch.tensor([r[2] for r in rows])
        system = [self.system_prompt(rollout.prompts[i]) for i in prompt_index.tolist()]
        with self.phases.time("target_generation"):
            samples = run_conversations(
                self.target, row_scenarios, system, self.params, self.run.reward.turns, self.reward.customer
            )
        with self.phases.time("reward"):
            scored = self.reward.reward.score(samples)
        stabilized = ppo.stabilize(scored.total, group, self.low, self.high, self.stabilizer)
        advantages = torch.zeros(len(rollout)).index_add_(0, prompt_index, stabilized)
        advantages /= torch.bincount(prompt_index, minlength=len(rollout)).clamp_min(1)
        return StepBatch(
            rollout,
            row_scenarios,
            prompt_index,
            group,
            scored.total.float(),
            {k: v.float() for k, v in scored.parts.items()},
            advantages,
        )

    def system_prompt(self, learned: str) -> str:
        return assemble_system_prompt(self.task.base_instruction, learned, self.run.prompt)

    # ------------------------------------------------------------------ update

    def update(self, batch: StepBatch) -> dict[str, float]:
        rollout, cfg = batch.rollout, self.cfg
        B, K = rollout.actions.shape
        advantages = ppo.sequence_advantages(batch.advantages.to(rollout.hidden.device), K)  # (B, K)
        with torch.no_grad():
            ref_logits = self.policy.action_logits(rollout, reference=True) if cfg.kl_coef > 0 else None
        stats: dict[str, list[float]] = {
            k: [] for k in ("pg_loss", "kl", "entropy", "approx_kl", "clipfrac", "grad_norm")
        }
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=self.sample_gen)
            for mb in order.chunk(cfg.minibatches):
                mb_rollout = _select(rollout, mb)
                logits = self.policy.action_logits(mb_rollout)  # (b, K, A)
                logprobs = torch.log_softmax(logits, -1).gather(-1, mb_rollout.actions[..., None]).squeeze(-1)
                pg_loss, diag = ppo.clipped_policy_loss(
                    logprobs, mb_rollout.logprobs, advantages[mb], cfg.clip_eps
                )
                entropy = ppo.entropy_bonus(_entropy(logits))
                kl = (
                    ppo.kl_to_reference(logits, ref_logits[mb]) if ref_logits is not None else torch.zeros(())
                )
                loss = ppo.ppo_loss(pg_loss, kl, entropy, cfg.kl_coef, cfg.entropy_coef)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._all_reduce_gradients()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.params_trainable, cfg.max_grad_norm)
                self.optimizer.step()
                for name, value in (
                    ("pg_loss", pg_loss),
                    ("kl", kl),
                    ("entropy", entropy),
                    ("approx_kl", diag["approx_kl"]),
                    ("clipfrac", diag["clipfrac"]),
                    ("grad_norm", grad_norm),
                ):
                    stats[name].append(float(value.detach()))
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def _all_reduce_gradients(self) -> None:
        if self.world == 1:
            return
        for p in self.params_trainable:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
                p.grad /= self.world

    # ------------------------------------------------------------------ loop

    def train(self) -> None:
        if self.run.resume:
            self.load(Path(self.run.resume))
        total = self.cfg.steps
        bar = tqdm(
            total=total, initial=self.step_index, disable=not self.is_main, desc="ppo", dynamic_ncols=True
        )
        started = time.perf_counter()
        while self.step_index < total:
            step_started = time.perf_counter()
            rng_before = self.rank_state()  # a failed step must not move the saved RNG streams
            try:
                batch, failure = self.collect(), None
            except (BudgetExhausted, TargetError) as err:
                batch, failure = None, err
            # All ranks stop at the same step (one that stopped alone would wait for the others forever).
            failure = agree_on_stop(failure, self.accelerator)
            if isinstance(failure, BudgetExhausted):
                log.info("stopping at step %d: %s", self.step_index, failure)
                if self.step_index % self.run.checkpoint_every:  # the last whole step, for resume=
                    self.save(rng_before)
                break
            if failure is not None:
                # The target failed for good mid-step. Replies it did deliver are cached; the step's
                # half-drawn randomness is discarded, so resume=<run dir> redoes exactly this step.
                self.save(rng_before)
                bar.close()
                raise TargetError(
                    f"{failure}. Training stopped in step {self.step_index + 1}; the {self.step_index} "
                    f"completed steps are checkpointed in {self.run_dir / 'checkpoints'}"
                ) from failure
            with self.phases.time("update"):
                stats = self.update(batch)
            self.step_index += 1
            with self.phases.time("logging_checkpoint"):
                self.record(batch, stats, time.perf_counter() - step_started)
                if self.step_index % self.run.checkpoint_every == 0 or self.step_index == total:
                    self.save()
            bar.update(1)
            bar.set_postfix(reward=f"{self.reward_stats.last_mean:.3f}", calls=self.target.counter.calls)
        bar.close()
        self.train_seconds = time.perf_counter() - started
        self.check_replicas_in_sync()
        if self.writer:
            self.writer.flush()

    def record(self, batch: StepBatch, stats: dict[str, float], seconds: float) -> None:
        rewards = self._gather(batch.raw_reward)
        parts = {k: self._gather(v) for k, v in batch.parts.items()}
        self.reward_stats.update(rewards)
        self.track_learning(batch, float(rewards.mean()), stats)
        if not self.is_main or self.step_index % self.run.log_every:
            return
        counter = self.target.counter
        scalars = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **{f"reward/{k}": float(v.mean()) for k, v in parts.items()},
            **{f"ppo/{k}": v for k, v in stats.items()},
            "budget/target_calls": counter.calls,  # this rank's; summary.json holds all ranks' total
            "budget/cache_hit_rate": counter.hit_rate,
            **{f"budget/{name}_calls": c.calls for name, c in self.reward.counters.items()},
            **{f"diag/{k}": v for k, v in self.learning.diagnostics[-1].items()},
            "time/steps_per_s": 1.0 / max(seconds, 1e-9),
            **{f"time/{name}_s": value for name, value in self.phases.seconds.items()},
        }
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, self.step_index)

    def track_learning(self, batch: StepBatch, mean_reward: float, stats: dict[str, float]) -> None:
        """Feed the LearningLog: step reward, sampled task-level prompts, greedy prompt at checkpoints."""
        diagnostics = step_diagnostics(batch.rollout.prompts, batch.group, batch.raw_reward)
        diagnostics.update(entropy=stats["entropy"], kl=stats["kl"])
        self.learning.record_step(self.step_index, mean_reward, diagnostics)
        if self.run.policy.conditioning != "task_level":
            return
        counts = torch.bincount(batch.prompt_index, minlength=len(batch.rollout))
        means = torch.zeros(len(batch.rollout)).index_add_(0, batch.prompt_index, batch.raw_reward)
        means /= counts.clamp_min(1)
        self.learning.record_samples(
            self.step_index,
            batch.rollout.prompts,
            batch.rollout.actions.tolist(),
            means.tolist(),
            counts.tolist(),
        )
        every = max(1, math.ceil(self.cfg.steps / max(1, self.run.eval.select_checkpoints)))
        if self.run.eval.select_checkpoints and (
            self.step_index % every == 0 or self.step_index == self.cfg.steps
        ):
            greedy = self.policy.sample([TASK_LEVEL_CONTEXT], greedy=True)
            self.learning.record_greedy(self.step_index, greedy.prompts[0], greedy.actions[0].tolist())

    def check_replicas_in_sync(self) -> None:
        """Every rank must hold the same head after all-reduced updates; fail loudly if not."""
        if self.world == 1:
            return
        checksum = torch.stack([p.detach().double().sum() for p in self.params_trainable]).sum().reshape(1)
        sums = self.accelerator.gather(checksum.to(self.accelerator.device)).cpu()
        if not torch.allclose(sums, sums[0].expand_as(sums), rtol=0, atol=1e-9):
            raise RuntimeError(f"policy replicas diverged across ranks: parameter sums {sums.tolist()}")

    def total_target_calls(self) -> int:
        """Target calls of all ranks (each rank counts its own slice of the rollouts)."""
        calls = torch.tensor([self.target.counter.calls], dtype=torch.long)
        if self.world > 1:
            calls = self.accelerator.gather(calls.to(self.accelerator.device)).cpu()
        return int(calls.sum())

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return values
        return self.accelerator.gather(values.contiguous())

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        return {
            "step": self.step_index,
            "policy": self.policy.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "reward_stats": self.reward_stats.state_dict(),
            "learning": self.learning.state_dict(),
        }

    def counter_state(self) -> dict:
        """This rank's call counters (each rank pays for its own slice): saved in its rank file."""
        return {
            "target": self.target.counter.state_dict(),
            **{k: c.state_dict() for k, c in self.reward.counters.items()},
        }

    def rank_state(self) -> dict:
        return {
            "context_rng": self.context_rng.getstate(),
            "sample_gen": self.sample_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, rng: dict | None = None) -> None:
        """Checkpoint the last whole step. The rank file holds the RNG streams (`rng`: as they were
        before a failed step, so resume redoes it) and the counters as they are (every paid call)."""
        rank_file = {**(rng or self.rank_state()), "counters": self.counter_state()}
        self.checkpointer.save(self.step_index, self.state(), rank_file, self.accelerator)

    def load(self, run_dir: Path) -> None:
        shared, mine = Checkpointer(run_dir / "checkpoints", self.rank, self.is_main).load_latest()
        self.step_index = shared["step"]
        # Names and shapes checked here, so strict=False only skips the frozen backbone (not saved).
        check_trainable_state(self.policy.trainable_state(), shared["policy"])
        self.policy.load_state_dict(shared["policy"], strict=False)
        self.optimizer.load_state_dict(shared["optimizer"])
        self.reward_stats.load_state_dict(shared["reward_stats"])
        self.learning = LearningLog.from_state(shared["learning"])
        counters = mine.get("counters") or shared["counters"]  # checkpoints before per-rank counters
        self.target.counter.load_state_dict(counters["target"])
        for name, counter in self.reward.counters.items():
            if name in counters:
                counter.load_state_dict(counters[name])
        self.context_rng.setstate(mine["context_rng"])
        self.sample_gen.set_state(mine["sample_gen"])
        torch.set_rng_state(mine["torch_rng"])
        if self.is_main:
            log.info("resumed from %s at step %d", run_dir, self.step_index)


class PhaseTimer:
    """Wall seconds spent per named phase, accumulated over the run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


class RunningStats:
    """The last step's mean raw reward (all ranks), shown by the progress bar; checkpointed."""

    def __init__(self) -> None:
        self.last_mean = 0.0

    def update(self, values: torch.Tensor) -> None:
        self.last_mean = float(values.mean())

    def state_dict(self) -> dict:
        return {"last_mean": self.last_mean}

    def load_state_dict(self, state: dict) -> None:
        self.last_mean = float(state["last_mean"])  # older checkpoints also held n / mean / m2


def reward_bounds(function) -> tuple[float, float]:
    """Range of the weighted sum, for linear shaping."""
    low = sum(min(w * m.low, w * m.high) for m, w in function.modules.values())
    high = sum(max(w * m.low, w * m.high) for m, w in function.modules.values())
    return low, high


def _select(rollout: Rollout, idx: torch.Tensor) -> Rollout:
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
