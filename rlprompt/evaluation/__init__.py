"""Scoring prompts: the one evaluation entry point, the per-module audit, export of prompt sets.

The entry point and its statistics are importable from here (`from rlprompt.evaluation import
Evaluator, bootstrap_ci`) as well as from `rlprompt.evaluation.evaluate`.
"""

from rlprompt.evaluation.evaluate import (
    EvalResult,
    Evaluator,
    Interval,
    bootstrap_ci,
    build_evaluator,
    paired_difference,
    select_scenarios,
    win_rate,
)

__all__ = [
    "EvalResult",
    "Evaluator",
    "Interval",
    "bootstrap_ci",
    "build_evaluator",
    "paired_difference",
    "select_scenarios",
    "win_rate",
]
