"""The reward protocol, the registry, and the weighted composition of modules.

A reward module scores whole conversations (the scenario's context + every message after the
system prompt, ending with the seller's last reply) and returns a score in its documented range
plus a short reason. Modules register by name (`@register_reward("rubric")`) and compose by
config with weights; per-module parts travel next to the total everywhere.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlprompt.errors import RewardError
from rlprompt.registry import Registry
from rlprompt.targets.base import Message
from rlprompt.task import Scenario, Task

REWARDS: Registry = Registry("reward")


def register_reward(name: str):
    """Register a reward module class (or factory) under `name`."""
    return REWARDS.register(name)


@dataclass
class Sample:
    """One conversation to score."""

    scenario: Scenario
    conversation: list[Message]  # history + customer turn + seller reply [+ further turns]; no system message
    system_prompt: str | None = (
        None  # the prompt that produced the seller's replies (for audits, not scoring)
    )

    @property
    def seller_replies(self) -> list[str]:
        return [m["content"] for m in self.conversation if m["role"] == "assistant"][
            len(self._history_replies()) :
        ]

    def _history_replies(self) -> list[str]:
        return [m["content"] for m in self.scenario.history if m["role"] == "assistant"]

    @property
    def first_reply(self) -> str:
        return self.seller_replies[0] if self.seller_replies else ""


REPLY_MODES = ("first", "all")


def replies_to_score(sample: Sample, which: str) -> list[str]:
    """The seller replies a text module scores: the first (stage-aware checks fit it) or all of them.

    Always at least one string, so an empty conversation scores as an empty reply (0), never crashes.
    """
    if which not in REPLY_MODES:
        raise RewardError(f"replies='{which}' is not valid. Valid: {', '.join(REPLY_MODES)}")
    replies = sample.seller_replies or [""]
    return replies[:1] if which == "first" else replies


@dataclass
class RewardResult:
    score: float
    reason: str = ""


class RewardModule(Protocol):
    """What a reward module provides. `low`/`high` document (and enforce) its range."""

    low: float
    high: float

    def score(self, samples: list[Sample]) -> list[RewardResult]: ...


@dataclass
class RewardBatch:
    total: torch.Tensor  # (N,) weighted sum of module scores
    parts: dict[str, torch.Tensor]  # module name → (N,) raw module score
    reasons: dict[str, list[str]] = field(default_factory=dict)  # module name → N reasons
    seconds: dict[str, float] = field(default_factory=dict)  # module name → wall time for this batch

    def mean_parts(self) -> dict[str, float]:
        return {name: float(v.mean()) for name, v in self.parts.items()}


class RewardFunction:
    """Weighted sum of registered modules; refuses NaN and out-of-range scores loudly."""

    def __init__(self, modules: dict[str, tuple[RewardModule, float]]) -> None:
        if not modules:
            raise RewardError("the reward has no modules: set reward.modules, e.g. {rubric: 1.0}")
        self.modules = modules

    def bounds(self) -> tuple[float, float]:
        """The weighted sum's range: PPO's linear reward shaping and the gateway's normalisation
        map rewards through it, so a negative weight swaps its module's ends."""
        low = sum(min(w * m.low, w * m.high) for m, w in self.modules.values())
        high = sum(max(w * m.low, w * m.high) for m, w in self.modules.values())
        return low, high

    def score(self, samples: list[Sample]) -> RewardBatch:
        parts: dict[str, torch.Tensor] = {}
        reasons: dict[str, list[str]] = {}
        seconds: dict[str, float] = {}
        total = torch.zeros(len(samples), dtype=torch.float64)
        for name, (module, weight) in self.modules.items():
            started = time.perf_counter()
            results = module.score(samples)
            seconds[name] = time.perf_counter() - started
            if len(results) != len(samples):
                raise RewardError(
                    f"reward module '{name}' returned {len(results)} scores for {len(samples)} samples"
                )
            for sample, result in zip(samples, results):
                check_score(name, module, sample, result.score)
            values = torch.tensor([r.score for r in results], dtype=torch.float64)
            parts[name] = values
            reasons[name] = [r.reason for r in results]
            total += weight * values
        return RewardBatch(total=total, parts=parts, reasons=reasons, seconds=seconds)


def check_score(name: str, module: RewardModule, sample: Sample, score: float) -> None:
    if not isinstance(score, (int, float)) or math.isnan(score) or not (module.low <= score <= module.high):
        raise RewardError(
            f"reward module '{name}' returned {score!r}, outside its range [{module.low}, {module.high}], "
            f"for scenario '{sample.scenario.id}' with reply {sample.first_reply[:200]!r}. "
            "A bad score is never averaged in: fix the module (or the sample) and rerun"
        )


def build_reward(
    task: Task, modules: dict[str, float], options: dict[str, dict[str, Any]] | None = None, **shared: Any
) -> RewardFunction:
    """Instantiate each named module with the task, its options and the shared resources it asks for."""
    options = options or {}
    unknown = set(options) - set(modules)
    if unknown:
        raise RewardError(f"reward.options names '{sorted(unknown)[0]}', which is not in reward.modules")
    built = {}
    for name, weight in modules.items():
        factory = REWARDS.get(name)
        built[name] = (factory(task=task, **options.get(name, {}), **_wanted(factory, shared)), float(weight))
    return RewardFunction(built)


def _wanted(factory: Any, shared: dict[str, Any]) -> dict[str, Any]:
    """Pass only the shared resources (e.g. `judge_target`) that the factory's signature names."""
    import inspect

    params = inspect.signature(factory).parameters
    return {k: v for k, v in shared.items() if k in params}
