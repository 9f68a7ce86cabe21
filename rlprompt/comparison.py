"""Competing optimizers on one budget: run every method with the same target-call budget and seeds,
score every final prompt on the same held-out splits with the same reward, write the report.

Fairness rules (docs/OPTIMIZERS.md):
- every method gets `optimizer.budget` target calls per seed, enforced by its `CallCounter`;
  optimizer-LLM calls (OPRO proposals, bandit mutations) are counted apart and reported;
- optimization replies are cached per run folder (`optimizer.private_cache`), so no method rides
  on another's calls; evaluation uses the shared cache and its own counter (never the budget);
- evaluation is greedy, on `eval.max_scenarios` evenly spread scenarios of `test` and
  `heldout_persona`, identical for every method and seed, so differences are paired.

Aggregation over seeds: the method's reward is the mean over seeds of the per-seed means; its
CI is a percentile bootstrap over the pooled per-scenario rewards of all seeds; the win rate and
the paired difference against the hand-written prompt pool the (scenario, seed) pairs.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlprompt.build import build_cache, build_target, generation_params, set_threads
from rlprompt.checkpoint import write_json
from rlprompt.config import RunConfig
from rlprompt.evaluation import EvalResult, bootstrap_ci, evaluate
from rlprompt.optimizers.base import OptimizerResult, run_optimizer
from rlprompt.rewards.factory import reward_from_config
from rlprompt.task import Task, load_task
from rlprompt.training_run import prompt_lookup

log = logging.getLogger(__name__)
EVAL_SPLITS = ("test", "heldout_persona")
REFERENCE = "manual"  # the hand-written prompt every method is compared against


@dataclass(frozen=True)
class MethodSpec:
    label: str  # row name in the report
    overrides: tuple[str, ...]  # Hydra overrides that select and configure the method


_PPO = ("optimizer=ppo", "policy=tokens")
MODES: dict[str, tuple[MethodSpec, ...]] = {
    "compare": (
        MethodSpec("manual", ("optimizer=manual",)),
        MethodSpec("template", ("optimizer=template",)),
        MethodSpec("random", ("optimizer=random", "policy=tokens")),
        MethodSpec("opro", ("optimizer=opro",)),
        MethodSpec("bandit", ("optimizer=bandit",)),
        MethodSpec("ppo", _PPO),
        MethodSpec("components", ("optimizer=components", "policy=components")),
    ),
    # benchmarks/sample_efficiency.py: the learning methods only (+ the reference).
    "efficiency": (
        MethodSpec("manual", ("optimizer=manual",)),
        MethodSpec("ppo", _PPO),
        MethodSpec("components", ("optimizer=components", "policy=components")),
        MethodSpec("opro", ("optimizer=opro",)),
        MethodSpec("bandit", ("optimizer=bandit",)),
    ),
    # RLPrompt's stabilizer ablation: each PPO ingredient switched off in turn.
    "ablation": (
        MethodSpec("manual", ("optimizer=manual",)),
        MethodSpec("ppo", _PPO),
        MethodSpec("ppo-no-zscore", (*_PPO, "optimizer.zscore=false")),
        MethodSpec("ppo-no-kl", (*_PPO, "optimizer.kl_coef=0")),
        MethodSpec("ppo-no-entropy", (*_PPO, "optimizer.entropy_coef=0")),
    ),
}


@dataclass
class PlannedRun:
    label: str
    seed: int
    run: RunConfig


@dataclass
class MethodRecord:
    """One method's per-seed optimizer results and evaluations."""

    label: str
    results: list[OptimizerResult] = field(default_factory=list)
    evals: list[dict[str, EvalResult]] = field(default_factory=list)  # per seed: split → result


def plan_runs(
    compose: Callable[[list[str]], RunConfig],
    overrides: list[str],
    budget: int,
    seeds: list[int],
    mode: str = "compare",
) -> list[PlannedRun]:
    """One validated RunConfig per (method, seed): user overrides, then the method's, then budget/seed."""
    from rlprompt.errors import ConfigError

    if mode not in MODES:
        raise ConfigError(f"unknown +mode '{mode}'. Valid modes: {', '.join(sorted(MODES))}")
    return [
        PlannedRun(
            spec.label,
            seed,
            compose([*overrides, *spec.overrides, f"optimizer.budget={budget}", f"seed={seed}"]),
        )
        for spec in MODES[mode]
        for seed in seeds
    ]


def run_comparison(planned: list[PlannedRun], out_dir: Path) -> dict[str, Any]:
    """Optimize every planned run (skipping finished ones), evaluate, write results.json + report."""
    from rlprompt.report import write_report

    out_dir.mkdir(parents=True, exist_ok=True)
    records: dict[str, MethodRecord] = {}
    for plan in planned:
        run_dir = out_dir / "runs" / plan.label / f"seed{plan.seed}"
        done = run_dir / "result.json"
        if done.exists():  # a rerun into the same folder resumes the comparison
            result = OptimizerResult.from_dict(json.loads(done.read_text()))
        else:
            log.info("optimizing %s seed %d (budget %s)", plan.label, plan.seed, plan.run.optimizer.budget)
            result = run_optimizer(plan.run, run_dir)
        records.setdefault(plan.label, MethodRecord(plan.label)).results.append(result)
    results = evaluate_all(planned[0].run, records)
    write_json(out_dir / "results.json", results)
    write_report(out_dir, results)
    return results


def evaluate_all(run: RunConfig, records: dict[str, MethodRecord]) -> dict[str, Any]:
    """Greedy evaluation of every (method, seed) on the held-out splits, with a shared eval counter."""
    set_threads(run)
    task = load_task(run.task.name, run.task.path)
    cache = build_cache(run.cache)
    target = build_target(run.target, cache, role="eval")
    reward = reward_from_config(run.reward, task, cache)
    params = generation_params(run.target, run.seed)

    def score(prompt_for, split: str) -> EvalResult:
        return evaluate(
            task, split, prompt_for, target, reward.reward, params, run.eval.max_scenarios,
            run.reward.turns, reward.customer,
        )  # fmt: skip

    started = time.perf_counter()
    reference = {split: score(lambda s: task.base_instruction, split) for split in EVAL_SPLITS}
    eval_seconds: dict[str, float] = {}
    for record in records.values():
        t0 = time.perf_counter()
        for result in record.results:
            record.evals.append({split: score(prompt_lookup(result.prompts), split) for split in EVAL_SPLITS})
        eval_seconds[record.label] = time.perf_counter() - t0
    methods = {
        label: summarize(
            record, task, reference, run.eval.confidence, run.eval.bootstrap, eval_seconds[label]
        )
        for label, record in records.items()
    }
    return {
        "task": task.name,
        "budget": run.optimizer.budget,
        "seeds": sorted({r.seed for rec in records.values() for r in rec.results}),
        "splits": list(EVAL_SPLITS),
        "eval_max_scenarios": run.eval.max_scenarios,
        "target_model": run.target.model,
        "reward": dict(run.reward.modules),
        "aggregation": (
            "reward = mean over seeds of the per-seed mean; 95% CI = percentile bootstrap over the pooled "
            "per-scenario rewards of all seeds; win rate and difference vs manual pool (scenario, seed) pairs"
        ),
        "eval_calls": target.counter.calls,
        "eval_cache_hits": target.counter.cache_hits,
        "eval_seconds": time.perf_counter() - started,
        "personas": [p.name for p in task.personas],
        "stages": [s.name for s in task.stages],
        "components": [{"name": c.name, "phrase": c.phrase} for c in task.components],
        "methods": methods,
    }


def summarize(
    record: MethodRecord,
    task: Task,
    reference: dict[str, EvalResult],
    confidence: float,
    n_boot: int,
    eval_seconds: float,
) -> dict[str, Any]:
    """Per split: mean ± CI, module parts, win rate and paired difference vs the hand-written prompt."""
    splits: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        runs = [e[split] for e in record.evals]
        pooled = np.concatenate([r.rewards for r in runs])
        diffs = np.concatenate([r.rewards - reference[split].rewards for r in runs])
        ci = bootstrap_ci(pooled, confidence, n_boot)
        splits[split] = {
            "n": len(pooled),
            "mean": float(np.mean([r.rewards.mean() for r in runs])),
            "ci_low": ci.low,
            "ci_high": ci.high,
            "per_seed": [float(r.rewards.mean()) for r in runs],
            "parts": {k: float(np.mean([r.parts[k].mean() for r in runs])) for k in runs[0].parts},
            "win_rate_vs_manual": float(((diffs > 0).sum() + 0.5 * (diffs == 0).sum()) / len(diffs)),
            "diff_vs_manual": bootstrap_ci(diffs, confidence, n_boot).as_dict(),
            "cells": cell_means(runs, task),
        }
    results = record.results
    return {
        "splits": splits,
        "target_calls": float(np.mean([r.target_calls for r in results])),
        "optimizer_llm_calls": float(np.mean([r.optimizer_llm_calls for r in results])),
        "optimize_seconds": float(np.mean([r.seconds for r in results])),
        "eval_seconds": eval_seconds,
        "curves": {str(r.seed): r.curve for r in results},
        "prompts": {str(r.seed): r.prompts for r in results},
        "extra": {str(r.seed): r.extra for r in results},
    }


def cell_means(runs: list[EvalResult], task: Task) -> dict[str, float]:
    """Mean reward per 'persona|stage' cell over the seeds (for the heatmap)."""
    by_id = {s.id: s for s in task.scenarios}
    cells: dict[str, list[float]] = {}
    for r in runs:
        for scenario_id, value in zip(r.scenario_ids, r.rewards):
            scenario = by_id[scenario_id]
            cells.setdefault(f"{scenario.persona}|{scenario.stage}", []).append(float(value))
    return {k: float(np.mean(v)) for k, v in cells.items()}
