"""Competing optimizers on one budget: run every method with the same target-call budget and seeds,
score every final prompt on the same held-out splits with the same reward, write the report.

Fairness rules (docs/OPTIMIZERS.md):
- every method gets `optimizer.budget` target calls per seed, enforced by its `CallCounter`;
  optimizer-LLM calls (OPRO proposals, bandit mutations) are counted apart and reported;
- optimization replies are cached per run folder (`optimizer.private_cache`), so no method rides
  on another's calls; evaluation uses the shared cache and its own counter (never the budget);
- evaluation is greedy, on `eval.max_scenarios` evenly spread scenarios of `test` and
  `heldout_persona`, identical for every method and seed, so differences are paired.

Aggregation over seeds: the method's reward is the mean over seeds of the per-seed means. Every
seed is scored on the same scenarios, so (scenario, seed) values are not independent: the CIs
resample *scenarios* as clusters (each bootstrap draw picks scenarios with replacement and takes
all seeds' values for each), which — the design being balanced — is the bootstrap of the
per-scenario means over seeds. The test against the hand-written prompt is the paired
difference (method − manual on the same scenarios) with that cluster CI: a CI that excludes 0
is a difference; two overlapping reward CIs are not a test. The win rate pools the (scenario,
seed) pairs (descriptive).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rlprompt.build import check_run, set_threads
from rlprompt.config import PolicyConfig, PromptConfig, RunConfig
from rlprompt.evaluation.evaluate import EvalResult, Interval, bootstrap_ci, build_evaluator
from rlprompt.optimizers.base import OptimizerResult, run_optimizer
from rlprompt.ppo.checkpoint import write_json
from rlprompt.ppo.config import PPOConfig
from rlprompt.task import Task, load_task

log = logging.getLogger(__name__)
EVAL_SPLITS = ("test", "heldout_persona")
REFERENCE = "manual"  # the hand-written prompt every method is compared against


@dataclass(frozen=True)
class MethodSpec:
    label: str  # row name in the report
    overrides: tuple[str, ...]  # Hydra overrides that select and configure the method

    @property
    def optimizer(self) -> str:
        return next(o.partition("=")[2] for o in self.overrides if o.startswith("optimizer="))


def method_overrides(optimizer: str, overrides: list[str]) -> list[str]:
    """The user's overrides for one method: an `optimizer.<key>=` override (given to every method,
    with `++` when the command line's own optimizer lacks the key) goes to the methods that have
    the key, as a plain override; every other override goes to all."""
    from rlprompt.config import optimizer_config_class

    keys = {f.name for f in fields(optimizer_config_class(optimizer))}
    out = []
    for override in overrides:
        plain = override.lstrip("+")
        key = plain.partition("=")[0]
        if key.startswith("optimizer.") and "." not in key.removeprefix("optimizer."):
            if key.removeprefix("optimizer.") in keys:
                out.append(plain)
            continue
        out.append(override)
    return out


_PPO = ("optimizer=ppo", "policy=tokens")
# The two halves of the stop-24 default, one per ablation variant (docs/LEARNING.md 4i): the
# policy's voice (an imperative rule, "Always ...", not a first-person sentence) and the placement
# (the learned text appended to the base instruction, not the whole system prompt).
_RULE_VOICE = (
    "policy.prefix_template='Write one rule for what a {role} should do in every reply to a customer. {context}'",
    "policy.answer_start=Rule:",
    "policy.prompt_lead=Always",
)
_AFTER_BASE = ("prompt.template='{base}\n{learned}'",)
# PPO's own starting point: the same run with no step (0 target calls under any budget), its
# greedy sentence. ppo minus this row is what PPO's steps and calls bought over the frozen LM's prior.
_UNTRAINED = MethodSpec("ppo-untrained", (*_PPO, "optimizer.steps=0"))
MODES: dict[str, tuple[MethodSpec, ...]] = {
    "compare": (
        MethodSpec("manual", ("optimizer=manual",)),
        MethodSpec("template", ("optimizer=template",)),
        MethodSpec("random", ("optimizer=random", "policy=tokens")),
        MethodSpec("opro", ("optimizer=opro",)),
        MethodSpec("bandit", ("optimizer=bandit",)),
        MethodSpec("ppo", _PPO),
        MethodSpec("components", ("optimizer=components",)),
    ),
    # benchmarks/sample_efficiency.py: the search methods at equal target calls, with the
    # hand-written reference and random search (the floor any learner has to clear).
    "efficiency": (
        MethodSpec("manual", ("optimizer=manual",)),
        MethodSpec("random", ("optimizer=random", "policy=tokens")),
        MethodSpec("ppo", _PPO),
        MethodSpec("components", ("optimizer=components",)),
        MethodSpec("opro", ("optimizer=opro",)),
        MethodSpec("bandit", ("optimizer=bandit",)),
        _UNTRAINED,
    ),
    # RLPrompt's stabilizer ablation: each PPO ingredient switched off in turn, exactly one per
    # variant (checked by `plan_runs`). With the z-score on, |z| <= sqrt(G-1) < reward_clip, so the
    # clip never fires in `ppo`; left at 3 without the z-score it would cap the shaped rewards
    # (in [0, 5]) and change a second thing: ppo-no-zscore switches the inert clip off too. A
    # ppo-no-clip variant would equal ppo at G <= 10, so there is none (docs/OPTIMIZERS.md).
    "ablation": (
        MethodSpec("manual", ("optimizer=manual",)),
        MethodSpec("ppo", _PPO),
        MethodSpec("ppo-no-zscore", (*_PPO, "optimizer.zscore=false", "optimizer.reward_clip=0")),
        MethodSpec("ppo-no-kl", (*_PPO, "optimizer.kl_coef=0")),
        MethodSpec("ppo-no-entropy", (*_PPO, "optimizer.entropy_coef=0")),
        MethodSpec("ppo-no-std-floor", (*_PPO, "optimizer.zscore_min_std=0")),
        MethodSpec("ppo-no-stratify", (*_PPO, "optimizer.stratify_stages=false")),
        MethodSpec("ppo-no-paired-halves", (*_PPO, "optimizer.paired_halves=false")),
        MethodSpec("ppo-no-warmup", (*_PPO, "optimizer.lr_warmup_fraction=0")),
        MethodSpec("ppo-no-greedy-in-group", (*_PPO, "optimizer.greedy_in_group=false")),
        MethodSpec("ppo-no-period", (*_PPO, "policy.end_with_period=false")),
        MethodSpec("ppo-no-whole-prompt", (*_PPO, *_AFTER_BASE)),
        MethodSpec("ppo-no-first-person", (*_PPO, *_RULE_VOICE)),
        _UNTRAINED,  # the control for all of them
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
    planned = [
        PlannedRun(
            spec.label,
            seed,
            compose(
                [
                    *method_overrides(spec.optimizer, overrides),
                    *spec.overrides,
                    f"optimizer.budget={budget}",
                    f"seed={seed}",
                ]
            ),
        )
        for spec in MODES[mode]
        for seed in seeds
    ]
    for plan in planned:  # before the first method runs, not when the broken one's turn comes
        check_run(plan.run)
    if mode == "ablation":
        check_ablation(planned)
    return planned


def terms_in_effect(opt: PPOConfig) -> dict[str, bool]:
    """Which PPO stabilizer / loss terms can change an update at these settings.

    A stage is in effect when it can change what it receives. The reward clip acts on z-scores
    when the z-score is on, and a population z-score over a group of n prompts (n = G, or G + 1
    with the greedy prompt in the group) satisfies |z| <= sqrt(n - 1); without the z-score it
    acts on the shaped rewards in [0, shaping_scale] (raw rewards, whose bounds are not known
    here, are assumed to reach it).
    """
    if opt.zscore:
        reach = math.sqrt(max(opt.prompts_per_context + opt.greedy_in_group - 1, 0))
    else:
        reach = opt.shaping_scale if opt.shaping else math.inf
    return {
        "shaping": opt.shaping,
        "zscore": opt.zscore,
        "reward_clip": 0 < opt.reward_clip < reach,
        "kl": opt.kl_coef > 0,
        "entropy": opt.entropy_coef > 0,
        "std_floor": opt.zscore and opt.zscore_min_std > 0,
        "stratify": opt.stratify_stages,
        "paired_halves": opt.paired_halves,
        "greedy_in_group": opt.greedy_in_group,
        "warmup": opt.lr_warmup_fraction > 0,
    }


NESTED_TERMS = {"std_floor": "zscore"}  # sub-term → the stage it belongs to


def policy_terms(policy: PolicyConfig) -> dict[str, bool]:
    """The policy's own switchable pieces that the ablation turns off (docs/LEARNING.md §4b, §4i)."""
    tokens = policy.action_space == "tokens"
    return {
        "period": tokens and policy.end_with_period,
        "first_person": tokens and policy.prompt_lead == "I",
    }


def prompt_terms(prompt: PromptConfig) -> dict[str, bool]:
    """Whether the learned text is the whole system prompt, not an addition to the base (§4i)."""
    return {"whole_prompt": "{base}" not in prompt.template or not prompt.use_base_instruction}


def run_terms(run: RunConfig) -> dict[str, bool]:
    """Every term an ablation variant may switch off: the stabilizer / loss terms, the policy's and
    the prompt's."""
    return {**terms_in_effect(run.optimizer), **policy_terms(run.policy), **prompt_terms(run.prompt)}


def check_ablation(planned: list[PlannedRun]) -> None:
    """Every `ppo-no-<term>` variant must differ from `ppo` in exactly that term's effect."""
    from rlprompt.errors import ConfigError

    full = {p.seed: run_terms(p.run) for p in planned if p.label == "ppo"}
    for plan in planned:
        if not plan.label.startswith("ppo-no-"):
            continue
        variant = run_terms(plan.run)
        changed = sorted(k for k, on in variant.items() if on != full[plan.seed][k])
        # A sub-term goes with its stage: no z-score means no floor on the z-score's std either.
        changed = [k for k in changed if NESTED_TERMS.get(k) not in changed]
        if changed != [plan.label.removeprefix("ppo-no-").replace("-", "_")]:
            raise ConfigError(
                f"+mode=ablation: {plan.label} would change {changed or 'nothing'} relative to ppo "
                f"(terms in effect in ppo: {full[plan.seed]}); each variant must switch off exactly "
                "one term. With the z-score on, the reward clip fires only when optimizer.reward_clip "
                "< sqrt(optimizer.prompts_per_context - 1): keep prompts_per_context <= 10 at "
                "reward_clip=3 (docs/OPTIMIZERS.md, ablation)"
            )


def run_comparison(planned: list[PlannedRun], out_dir: Path) -> dict[str, Any]:
    """Optimize every planned run (skipping finished ones), evaluate, write results.json + report."""
    from rlprompt.experiments.report import write_report

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
    evaluator = build_evaluator(run, task, role="eval")
    target = evaluator.target

    started = time.perf_counter()
    reference = {split: evaluator.evaluate(split, task.base_instruction) for split in EVAL_SPLITS}
    eval_seconds: dict[str, float] = {}
    for record in records.values():
        t0 = time.perf_counter()
        for result in record.results:
            record.evals.append({split: evaluator.evaluate(split, result.prompts) for split in EVAL_SPLITS})
        eval_seconds[record.label] = time.perf_counter() - t0
    eval_stats = {
        "eval_calls": target.counter.calls,
        "eval_cache_hits": target.counter.cache_hits,
        "eval_seconds": time.perf_counter() - started,
    }
    return assemble_results(run, task, records, reference, eval_seconds, eval_stats)


def assemble_results(
    run: RunConfig,
    task: Task,
    records: dict[str, MethodRecord],
    reference: dict[str, EvalResult],
    eval_seconds: dict[str, float],
    eval_stats: dict[str, Any],
) -> dict[str, Any]:
    """results.json from evaluated records (pure: no model, no target)."""
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
        "scenario_ids": {split: list(reference[split].scenario_ids) for split in EVAL_SPLITS},
        "confidence": run.eval.confidence,
        "bootstrap": run.eval.bootstrap,
        "target_model": run.target.model,
        "reward": dict(run.reward.modules),
        "aggregation": (
            "reward = mean over seeds of the per-seed mean; 95% CI = percentile bootstrap over scenarios as "
            "clusters (all seeds' values of a drawn scenario together); Δ vs manual = paired difference on "
            "the same scenarios with the same cluster CI (the test); win rate pools (scenario, seed) pairs"
        ),
        **eval_stats,
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
        values = seed_matrix(runs, reference[split])  # (seeds, scenarios)
        diffs = values - reference[split].rewards[None, :]
        ci = cluster_bootstrap_ci(values, confidence, n_boot)
        diff = cluster_bootstrap_ci(diffs, confidence, n_boot)
        splits[split] = {
            "n": values.size,  # (scenario, seed) pairs
            "n_scenarios": values.shape[1],
            "mean": float(values.mean(axis=1).mean()),
            "ci_low": ci.low,
            "ci_high": ci.high,
            "per_seed": [float(r.rewards.mean()) for r in runs],
            "parts": {k: float(np.mean([r.parts[k].mean() for r in runs])) for k in runs[0].parts},
            "win_rate_vs_manual": float(((diffs > 0).sum() + 0.5 * (diffs == 0).sum()) / diffs.size),
            "diff_vs_manual": diff.as_dict(),
            "verdict_vs_manual": verdict(diff),
            "cells": cell_means(runs, task),
            # per scenario, mean over seeds, in `results["scenario_ids"][split]` order: the paired
            # difference between any two methods (report.paired_section) needs nothing else
            "scenario_means": [round(float(v), 6) for v in values.mean(axis=0)],
        }
    results = record.results
    return {
        "splits": splits,
        "target_calls": float(np.mean([r.target_calls for r in results])),
        "optimizer_llm_calls": float(np.mean([r.optimizer_llm_calls for r in results])),
        "optimize_seconds": float(np.mean([r.seconds for r in results])),
        "eval_seconds": eval_seconds,
        "curves": {str(r.seed): r.curve for r in results},
        "prompts": {str(r.seed): r.prompts.to_dict() for r in results},
        "extra": {str(r.seed): r.extra for r in results},
    }


def seed_matrix(runs: list[EvalResult], reference: EvalResult) -> np.ndarray:
    """Per-seed rewards as a (seeds, scenarios) matrix; every seed must score the reference's scenarios."""
    for r in runs:
        if r.scenario_ids != reference.scenario_ids:
            raise ValueError(f"split {r.split}: seeds were scored on different scenarios than the reference")
    return np.stack([np.asarray(r.rewards, dtype=np.float64) for r in runs])


def cluster_bootstrap_ci(values: np.ndarray, confidence: float = 0.95, n_boot: int = 2000) -> Interval:
    """Percentile bootstrap of the mean of a (seeds, scenarios) matrix, scenarios as clusters.

    A draw picks scenarios with replacement and keeps every seed's value for each. With the same
    seeds for every scenario, the mean of such a draw is the mean of the drawn per-scenario means,
    so this is exactly the bootstrap of `values.mean(axis=0)`: repeating a scenario across seeds
    adds no independent evidence, and the CI does not narrow as if it did.
    """
    return bootstrap_ci(np.asarray(values, dtype=np.float64).mean(axis=0), confidence, n_boot)


def verdict(diff: Interval) -> str:
    """The paired test: is the difference's CI entirely above or below 0?"""
    if diff.low > 0:
        return "better"
    if diff.high < 0:
        return "worse"
    return "no detectable difference"


def cell_means(runs: list[EvalResult], task: Task) -> dict[str, float]:
    """Mean reward per 'persona|stage' cell over the seeds (for the heatmap)."""
    by_id = {s.id: s for s in task.scenarios}
    cells: dict[str, list[float]] = {}
    for r in runs:
        for scenario_id, value in zip(r.scenario_ids, r.rewards):
            scenario = by_id[scenario_id]
            cells.setdefault(f"{scenario.persona}|{scenario.stage}", []).append(float(value))
    return {k: float(np.mean(v)) for k, v in cells.items()}
