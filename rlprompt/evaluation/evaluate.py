"""Held-out evaluation with bootstrap confidence intervals: the one place prompts are scored.

Every method (PPO, OPRO, bandit, baselines) is scored the same way: a system prompt per
scenario, the target's greedy reply through the cache, the same reward, a percentile bootstrap
over scenarios for the 95 % CI — and a paired bootstrap for "learned minus baseline", which is
the comparison that matters when both prompts answer the same scenarios.

`Evaluator.evaluate` is the single entry point: a training run's summary, the comparison, the
transfer matrix, an export's re-scoring and the per-module audit (scoring.py) all call it, so a
score can only differ between them through the settings an `Evaluator` holds.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from rlprompt.env.conversation import run_conversations
from rlprompt.prompt_set import PromptSet
from rlprompt.targets.base import GenerationParams, Target
from rlprompt.task import Scenario, Task

if TYPE_CHECKING:
    from rlprompt.config import RunConfig
    from rlprompt.rewards.factory import RewardSetup

PromptFor = Callable[[Scenario], "str | None"]  # the system prompt a method uses for a scenario
# What a method plays: its prompt set, a lookup, or one system prompt (None: none) for every scenario.
Prompts = PromptSet | PromptFor | str | None


@dataclass
class Interval:
    mean: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high}

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass
class EvalResult:
    split: str
    scenario_ids: list[str]
    rewards: np.ndarray  # (N,) total reward per scenario
    parts: dict[str, np.ndarray]  # module → (N,)
    system_prompts: list[str | None]
    replies: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # module → one reason per scenario
    module_seconds: dict[str, float] = field(default_factory=dict)  # module → scoring wall time
    rollout_seconds: float = 0.0  # target replies (+ simulated customer turns) wall time

    def interval(self, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
        return bootstrap_ci(self.rewards, confidence, n_boot, seed)

    def summary(self, confidence: float = 0.95, n_boot: int = 2000) -> dict:
        return {
            "n": len(self.rewards),
            "reward": self.interval(confidence, n_boot).as_dict(),
            "parts": {k: bootstrap_ci(v, confidence, n_boot).as_dict() for k, v in self.parts.items()},
        }


def bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean (Efron & Tibshirani 1993, ch. 13)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("cannot bootstrap an empty sample")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return Interval(
        float(values.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))
    )


def paired_difference(a: EvalResult, b: EvalResult, confidence: float = 0.95, n_boot: int = 2000) -> Interval:
    """CI of mean(a - b) over the same scenarios, resampling scenarios jointly."""
    if a.scenario_ids != b.scenario_ids:
        raise ValueError("paired comparison needs the same scenarios in the same order")
    return bootstrap_ci(a.rewards - b.rewards, confidence, n_boot)


def win_rate(a: EvalResult, b: EvalResult) -> float:
    """Share of scenarios where a beats b (ties count half)."""
    diff = a.rewards - b.rewards
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / len(diff))


def prompt_lookup(prompts: Prompts) -> PromptFor:
    """Scenario → system prompt for anything a method plays."""
    if isinstance(prompts, PromptSet):
        return prompts.system_prompt_for
    if prompts is None or isinstance(prompts, str):
        return lambda scenario: prompts
    return prompts


@dataclass
class Evaluator:
    """Everything a score depends on besides the prompt. `max_scenarios` picks the evenly spread
    subset of `select_scenarios`; `turns` simulated-customer turns follow the first reply."""

    task: Task
    target: Target
    reward: RewardSetup
    params: GenerationParams
    max_scenarios: int | None = None
    turns: int = 0
    batch_size: int = 64

    def evaluate(self, split: str, prompts: Prompts, scenarios: list[Scenario] | None = None) -> EvalResult:
        """Score one method on a split (or on `scenarios` of it); batches go through the target's cache."""
        if scenarios is None:
            scenarios = select_scenarios(self.task, split, self.max_scenarios)
        lookup = prompt_lookup(prompts)
        system_prompts = [lookup(s) for s in scenarios]
        totals, parts, replies, reasons, seconds, rollout = [], {}, [], {}, {}, 0.0
        for start in range(0, len(scenarios), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            started = time.perf_counter()
            samples = run_conversations(
                self.target,
                scenarios[chunk],
                system_prompts[chunk],
                self.params,
                self.turns,
                self.reward.customer,
            )
            rollout += time.perf_counter() - started
            batch = self.reward.reward.score(samples)
            totals.append(batch.total)
            for name, values in batch.parts.items():
                parts.setdefault(name, []).append(values)
            for name, why in batch.reasons.items():
                reasons.setdefault(name, []).extend(why)
            for name, spent in batch.seconds.items():
                seconds[name] = seconds.get(name, 0.0) + spent
            replies.extend(s.first_reply for s in samples)
        return EvalResult(
            split=split,
            scenario_ids=[s.id for s in scenarios],
            rewards=torch.cat(totals).numpy(),
            parts={k: torch.cat(v).numpy() for k, v in parts.items()},
            system_prompts=system_prompts,
            replies=replies,
            reasons=reasons,
            module_seconds=seconds,
            rollout_seconds=rollout,
        )


def build_evaluator(
    run: RunConfig,
    task: Task,
    target: Target | None = None,
    reward: RewardSetup | None = None,
    role: str = "target",
) -> Evaluator:
    """The evaluator of a run's config: its target (built with the run's cache under `role` unless
    given), reward, generation params (seeded by `run.seed`), `eval.max_scenarios` and turns."""
    from rlprompt.build import build_cache, build_target, generation_params
    from rlprompt.rewards.factory import reward_from_config

    cache = build_cache(run.cache) if target is None or reward is None else None
    target = target if target is not None else build_target(run.target, cache, role=role)
    reward = reward if reward is not None else reward_from_config(run.reward, task, cache)
    params = generation_params(run.target, run.seed)
    return Evaluator(task, target, reward, params, run.eval.max_scenarios, run.reward.turns)


def select_scenarios(task: Task, split: str, max_scenarios: int | None) -> list[Scenario]:
    """The split, or a deterministic subset that spreads over stages, personas and urgency levels.

    Scenarios are taken round-robin: the first of every context (stages interleaved), then the
    second, ... so a small subset still covers every stage instead of one corner of the grid.
    """
    scenarios = task.split(split)
    if max_scenarios is None or max_scenarios >= len(scenarios):
        return scenarios
    rounds: dict[int, dict[str, list[Scenario]]] = {}
    seen: dict[tuple, int] = {}
    for s in scenarios:
        nth = seen[s.context] = seen.get(s.context, -1) + 1
        rounds.setdefault(nth, {st.name: [] for st in task.stages})[s.stage].append(s)
    picked: list[Scenario] = []
    for nth in sorted(rounds):
        buckets = list(rounds[nth].values())
        for bucket in buckets:  # personas and urgency levels mixed, reproducibly
            random.Random(nth).shuffle(bucket)
        picked.extend(s for group in itertools.zip_longest(*buckets) for s in group if s is not None)
    return picked[:max_scenarios]
