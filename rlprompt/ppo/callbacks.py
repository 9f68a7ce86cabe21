"""What happens around the PPO loop, as callbacks: TensorBoard logging and checkpoints.

Why callbacks: the loop (rlprompt/ppo/trainer.py) is rollout → update; what a run records and where
it saves differs between `rlprompt train`, the budgeted `ppo` optimizer (which adds its learning
curve, rlprompt/optimizers/ppo.py) and tests. Each is a `TrainerCallback` the trainer calls in
list order on every rank; a callback decides itself what only the main process does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from rlprompt.ppo.checkpoint import Checkpointer, check_trainable_state
from rlprompt.ppo.update import StepBatch, UpdateStats
from rlprompt.targets.cache import BudgetExhausted

if TYPE_CHECKING:
    from rlprompt.ppo.trainer import PPOTrainer

log = logging.getLogger(__name__)


@dataclass
class StepEnd:
    """A finished step as the callbacks see it (`rewards` / `parts`: every rank's, gathered)."""

    batch: StepBatch  # this rank's experience
    stats: UpdateStats
    seconds: float
    rewards: torch.Tensor
    parts: dict[str, torch.Tensor]


class TrainerCallback(Protocol):
    def on_train_begin(self, trainer: PPOTrainer) -> None: ...

    def on_step_end(self, trainer: PPOTrainer, step: StepEnd) -> None: ...

    def on_stop(self, trainer: PPOTrainer, failure: BaseException, rng_before: dict) -> None: ...

    def on_train_end(self, trainer: PPOTrainer) -> None: ...


class Callback:
    """A `TrainerCallback` that does nothing: subclasses override the hooks they need."""

    def on_train_begin(self, trainer: PPOTrainer) -> None:
        pass

    def on_step_end(self, trainer: PPOTrainer, step: StepEnd) -> None:
        pass

    def on_stop(self, trainer: PPOTrainer, failure: BaseException, rng_before: dict) -> None:
        pass

    def on_train_end(self, trainer: PPOTrainer) -> None:
        pass


class TensorBoardLogger(Callback):
    """Scalars every `log_every` steps into `<run dir>/tb` (main process only)."""

    def __init__(self, folder: Path, log_every: int, is_main: bool) -> None:
        self.log_every = log_every
        self.writer = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(folder))

    def on_step_end(self, trainer: PPOTrainer, step: StepEnd) -> None:
        if self.writer is None or trainer.step_index % self.log_every:
            return
        rewards, counter = step.rewards, trainer.target.counter
        scalars = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            **{f"reward/{k}": float(v.mean()) for k, v in step.parts.items()},
            **{f"ppo/{k}": v for k, v in step.stats.as_dict().items()},
            "budget/target_calls": counter.calls,  # this rank's; summary.json holds all ranks' total
            "budget/cache_hit_rate": counter.hit_rate,
            **{f"budget/{name}_calls": c.calls for name, c in trainer.reward.counters.items()},
            **{f"diag/{k}": v for k, v in trainer.learning.diagnostics[-1].items()},
            "time/steps_per_s": 1.0 / max(step.seconds, 1e-9),
            **{f"time/{name}_s": value for name, value in trainer.phases.seconds.items()},
        }
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, trainer.step_index)

    def on_train_end(self, trainer: PPOTrainer) -> None:
        if self.writer:
            self.writer.flush()


class CheckpointCallback(Callback):
    """Resume at the start, a checkpoint every `every` steps and at the last, and the last whole
    step when a rollout fails (docs/RELIABILITY.md). What is saved is `trainer.state()` (shared)
    and `trainer.rank_state()` + counters (per rank); `Checkpointer` writes it atomically."""

    def __init__(self, folder: Path, every: int, resume: Path | None, meta: dict | None = None) -> None:
        self.folder, self.every, self.resume, self.meta = Path(folder), every, resume, meta

    def on_train_begin(self, trainer: PPOTrainer) -> None:
        if self.resume is not None:
            self.load(trainer, self.resume)

    def on_step_end(self, trainer: PPOTrainer, step: StepEnd) -> None:
        if trainer.step_index % self.every == 0 or trainer.step_index == trainer.cfg.steps:
            self.save(trainer)

    def on_stop(self, trainer: PPOTrainer, failure: BaseException, rng_before: dict) -> None:
        # A spent budget keeps the last whole step unless it was just saved; a failed target
        # saves it always, with the RNG streams as they were before the step (resume redoes it).
        if not isinstance(failure, BudgetExhausted) or trainer.step_index % self.every:
            self.save(trainer, rng_before)

    def save(self, trainer: PPOTrainer, rng: dict | None = None) -> None:
        """Checkpoint the last whole step. The rank file holds the RNG streams (`rng`: as they were
        before a failed step, so resume redoes it) and the counters as they are (every paid call)."""
        checkpointer = Checkpointer(self.folder, trainer.rank, trainer.is_main, meta=self.meta)
        rank_file = {**(rng or trainer.rank_state()), "counters": trainer.counter_state()}
        checkpointer.save(trainer.step_index, trainer.state(), rank_file, trainer.accelerator)

    def load(self, trainer: PPOTrainer, run_dir: Path) -> None:
        shared, mine = Checkpointer(run_dir / "checkpoints", trainer.rank, trainer.is_main).load_latest()
        # Names and shapes checked here, so strict=False only skips the frozen backbone (not saved).
        check_trainable_state(trainer.policy.trainable_state(), shared["policy"])
        trainer.load_state(shared, mine)
        if trainer.is_main:
            log.info("resumed from %s at step %d", run_dir, trainer.step_index)
