"""One protocol for every prompt optimizer, with one currency: calls to the target LLM.

An optimizer is built from an `OptimizerContext` (the task, a budgeted target, the reward, the run
folder) by its registered factory and returns an `OptimizerResult`: its final prompt(s) as a
`PromptSet` (the shape of prompts.json, rlprompt/prompt_set.py), so evaluation and export
treat every method alike, and its learning curve (best-so-far training reward against target
calls spent). The budget is enforced by the target's `CallCounter`: a batch that would overspend
raises `BudgetExhausted` before any call is made, so no optimizer can exceed it (docs/OPTIMIZERS.md).

Fairness: with `optimizer.private_cache` (default) optimization replies are cached in the run
folder only, so a method never gets another method's (or an earlier run's) replies for free; its
own repeats are free, as any caching client's would be.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rlprompt.build import build_cache, build_target, generation_params, set_threads
from rlprompt.config import OptimizerConfig, RunConfig
from rlprompt.env.conversation import run_conversations
from rlprompt.ppo.checkpoint import write_json
from rlprompt.prompt_set import PromptEntry, PromptSet, write_prompts
from rlprompt.registry import Registry
from rlprompt.rewards.base import RewardBatch
from rlprompt.rewards.factory import RewardSetup, reward_from_config
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.cache import CachedTarget, CallCounter, ResponseCache
from rlprompt.task import Scenario, Task, load_task

if TYPE_CHECKING:
    from rlprompt.optimizers.llm import OptimizerLLM

log = logging.getLogger(__name__)

Curve = list[tuple[int, float]]  # (target calls spent, best-so-far training reward)


@dataclass
class OptimizerResult:
    """What every optimizer hands back; `prompts` is written as prompts.json."""

    method: str
    seed: int
    prompts: PromptSet
    curve: Curve
    target_calls: int
    budget: int | None
    optimizer_llm_calls: int = 0  # calls of the LLM that writes candidates (not the target budget)
    seconds: float = 0.0
    run_dir: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        out["prompts"] = self.prompts.to_dict()
        out["curve"] = [list(p) for p in self.curve]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OptimizerResult:
        return cls(
            **{
                **data,
                "prompts": PromptSet.from_dict(data["prompts"]),
                "curve": [(int(c), float(r)) for c, r in data["curve"]],
            }
        )


class Optimizer(Protocol):
    def run(self) -> OptimizerResult: ...


OptimizerFactory = Callable[["OptimizerContext"], Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
OPTIMIZER_CONFIGS: Registry[type[OptimizerConfig]] = Registry("optimizer")


def register_optimizer(
    name: str, config: type[OptimizerConfig]
) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Register an optimizer class (or factory taking an `OptimizerContext`) under `name`, with the
    dataclass of its `optimizer.*` settings (what `rlprompt.config.validate` checks keys against)."""
    OPTIMIZER_CONFIGS.register(name)(config)
    return OPTIMIZERS.register(name)


@dataclass
class PromptSearchConfig(OptimizerConfig):
    """The settings of every method that scores whole prompts on a fixed training subset."""

    score_subset: int = 8  # training scenarios a prompt is scored on (target calls per prompt)


class BestSoFar:
    """Builds a learning curve: each point is the best training reward seen up to that call count."""

    def __init__(self, points: Curve | None = None) -> None:
        self.points: Curve = list(points or [])
        self.best = max((r for _, r in self.points), default=-math.inf)

    def add(self, calls: int, reward: float) -> None:
        self.best = max(self.best, float(reward))
        self.points.append((int(calls), self.best))


class OptimizerContext:
    """Everything an optimizer may use, built lazily so a method pays only for what it touches."""

    def __init__(self, run: RunConfig, run_dir: Path) -> None:
        self.run, self.cfg = run, run.optimizer
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.resume_dir = Path(run.resume) if run.resume else None
        # Built on first use; whether they were (a method that never scored spent no calls) is
        # what `result` and the bandit's state read.
        self._target: CachedTarget | None = None
        self._llm: OptimizerLLM | None = None

    # ------------------------------------------------------------------ built on first use

    @cached_property
    def task(self) -> Task:
        return load_task(self.run.task.name, self.run.task.path)

    @cached_property
    def private_run(self) -> RunConfig:
        """The run config with the response cache moved into the run folder (see module docstring)."""
        if not (self.cfg.private_cache and self.run.cache.enabled):
            return self.run
        folder = self.resume_dir or self.run_dir
        return replace(self.run, cache=replace(self.run.cache, path=str(folder / "responses.sqlite")))

    @cached_property
    def cache(self) -> ResponseCache | None:
        return build_cache(self.private_run.cache)

    @property
    def target(self) -> CachedTarget:
        """The budgeted target: `target.counter.calls` never exceeds `optimizer.budget`."""
        if self._target is None:
            self._target = build_target(self.run.target, self.cache, budget=self.cfg.budget)
        return self._target

    @cached_property
    def reward(self) -> RewardSetup:
        return reward_from_config(self.run.reward, self.task, self.cache)

    @cached_property
    def params(self) -> GenerationParams:
        return generation_params(self.run.target, self.run.seed)

    @cached_property
    def bounds(self) -> tuple[float, float]:
        return self.reward.reward.bounds()

    @cached_property
    def train(self) -> list[Scenario]:
        return self.task.split("train")

    @property
    def llm(self) -> OptimizerLLM:
        """The optimizer LLM (OPRO proposals, bandit mutations); its calls have their own counter."""
        if self._llm is None:
            from rlprompt.optimizers.llm import OptimizerLLM

            self._llm = OptimizerLLM(self.run, self.cache)
        return self._llm

    def llm_counter(self) -> CallCounter | None:
        """The optimizer LLM's call counter, or None while no LLM was built (no call made)."""
        return self._llm.counter if self._llm is not None else None

    # ------------------------------------------------------------------ helpers

    def score_subset(self, n: int | None = None) -> list[Scenario]:
        """A fixed training subset (depends on the seed only, so a resumed run scores on the same one)."""
        n = min(n or self.cfg.score_subset, len(self.train))
        return random.Random(f"subset-{self.run.seed}").sample(self.train, n)

    def score(self, system_prompts: list[str | None], scenarios: list[Scenario]) -> RewardBatch:
        """Play each (prompt, scenario) pair through the budgeted target and score it."""
        samples = run_conversations(
            self.target, scenarios, system_prompts, self.params, self.run.reward.turns, self.reward.customer
        )
        return self.reward.reward.score(samples)

    def mean_reward(self, system_prompt: str, scenarios: list[Scenario]) -> float:
        return float(self.score([system_prompt] * len(scenarios), scenarios).total.mean())

    def normalize(self, reward: float) -> float:
        """Raw reward → [0, 1] with the reward's documented bounds (as PPO's shaping does)."""
        low, high = self.bounds
        return min(1.0, max(0.0, (reward - low) / (high - low))) if high > low else 0.0

    def document(
        self,
        method: str,
        task_level: PromptEntry,
        per_context: dict[str, PromptEntry] | None = None,
        *,
        source_model: str,
        action_space: str = "text",
        prompt_template: str = "{learned}",
    ) -> PromptSet:
        """The method's prompt set (the same fields as `ppo.run.learned_prompts` fills)."""
        return PromptSet(
            task=self.task.name,
            method=method,
            source_model=source_model,
            target_model=self.run.target.model,
            action_space=action_space,
            conditioning="context_conditioned" if per_context else "task_level",
            prompt_template=prompt_template,
            base_instruction=self.task.base_instruction,
            task_level=task_level,
            per_context=per_context or {},
        )

    def result(self, method: str, prompts: PromptSet, curve: Curve, **extra: Any) -> OptimizerResult:
        llm = self.llm_counter()
        return OptimizerResult(
            method=method,
            seed=self.run.seed,
            prompts=prompts,
            curve=curve,
            target_calls=self._target.counter.calls if self._target is not None else 0,
            budget=self.cfg.budget,
            optimizer_llm_calls=llm.calls if llm is not None else 0,
            run_dir=str(self.run_dir),
            extra=extra,
        )

    # ------------------------------------------------------------------ resumable state

    def save_state(self, name: str, state: dict[str, Any]) -> None:
        """Atomic JSON state in the run folder, written after every step (resume=<run dir>)."""
        write_json(self.run_dir / name, state)

    def load_state(self, name: str) -> dict[str, Any] | None:
        if self.resume_dir is None or not (self.resume_dir / name).exists():
            return None
        log.info("resuming from %s", self.resume_dir / name)
        return json.loads((self.resume_dir / name).read_text())


def run_optimizer(run: RunConfig, run_dir: Path) -> OptimizerResult:
    """Build the context, run `optimizer.name`, write prompts.json / prompt.txt / result.json."""
    import rlprompt.optimizers  # noqa: F401  (registers the built-in optimizers)
    from rlprompt.ppo.run import seed_everything

    set_threads(run)
    seed_everything(run.seed)
    factory = OPTIMIZERS.get(run.optimizer.name)
    ctx = OptimizerContext(run, run_dir)
    started = time.perf_counter()
    result = factory(ctx).run()
    result.seconds = time.perf_counter() - started
    if run.optimizer.budget is not None and result.target_calls > run.optimizer.budget:
        raise AssertionError(f"{result.method} spent {result.target_calls} > budget {run.optimizer.budget}")
    write_prompts(ctx.run_dir, result.prompts)
    write_json(ctx.run_dir / "result.json", result.to_dict())
    return result
