"""The PPO prompt policies as optimizers: `ppo` (token policy) and `components` (phrase bank).

Both run the `PPOTrainer` (rlprompt/ppo/trainer.py): its target is built with `optimizer.budget`
and its loop stops on `BudgetExhausted`, so the wrapper only sets the step count (with a budget,
the budget is what stops it), records the learning curve after each step (a `CurveTracker`
callback) and reads the greedy prompts with `ppo.run.learned_prompts`. `components` is the same PPO
with the task's phrase bank as its action set (the component-selection design).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from rlprompt.config import RunConfig
from rlprompt.errors import ConfigError
from rlprompt.optimizers.base import (
    BestSoFar,
    OptimizerContext,
    OptimizerResult,
    register_optimizer,
    write_json,
)
from rlprompt.ppo.callbacks import Callback, StepEnd
from rlprompt.ppo.config import PPOConfig
from rlprompt.ppo.trainer import PPOTrainer
from rlprompt.prompt_set import PromptSet

CURVE_FILE = "curve.json"


class CurveTracker(Callback):
    """One learning-curve point per step (target calls so far, best-so-far mean raw reward of this
    rank's conversations), saved after every step so a resumed run continues the curve."""

    def __init__(self, path: Path, resume_dir: Path | None) -> None:
        self.path = path
        points = []
        if resume_dir is not None and (resume_dir / CURVE_FILE).exists():
            points = json.loads((resume_dir / CURVE_FILE).read_text())
        self.curve = BestSoFar([tuple(p) for p in points])

    def on_step_end(self, trainer: PPOTrainer, step: StepEnd) -> None:
        self.curve.add(trainer.target.counter.calls, float(step.batch.raw_reward.mean()))
        write_json(self.path, self.curve.points)


class PPOOptimizer:
    """Token-policy PPO (RLPrompt) under a call budget."""

    method = "ppo"

    def __init__(self, ctx: OptimizerContext) -> None:
        self.ctx = ctx

    def configure(self, run: RunConfig) -> RunConfig:
        return run

    def run(self) -> OptimizerResult:
        from rlprompt.build import check_run
        from rlprompt.ppo.run import build_trainer, learned_prompts

        run = self.configure(self.ctx.private_run)
        check_run(run)  # after configure (components checks its action space), before models load
        budget = run.optimizer.budget
        if budget is not None and run.optimizer.steps > 0:
            # Every step spends at most C×G calls and almost always at least one, so `budget` steps
            # is an upper bound that lets the budget, not the step count, end the run. steps=0 stays
            # 0 under any budget: the untrained policy's greedy prompt (the ablation's control).
            run = replace(run, optimizer=replace(run.optimizer, steps=max(budget, 1)))
        curve = CurveTracker(self.ctx.run_dir / CURVE_FILE, self.ctx.resume_dir)
        trainer = build_trainer(run, self.ctx.run_dir, callbacks=[curve])
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        prompts = learned_prompts(trainer, run).with_method(self.method)
        usage = self.usage(trainer, prompts)
        return OptimizerResult(
            method=self.method,
            seed=run.seed,
            prompts=prompts,
            curve=curve.curve.points,
            target_calls=trainer.target.counter.calls,
            budget=budget,
            seconds=seconds,
            run_dir=str(self.ctx.run_dir),
            extra={"steps": trainer.step_index, "usage": usage},
        )

    def usage(self, trainer: PPOTrainer, prompts: PromptSet) -> dict[str, int]:
        """How often each learned token (word) appears across the greedy prompts."""
        return dict(Counter(word for e in prompts.entries for word in e.text.split()).most_common(30))


@register_optimizer("ppo", PPOConfig)
def _ppo(ctx: OptimizerContext) -> PPOOptimizer:
    return PPOOptimizer(ctx)


class ComponentsOptimizer(PPOOptimizer):
    """PPO over the task's phrase bank. `optimizer=components` selects `policy=components` in its
    own defaults list (configs/optimizer/components.yaml), so no setting is forced here; a policy
    over another action set is a contradiction, refused before any model loads."""

    method = "components"

    def configure(self, run: RunConfig) -> RunConfig:
        if run.policy.action_space != "components":
            raise ConfigError(
                f"optimizer=components trains a policy over the task's phrase bank, but "
                f"policy.action_space is '{run.policy.action_space}'. Drop the policy override "
                "(optimizer=components selects policy=components) or use optimizer=ppo for tokens."
            )
        return run

    def usage(self, trainer: PPOTrainer, prompts: PromptSet) -> dict[str, int]:
        """How often each component is chosen across the greedy per-context prompts."""
        names = [c.name for c in trainer.task.components]
        return dict(Counter(names[i] for e in prompts.entries for i in set(e.action_ids)))


@register_optimizer("components", PPOConfig)
def _components(ctx: OptimizerContext) -> ComponentsOptimizer:
    return ComponentsOptimizer(ctx)
