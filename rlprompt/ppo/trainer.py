"""The PPO loop: rollout → score → stabilize → update, then the callbacks (log, checkpoint).

Per step, C training contexts are drawn; the policy writes G prompts for each (context-
conditioned) or G prompts shared by all C (task-level); the target answers every (scenario,
prompt) pair through the cache; the reward scores the conversations; rewards are stabilized per
scenario across its prompts (RLPrompt's z-score); `ppo_update` updates the head on the cached
hidden states. Under accelerate, each rank takes a slice of the contexts, gradients are averaged
with `accelerator.reduce`, and only the main process writes. The trainer reads only its own
`TrainerConfig`; logging and checkpoints are `TrainerCallback`s (rlprompt/ppo/callbacks.py).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from rlprompt.config import PromptConfig, RunConfig
from rlprompt.env.conversation import run_conversations
from rlprompt.env.prompting import assemble_system_prompt
from rlprompt.errors import ConfigError, TargetError
from rlprompt.policy.policy import PromptPolicy, Rollout
from rlprompt.ppo import losses as ppo
from rlprompt.ppo.callbacks import CheckpointCallback, StepEnd, TrainerCallback
from rlprompt.ppo.config import PPOConfig
from rlprompt.ppo.distributed import agree_on_stop
from rlprompt.ppo.learning import LearningLog, step_diagnostics
from rlprompt.ppo.progress import PhaseTimer, RunningStats
from rlprompt.ppo.update import (
    StepBatch,
    UpdateStats,
    accelerate_gradient_sync,
    concat_rollouts,
    per_prompt_mean,
    ppo_update,
)
from rlprompt.rewards.factory import RewardSetup
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.cache import BudgetExhausted, CachedTarget
from rlprompt.task import Scenario, Task

log = logging.getLogger(__name__)
TASK_LEVEL_CONTEXT = "Any customer type, any stage, any urgency."


@dataclass
class TrainerConfig:
    """What the PPO loop reads: the PPO settings and the few run settings that shape a step."""

    ppo: PPOConfig
    prompt: PromptConfig  # how a learned prompt joins the base instruction
    conditioning: str = "context_conditioned"  # policy.conditioning
    turns: int = 0  # reward.turns: simulated-customer turns per conversation
    seed: int = 0
    select_checkpoints: int = 0  # eval.select_checkpoints: greedy prompts recorded for selection
    select_samples: int = 0  # eval.select_samples: best sampled prompts kept for selection

    @classmethod
    def from_run(cls, run: RunConfig) -> TrainerConfig:
        return cls(
            ppo=run.optimizer,  # type: ignore[arg-type]  (PPOConfig for optimizer=ppo|components)
            prompt=run.prompt,
            conditioning=run.policy.conditioning,
            turns=run.reward.turns,
            seed=run.seed,
            select_checkpoints=run.eval.select_checkpoints,
            select_samples=run.eval.select_samples,
        )


class PPOTrainer:
    def __init__(
        self,
        config: TrainerConfig,
        task: Task,
        policy: PromptPolicy,
        target: CachedTarget,
        reward: RewardSetup,
        params: GenerationParams,
        accelerator=None,
        callbacks: list[TrainerCallback] | None = None,
    ) -> None:
        self.config, self.cfg, self.task, self.policy = config, config.ppo, task, policy
        self.target, self.reward, self.params = target, reward, params
        self.accelerator = accelerator
        self.callbacks = list(callbacks or [])
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
        self.sync_gradients = accelerate_gradient_sync(accelerator) if self.world > 1 else None
        self.stabilizer = ppo.StabilizerConfig(
            shaping=self.cfg.shaping,
            shaping_scale=self.cfg.shaping_scale,
            zscore=self.cfg.zscore,
            reward_clip=self.cfg.reward_clip,
            zscore_min_std=self.cfg.zscore_min_std,
        )
        self.low, self.high = reward.reward.bounds()
        # Same context draws on every rank (each takes its slice); own sampling noise per rank.
        self.context_rng = random.Random(config.seed)
        self.sample_gen = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        self.step_index = 0
        self.step_scenario_ids: list[str] = []
        self.train_seconds = 0.0
        self.phases = PhaseTimer()  # seconds per phase of a step (benchmarks/trainer_overhead.py)
        self.reward_stats = RunningStats()
        # Reward curve, greedy prompts at checkpoints, best samples (learning_curve.png, selection)
        self.learning = LearningLog(keep_samples=config.select_samples)

    def callback(self, kind: type) -> TrainerCallback:
        """The trainer's callback of class `kind` (e.g. its CheckpointCallback)."""
        return next(c for c in self.callbacks if isinstance(c, kind))

    # ------------------------------------------------------------------ experience

    def draw_contexts(self) -> list[Scenario]:
        """C scenarios from C distinct training contexts, then this rank's slice.

        With `optimizer.stratify_stages`, the C contexts cycle through the task's stages (a
        Closure turn scores very differently from an Introduction one), so a step's mean reward
        reflects the prompts more than the luck of the draw: stratified sampling. With
        `optimizer.paired_halves`, step t + `replay_period()` draws exactly what step t drew (the
        draw is a function of the seed and t mod the period), so the first and second halves of
        the run answer the same scenarios and their difference is paired. A budgeted run that
        goes on past both halves (cache hits are free) draws fresh scenarios from there.
        """
        rng = self.context_rng
        if self.cfg.paired_halves:
            period, t = self.replay_period(), self.step_index
            slot = t % period if t < 2 * period else t  # past both halves: a fresh draw per step
            rng = random.Random(self.config.seed * 1_000_003 + slot)
        if self.cfg.stratify_stages:
            stages = [st.name for st in self.task.stages]
            start = rng.randrange(len(stages))
            order = [stages[(start + i) % len(stages)] for i in range(self.cfg.contexts_per_step)]
            chosen: list = []
            for stage in order:
                pool = [c for c in self.contexts if c[1] == stage and c not in chosen]
                chosen.append(rng.choice(pool))
        else:
            chosen = rng.sample(self.contexts, self.cfg.contexts_per_step)
        scenarios = [rng.choice([s for s in self.train_scenarios if s.context == c]) for c in chosen]
        self.step_scenario_ids = [s.id for s in scenarios]  # all ranks' (for the paired rise)
        per_rank = len(scenarios) // self.world
        return scenarios[self.rank * per_rank : (self.rank + 1) * per_rank]

    def planned_steps(self) -> int:
        """The steps the run will take: `steps`, or under `optimizer.budget` (where `steps` is only
        an upper bound) the steps the budget buys at C × G calls each (C × (G + 1) with the greedy
        prompt in the group; cache hits make a step cheaper, never dearer)."""
        steps = self.cfg.steps
        if self.cfg.budget is not None:
            per_step = self.cfg.contexts_per_step * (self.cfg.prompts_per_context + self.cfg.greedy_in_group)
            steps = min(steps, max(1, self.cfg.budget // per_step))
        return steps

    def replay_period(self) -> int:
        """Half the steps the run will take (`planned_steps`)."""
        return max(1, math.ceil(self.planned_steps() / 2))

    def warmup_steps(self) -> int:
        """The learning rate's ramp: `optimizer.lr_warmup_fraction` of the planned steps."""
        return round(self.cfg.lr_warmup_fraction * self.planned_steps())

    def collect(self) -> StepBatch:
        scenarios = self.draw_contexts()
        with self.phases.time("policy_sampling"):
            rollout, rows = self.sample_prompts(scenarios)
            sampled = len(rollout)
            if self.cfg.greedy_in_group:  # the greedy prompt of each scenario's context competes too
                greedy, greedy_rows = self.greedy_prompts(scenarios, first_row=sampled)
                rollout, rows = concat_rollouts(rollout, greedy), rows + greedy_rows
        row_scenarios = [r[0] for r in rows]
        prompt_index = torch.tensor([r[1] for r in rows])
        group = torch.tensor([r[2] for r in rows])
        system = [self.system_prompt(rollout.prompts[i]) for i in prompt_index.tolist()]
        with self.phases.time("target_generation"):
            samples = run_conversations(
                self.target, row_scenarios, system, self.params, self.config.turns, self.reward.customer
            )
        with self.phases.time("reward"):
            scored = self.reward.reward.score(samples)
        stabilized = ppo.stabilize(scored.total, group, self.low, self.high, self.stabilizer)
        advantages, _ = per_prompt_mean(stabilized, prompt_index, len(rollout))
        return StepBatch(
            rollout,
            row_scenarios,
            prompt_index,
            group,
            scored.total.float(),
            {k: v.float() for k, v in scored.parts.items()},
            advantages,
            sampled=sampled if self.cfg.greedy_in_group else -1,
        )

    def sample_prompts(self, scenarios: list[Scenario]) -> tuple[Rollout, list[tuple[Scenario, int, int]]]:
        """G sampled prompts per scenario's context (or G for the task), and the rows to play:
        (scenario, rollout row of its prompt, z-score group = the scenario's index)."""
        G = self.cfg.prompts_per_context
        if self.config.conditioning == "context_conditioned":
            rollout = self.policy.sample(
                [s.context_text() for s in scenarios for _ in range(G)], generator=self.sample_gen
            )
            return rollout, [(s, i * G + g, i) for i, s in enumerate(scenarios) for g in range(G)]
        if self.config.conditioning == "task_level":
            rollout = self.policy.sample([TASK_LEVEL_CONTEXT] * G, generator=self.sample_gen)
            return rollout, [(s, g, i) for i, s in enumerate(scenarios) for g in range(G)]
        raise ConfigError(
            f"unknown policy.conditioning '{self.config.conditioning}'. Valid: context_conditioned, task_level"
        )

    def greedy_prompts(
        self, scenarios: list[Scenario], first_row: int
    ) -> tuple[Rollout, list[tuple[Scenario, int, int]]]:
        """The policy's greedy prompt — one for the task, or one per scenario's context — and the
        rows to play, as `sample_prompts` (its rollout rows numbered from `first_row`). Greedy
        decoding draws nothing from the sampling generator, so the samples are the same with or
        without it in the group."""
        if self.config.conditioning == "task_level":
            rollout = self.policy.sample([TASK_LEVEL_CONTEXT], greedy=True)
            return rollout, [(s, first_row, i) for i, s in enumerate(scenarios)]
        rollout = self.policy.sample([s.context_text() for s in scenarios], greedy=True)
        return rollout, [(s, first_row + i, i) for i, s in enumerate(scenarios)]

    def system_prompt(self, learned: str) -> str:
        return assemble_system_prompt(self.task.base_instruction, learned, self.config.prompt)

    # ------------------------------------------------------------------ loop

    def train(self) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(self)
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
            if failure is not None:
                for callback in self.callbacks:
                    callback.on_stop(self, failure, rng_before)
            if isinstance(failure, BudgetExhausted):
                log.info("stopping at step %d: %s", self.step_index, failure)
                break
            if failure is not None:
                # The target failed for good mid-step. Replies it did deliver are cached; the step's
                # half-drawn randomness is discarded, so resume=<run dir> redoes exactly this step.
                bar.close()
                saved = [c.folder for c in self.callbacks if isinstance(c, CheckpointCallback)]
                where = f"checkpointed in {saved[0]}" if saved else "not checkpointed"
                raise TargetError(
                    f"{failure}. Training stopped in step {self.step_index + 1}; the {self.step_index} "
                    f"completed steps are {where}"
                ) from failure
            with self.phases.time("update"):
                for group in self.optimizer.param_groups:
                    group["lr"] = ppo.warmup_lr(self.cfg.lr, self.step_index, self.warmup_steps())
                stats = ppo_update(
                    batch, self.policy, self.optimizer, self.params_trainable, self.cfg, self.sample_gen,
                    self.sync_gradients,
                )  # fmt: skip
            self.step_index += 1
            with self.phases.time("logging_checkpoint"):
                step = self.finish_step(batch, stats, time.perf_counter() - step_started)
                for callback in self.callbacks:
                    callback.on_step_end(self, step)
            bar.update(1)
            bar.set_postfix(reward=f"{self.reward_stats.last_mean:.3f}", calls=self.target.counter.calls)
        bar.close()
        self.train_seconds = time.perf_counter() - started
        self.check_replicas_in_sync()
        for callback in self.callbacks:
            callback.on_train_end(self)

    def finish_step(self, batch: StepBatch, stats: UpdateStats, seconds: float) -> StepEnd:
        """Gather every rank's rewards (a collective) and feed the run's own records. The training
        reward is the sampled prompts' (the greedy prompt's, when it competes, is logged apart)."""
        sampled = batch.sampled_conversations()
        rewards = self._gather(batch.raw_reward[sampled])
        parts = {k: self._gather(v[sampled]) for k, v in batch.parts.items()}
        self.reward_stats.update(rewards)
        self.track_learning(batch, float(rewards.mean()), stats)
        return StepEnd(batch, stats, seconds, rewards, parts)

    def track_learning(self, batch: StepBatch, mean_reward: float, stats: UpdateStats) -> None:
        """Feed the LearningLog: step reward, sampled task-level prompts, greedy prompt at checkpoints."""
        sampled = batch.sampled_conversations()
        rows = len(batch.rollout) if batch.sampled < 0 else batch.sampled
        prompts = batch.rollout.prompts[:rows]
        diagnostics = step_diagnostics(prompts, batch.group[sampled], batch.raw_reward[sampled])
        diagnostics.update(entropy=stats.entropy, kl=stats.kl, lr=self.optimizer.param_groups[0]["lr"])
        if not sampled.all():  # the greedy prompt's reward on the step's scenarios (all ranks)
            diagnostics["greedy_reward"] = float(self._gather(batch.raw_reward[~sampled]).mean())
        self.learning.record_step(self.step_index, mean_reward, diagnostics, self.step_scenario_ids)
        if self.config.conditioning != "task_level":
            return
        means, counts = per_prompt_mean(batch.raw_reward[sampled], batch.prompt_index[sampled], rows)
        self.learning.record_samples(
            self.step_index, prompts, batch.rollout.actions[:rows].tolist(), means.tolist(), counts.tolist()
        )
        every = max(1, math.ceil(self.cfg.steps / max(1, self.config.select_checkpoints)))
        if self.config.select_checkpoints and (
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

    def load_state(self, shared: dict, mine: dict) -> None:
        """Continue from a checkpoint: `shared` = `state()`, `mine` = this rank's `rank_state()` +
        counters (CheckpointCallback reads and checks them)."""
        self.step_index = shared["step"]
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
