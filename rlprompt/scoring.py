"""Score one system prompt on a split, module by module: the reward audit behind scripts/score.py.

For each module: mean with a 95 % percentile-bootstrap CI over scenarios, and its cost in
seconds per scored conversation, so "is this reward worth its CPU time" is answered by a table.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from rlprompt.conversation import run_conversations
from rlprompt.evaluation import Interval, bootstrap_ci
from rlprompt.rewards.factory import RewardSetup
from rlprompt.targets.base import GenerationParams, Target
from rlprompt.task import Task


@dataclass
class ModuleRow:
    name: str
    weight: float
    low: float
    high: float
    interval: Interval
    seconds_per_conversation: float


@dataclass
class ScoreReport:
    split: str
    n: int
    system_prompt: str | None
    total: Interval
    modules: list[ModuleRow]
    rollout_seconds_per_conversation: float  # target replies (+ simulated customer turns)
    example_reply: str
    example_reasons: dict[str, str]

    def table(self) -> str:
        prompt = "(no system prompt)" if self.system_prompt is None else repr(self.system_prompt[:90])
        lines = [
            f"split={self.split}  n={self.n}  prompt={prompt}",
            f"{'module':<12} {'weight':>6} {'range':>11} {'mean':>7} {'95% CI':>17} {'s/conv':>8}",
        ]
        for m in self.modules:
            ci = f"[{m.interval.low:.3f}, {m.interval.high:.3f}]"
            lines.append(
                f"{m.name:<12} {m.weight:>6.2f} {f'[{m.low:g}, {m.high:g}]':>11} {m.interval.mean:>7.3f} "
                f"{ci:>17} {m.seconds_per_conversation:>8.3f}"
            )
        ci = f"[{self.total.low:.3f}, {self.total.high:.3f}]"
        reward_s = sum(m.seconds_per_conversation for m in self.modules)
        lines.append(f"{'total':<12} {'':>6} {'':>11} {self.total.mean:>7.3f} {ci:>17} {reward_s:>8.3f}")
        lines.append(
            f"rollout (target + simulated customer): {self.rollout_seconds_per_conversation:.3f} s/conv"
        )
        lines.append(f"example reply: {self.example_reply[:200]!r}")
        lines.extend(f"  {name}: {reason[:160]}" for name, reason in self.example_reasons.items())
        return "\n".join(lines)


def score_prompt(
    task: Task,
    split: str,
    system_prompt: str | None,
    target: Target,
    reward: RewardSetup,
    params: GenerationParams,
    turns: int = 0,
    limit: int | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
) -> ScoreReport:
    """Play every scenario of `split` (or the first `limit`) with `system_prompt` and score it."""
    scenarios = task.split(split)[:limit] if limit else task.split(split)
    started = time.perf_counter()
    samples = run_conversations(
        target, scenarios, [system_prompt] * len(scenarios), params, turns, reward.customer
    )
    rollout_s = time.perf_counter() - started
    batch = reward.reward.score(samples)
    n = len(samples)
    rows = [
        ModuleRow(
            name=name,
            weight=weight,
            low=module.low,
            high=module.high,
            interval=bootstrap_ci(batch.parts[name].numpy(), confidence, n_boot),
            seconds_per_conversation=batch.seconds[name] / n,
        )
        for name, (module, weight) in reward.reward.modules.items()
    ]
    return ScoreReport(
        split=split,
        n=n,
        system_prompt=system_prompt,
        total=bootstrap_ci(np.asarray(batch.total), confidence, n_boot),
        modules=rows,
        rollout_seconds_per_conversation=rollout_s / n,
        example_reply=samples[0].first_reply,
        example_reasons={name: reasons[0] for name, reasons in batch.reasons.items()},
    )
