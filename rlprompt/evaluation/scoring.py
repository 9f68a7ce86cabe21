"""Score one system prompt on a split, module by module: the reward audit behind scripts/score.py.

For each module: mean with a 95 % percentile-bootstrap CI over scenarios, and its cost in
seconds per scored conversation, so "is this reward worth its CPU time" is answered by a table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rlprompt.evaluation.evaluate import Evaluator, Interval, bootstrap_ci


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
    evaluator: Evaluator,
    split: str,
    system_prompt: str | None,
    limit: int | None = None,
    confidence: float = 0.95,
    n_boot: int = 2000,
) -> ScoreReport:
    """Play every scenario of `split` (or the first `limit`) with `system_prompt` and score it.

    One batch (so the module timings are per conversation of one scoring call), through
    `Evaluator.evaluate` like every other score.
    """
    task = evaluator.task
    scenarios = task.split(split)[:limit] if limit else task.split(split)
    one_batch = replace(evaluator, batch_size=max(len(scenarios), 1))
    result = one_batch.evaluate(split, system_prompt, scenarios)
    n = len(result.rewards)
    rows = [
        ModuleRow(
            name=name,
            weight=weight,
            low=module.low,
            high=module.high,
            interval=bootstrap_ci(result.parts[name], confidence, n_boot),
            seconds_per_conversation=result.module_seconds[name] / n,
        )
        for name, (module, weight) in evaluator.reward.reward.modules.items()
    ]
    return ScoreReport(
        split=split,
        n=n,
        system_prompt=system_prompt,
        total=bootstrap_ci(result.rewards, confidence, n_boot),
        modules=rows,
        rollout_seconds_per_conversation=result.rollout_seconds / n,
        example_reply=result.replies[0],
        example_reasons={name: reasons[0] for name, reasons in result.reasons.items()},
    )
