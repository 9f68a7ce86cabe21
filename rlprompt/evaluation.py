"""Held-out evaluation with bootstrap confidence intervals.

Every method (PPO, OPRO, bandit, baselines) is scored the same way: a system prompt per
scenario, the target's greedy reply through the cache, the same reward, a percentile bootstrap
over scenarios for the 95 % CI — and a paired bootstrap for "learned minus baseline", which is
the comparison that matters when both prompts answer the same scenarios.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from rlprompt.conversation import CustomerSimulator, run_conversations
from rlprompt.rewards.base import RewardFunction
from rlprompt.targets.base import GenerationParams, Target
from rlprompt.task import Scenario, Task

PromptFor = Callable[[Scenario], "str | None"]  # the system prompt a method uses for a scenario


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


def evaluate(
    task: Task,
    split: str,
    prompt_for: PromptFor,
    target: Target,
    reward: RewardFunction,
    params: GenerationParams,
    max_scenarios: int | None = None,
    turns: int = 0,
    customer: CustomerSimulator | None = None,
    batch_size: int = 64,
) -> EvalResult:
    """Score one method on a split; batches go through the target's cache."""
    scenarios = select_scenarios(task, split, max_scenarios)
    prompts = [prompt_for(s) for s in scenarios]
    totals, parts, replies = [], {}, []
    for start in range(0, len(scenarios), batch_size):
        chunk = slice(start, start + batch_size)
        samples = run_conversations(target, scenarios[chunk], prompts[chunk], params, turns, customer)
        batch = reward.score(samples)
        totals.append(batch.total)
        for name, values in batch.parts.items():
            parts.setdefault(name, []).append(values)
        replies.extend(s.first_reply for s in samples)
    return EvalResult(
        split=split,
        scenario_ids=[s.id for s in scenarios],
        rewards=torch.cat(totals).numpy(),
        parts={k: torch.cat(v).numpy() for k, v in parts.items()},
        system_prompts=prompts,
        replies=replies,
    )


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
