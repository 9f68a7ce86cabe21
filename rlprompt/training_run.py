"""One training run end to end: build, train, pick the prompts, evaluate, write the run folder.

Run folder (only the main process writes):
  .hydra/config.yaml   the composed config (no secrets: keys live in the environment)
  tb/                  TensorBoard scalars
  checkpoints/         step_NNNNNN/{state.pt, rng_rank*.pt} + latest.json (resume=<run dir>)
  prompts.json         greedy prompt per context + the task-level prompt: text, token ids, system prompt
  prompt.txt           the task-level system prompt, ready to paste
  summary.json         val / test / heldout_persona reward of the learned prompts and of the
                       hand-written base instruction, 95 % bootstrap CIs, paired difference, costs
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rlprompt.build import build_cache, build_target, generation_params, set_threads
from rlprompt.checkpoint import write_json
from rlprompt.config import RunConfig
from rlprompt.evaluation import EvalResult, evaluate, paired_difference, win_rate
from rlprompt.models import load_model
from rlprompt.policy import PromptPolicy
from rlprompt.prompting import check_prompt_text
from rlprompt.rewards.factory import reward_from_config
from rlprompt.task import Scenario, load_task
from rlprompt.trainer import TASK_LEVEL_CONTEXT, PPOTrainer

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(run: RunConfig, run_dir: Path, accelerator=None) -> PPOTrainer:
    set_threads(run)
    seed_everything(run.seed)
    task = load_task(run.task.name, run.task.path)
    cache = build_cache(run.cache)
    world = accelerator.num_processes if accelerator else 1
    budget = None if run.optimizer.budget is None else run.optimizer.budget // world
    target = build_target(run.target, cache, budget=budget)
    reward = reward_from_config(run.reward, task, cache)
    backbone, tokenizer = load_model(run.policy.backbone, run.policy.dtype)
    policy = PromptPolicy(run.policy, task, backbone, tokenizer)
    return PPOTrainer(
        run, task, policy, target, reward, generation_params(run.target, run.seed), run_dir, accelerator
    )


def learned_prompts(trainer: PPOTrainer) -> dict:
    """Greedy prompt per context (context-conditioned) and the task-level prompt, as in prompts.json."""
    policy, task = trainer.policy, trainer.task
    contexts = task.contexts
    texts = [
        Scenario(id="", persona=p, stage=s, urgency=u, customer="-").context_text() for p, s, u in contexts
    ]
    per_context = (
        policy.sample(texts, greedy=True)
        if trainer.run.policy.conditioning == "context_conditioned"
        else None
    )
    task_level = policy.sample([TASK_LEVEL_CONTEXT], greedy=True)

    def entry(prompt: str, ids: torch.Tensor) -> dict:
        check_prompt_text(prompt, "learned prompt")
        return {"text": prompt, "action_ids": ids.tolist(), "system_prompt": trainer.system_prompt(prompt)}

    out = {
        "task": task.name,
        "method": f"ppo-{trainer.run.policy.action_space}",
        "source_model": trainer.run.policy.backbone,
        "target_model": trainer.run.target.model,
        "action_space": trainer.run.policy.action_space,
        "conditioning": trainer.run.policy.conditioning,
        "prompt_template": trainer.run.prompt.template,
        "base_instruction": task.base_instruction,
        "task_level": entry(task_level.prompts[0], task_level.actions[0]),
        "per_context": {},
    }
    if per_context is not None:
        for (p, s, u), prompt, ids in zip(contexts, per_context.prompts, per_context.actions):
            out["per_context"][f"{p}|{s}|{u}"] = entry(prompt, ids)
    return out


def prompt_lookup(prompts: dict):
    """Scenario → system prompt for a prompts.json dict (per-context if present, else task-level)."""

    def prompt_for(scenario: Scenario) -> str:
        key = "|".join(scenario.context)
        return prompts["per_context"].get(key, prompts["task_level"])["system_prompt"]

    return prompt_for


def evaluate_run(trainer: PPOTrainer, prompts: dict) -> dict:
    run, task = trainer.run, trainer.task
    reward = trainer.reward
    summary: dict = {"splits": {}}
    for split in run.eval.splits:
        results: dict[str, EvalResult] = {}
        for name, prompt_for in (
            ("learned", prompt_lookup(prompts)),
            ("base_instruction", lambda s: task.base_instruction),
        ):
            results[name] = evaluate(
                task,
                split,
                prompt_for,
                trainer.target,
                reward.reward,
                trainer.params,
                run.eval.max_scenarios,
                run.reward.turns,
                reward.customer,
            )
        learned, base = results["learned"], results["base_instruction"]
        entry = {name: r.summary(run.eval.confidence, run.eval.bootstrap) for name, r in results.items()}
        diff = paired_difference(learned, base, run.eval.confidence, run.eval.bootstrap)
        entry["learned_minus_base"] = diff.as_dict()
        entry["win_rate_vs_base"] = win_rate(learned, base)
        l_ci, b_ci = entry["learned"]["reward"], entry["base_instruction"]["reward"]
        entry["cis_overlap"] = not (l_ci["ci_low"] > b_ci["ci_high"] or b_ci["ci_low"] > l_ci["ci_high"])
        summary["splits"][split] = entry
        log.info(
            "%s: learned %.3f [%.3f, %.3f]  base %.3f [%.3f, %.3f]  diff %s",
            split,
            l_ci["mean"],
            l_ci["ci_low"],
            l_ci["ci_high"],
            b_ci["mean"],
            b_ci["ci_low"],
            b_ci["ci_high"],
            diff,
        )
    return summary


def run_training(run: RunConfig, run_dir: Path, accelerator=None) -> dict | None:
    """Train, then (main process) write prompts.json, prompt.txt and summary.json. Returns the summary."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(run, run_dir, accelerator)
    trainer.train()
    total_calls = trainer.total_target_calls()  # collective: every rank takes part
    if not trainer.is_main:
        return None
    prompts = learned_prompts(trainer)
    write_json(run_dir / "prompts.json", prompts)
    (run_dir / "prompt.txt").write_text(prompts["task_level"]["system_prompt"] + "\n")
    train_seconds = trainer.train_seconds
    calls_before_eval = trainer.target.counter.calls
    summary = evaluate_run(trainer, prompts)
    counter = trainer.target.counter
    summary.update(
        {
            "task": run.task.name,
            "method": prompts["method"],
            "steps": trainer.step_index,
            "processes": trainer.world,
            "target_calls": total_calls,
            "eval_target_calls": counter.calls - calls_before_eval,
            "cache_hits": counter.cache_hits,
            "retries": counter.retries,
            "reward_calls": {k: c.calls for k, c in trainer.reward.counters.items()},
            "train_seconds": train_seconds,
            "phase_seconds": dict(trainer.phases.seconds),
            "target_completion_tokens": counter.completion_tokens,
            "wall_seconds": time.perf_counter() - started,
            "task_level_prompt": prompts["task_level"]["text"],
            "config": asdict(run),
        }
    )
    write_json(run_dir / "summary.json", summary)
    return summary
