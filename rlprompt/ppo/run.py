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
from rlprompt.config import RunConfig
from rlprompt.env.prompting import check_prompt_text
from rlprompt.evaluation.evaluate import EvalResult, Evaluator, paired_difference, win_rate
from rlprompt.models import load_model
from rlprompt.policy.action_spaces import SentenceEnd
from rlprompt.policy.policy import PromptPolicy
from rlprompt.ppo.callbacks import CheckpointCallback, TensorBoardLogger, TrainerCallback
from rlprompt.ppo.checkpoint import check_resume, run_meta, write_json
from rlprompt.ppo.learning import Candidate, choose_within_se, plot_learning_curve, reward_rise
from rlprompt.ppo.trainer import TASK_LEVEL_CONTEXT, PPOTrainer, TrainerConfig
from rlprompt.prompt_set import PromptEntry, PromptSet, context_key, write_prompts
from rlprompt.rewards.factory import reward_from_config
from rlprompt.targets.cache import CachedTarget, CallCounter
from rlprompt.task import Scenario, load_task

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_trainer(
    run: RunConfig, run_dir: Path, accelerator=None, callbacks: list[TrainerCallback] | None = None
) -> PPOTrainer:
    """The run's PPO trainer, with TensorBoard logging, `callbacks`, then checkpoints (in that
    order after every step)."""
    set_threads(run)
    seed_everything(run.seed)
    task = load_task(run.task.name, run.task.path)
    cache = build_cache(run.cache)
    world = accelerator.num_processes if accelerator else 1
    if run.resume:  # before any model loads: a changed config or process count fails in seconds
        check_resume(run, Path(run.resume), world)
    budget = None if run.optimizer.budget is None else run.optimizer.budget // world
    target = build_target(run.target, cache, budget=budget)
    reward = reward_from_config(run.reward, task, cache)
    backbone, tokenizer = load_model(run.policy.backbone, run.policy.dtype)
    policy = PromptPolicy(run.policy, task, backbone, tokenizer)
    rank = accelerator.process_index if accelerator else 0
    run_dir = Path(run_dir)
    return PPOTrainer(
        TrainerConfig.from_run(run),
        task,
        policy,
        target,
        reward,
        generation_params(run.target, run.seed),
        accelerator,
        [
            TensorBoardLogger(run_dir / "tb", run.log_every, is_main=rank == 0),
            *(callbacks or []),
            CheckpointCallback(
                run_dir / "checkpoints",
                run.checkpoint_every,
                Path(run.resume) if run.resume else None,
                meta=run_meta(run, world),
            ),
        ],
    )


def learned_prompts(trainer: PPOTrainer, run: RunConfig) -> PromptSet:
    """Greedy prompt per context (context-conditioned) and the task-level prompt, as in prompts.json."""
    policy, task = trainer.policy, trainer.task
    contexts = task.contexts
    texts = [Scenario.for_context(c).context_text() for c in contexts]
    per_context = (
        policy.sample(texts, greedy=True) if run.policy.conditioning == "context_conditioned" else None
    )
    task_level = policy.sample([TASK_LEVEL_CONTEXT], greedy=True)

    def entry(prompt: str, ids: torch.Tensor) -> PromptEntry:
        check_prompt_text(prompt, "learned prompt")
        return PromptEntry(prompt, trainer.system_prompt(prompt), ids.tolist())

    out = PromptSet(
        task=task.name,
        method=f"ppo-{run.policy.action_space}",
        source_model=run.policy.backbone,
        target_model=run.target.model,
        action_space=run.policy.action_space,
        conditioning=run.policy.conditioning,
        prompt_template=run.prompt.template,
        base_instruction=task.base_instruction,
        task_level=entry(task_level.prompts[0], task_level.actions[0]),
    )
    if per_context is not None:
        for context, prompt, ids in zip(contexts, per_context.prompts, per_context.actions):
            out.per_context[context_key(context)] = entry(prompt, ids)
    return out


def run_evaluator(trainer: PPOTrainer, run: RunConfig, target: CachedTarget) -> Evaluator:
    """The trainer's task, reward and generation params with an evaluation `target`."""
    return Evaluator(
        trainer.task, target, trainer.reward, trainer.params, run.eval.max_scenarios, run.reward.turns
    )


def evaluate_run(
    trainer: PPOTrainer, run: RunConfig, prompts: PromptSet, target: CachedTarget | None = None
) -> dict:
    """Learned prompts vs the base instruction on `run.eval.splits`. `target` defaults to the
    trainer's model on its own unbudgeted "eval" counter: evaluation is never charged to
    `optimizer.budget` (as in rlprompt/experiments/comparison.py)."""
    task = trainer.task
    target = target if target is not None else trainer.target.with_counter(CallCounter(role="eval"))
    evaluator = run_evaluator(trainer, run, target)
    summary: dict = {"splits": {}}
    pooled: dict[str, list[EvalResult]] = {}  # the decision split: every held-out split but val
    for split in run.eval.splits:
        results: dict[str, EvalResult] = {}
        for name, played in (("learned", prompts), ("base_instruction", task.base_instruction)):
            results[name] = evaluator.evaluate(split, played)
        learned, base = results["learned"], results["base_instruction"]
        entry = {name: r.summary(run.eval.confidence, run.eval.bootstrap) for name, r in results.items()}
        diff = paired_difference(learned, base, run.eval.confidence, run.eval.bootstrap)
        entry["learned_minus_base"] = diff.as_dict()
        entry["win_rate_vs_base"] = win_rate(learned, base)
        l_ci, b_ci = entry["learned"]["reward"], entry["base_instruction"]["reward"]
        summary["splits"][split] = entry
        pooled.setdefault("learned", []).append(learned)
        pooled.setdefault("base_instruction", []).append(base)
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
    held_out = [i for i, r in enumerate(pooled.get("learned", [])) if r.split != "val"]
    if len(held_out) >= 2:
        learned, base = (
            concat_results([pooled[k][i] for i in held_out]) for k in ("learned", "base_instruction")
        )
        entry = {
            name: r.summary(run.eval.confidence, run.eval.bootstrap)
            for name, r in (("learned", learned), ("base_instruction", base))
        }
        entry["learned_minus_base"] = paired_difference(
            learned, base, run.eval.confidence, run.eval.bootstrap
        ).as_dict()
        entry["win_rate_vs_base"] = win_rate(learned, base)
        summary["splits"][learned.split] = entry
    return summary


def verdict_line(summary: dict) -> str:
    """One line: does the learned prompt beat the base instruction on the pooled held-out splits?"""
    pooled = [k for k in summary["splits"] if "+" in k] or list(summary["splits"])[-1:]
    if not pooled:
        return "no evaluation split"
    split = pooled[0]
    d, n = summary["splits"][split]["learned_minus_base"], summary["splits"][split]["learned"]["n"]
    ci = f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] (paired 95% CI, n={n} scenarios)"
    if d["ci_low"] > 0:
        return f"The learned prompt BEATS the base instruction on {split}: {ci}."
    if d["ci_high"] < 0:
        return f"The learned prompt is WORSE than the base instruction on {split}: {ci}."
    return f"No detectable difference between the learned prompt and the base instruction on {split}: {ci}."


def concat_results(results: list[EvalResult]) -> EvalResult:
    """Several splits' results as one (same order for every method, so pairs stay aligned)."""
    return EvalResult(
        split="+".join(r.split for r in results),
        scenario_ids=[i for r in results for i in r.scenario_ids],
        rewards=np.concatenate([r.rewards for r in results]),
        parts={k: np.concatenate([r.parts[k] for r in results]) for k in results[0].parts},
        system_prompts=[p for r in results for p in r.system_prompts],
        replies=[x for r in results for x in r.replies],
    )


def select_task_prompt(
    trainer: PPOTrainer, run: RunConfig, prompts: PromptSet, target: CachedTarget
) -> dict | None:
    """Ship a task-level prompt chosen on `val` (RLPrompt's model selection, made to read).

    Candidates: the policy's greedy prompt at `eval.select_checkpoints` checkpoints (early stopping)
    and its `eval.select_samples` best-rewarded sampled prompts. Unfinished sentences are passed
    over and their trimmed versions compete (`finished_candidates`); among the candidates within
    `eval.fluent_within_se` standard errors of the val-best, the most fluent ships
    (`choose_within_se`). Val is then spent on selection, so the claim rests on test +
    heldout_persona. Returns the selection table, or None when off.
    """
    task = trainer.task
    candidates = trainer.learning.candidates()
    final = prompts.task_level
    if final.text not in {c.text for c in candidates}:
        candidates.append(Candidate(final.text, final.action_ids, f"greedy@{trainer.step_index}"))
    if len(candidates) < 2:
        return None
    candidates, passed_over, end = finished_candidates(trainer, candidates, run.eval.min_end_probability)
    evaluator = run_evaluator(trainer, run, target)

    def on_val(system_prompt: str) -> EvalResult:
        return evaluator.evaluate("val", system_prompt)

    rows = [(c, on_val(trainer.system_prompt(c.text))) for c in candidates]
    base = on_val(task.base_instruction)
    chosen, val_best = choose_within_se(
        [r.rewards for _, r in rows], [end[c.text].fluency for c, _ in rows], run.eval.fluent_within_se
    )
    best = rows[chosen][0]
    check_prompt_text(best.text, "selected prompt")
    prompts.task_level = PromptEntry(best.text, trainer.system_prompt(best.text), best.action_ids)
    return {
        "split": "val",
        "chosen": best.text,
        "chosen_source": best.source,
        "val_best": rows[val_best][0].text,
        "fluent_within_se": run.eval.fluent_within_se,
        "base_val": float(base.rewards.mean()),
        "min_end_probability": run.eval.min_end_probability,
        "passed_over_unfinished": passed_over,
        "candidates": [
            {
                **asdict(c),
                "val_reward": float(r.rewards.mean()),
                "val_minus_base": float((r.rewards - base.rewards).mean()),
                "end_probability": end[c.text].probability,
                "fluency": end[c.text].fluency,
            }
            for c, r in rows
        ],
    }


def finished_candidates(
    trainer: PPOTrainer, candidates: list[Candidate], min_end_probability: float
) -> tuple[list[Candidate], list[str], dict[str, SentenceEnd]]:
    """(the candidates selection may ship, the texts it passes over, how each text's sentence ends).

    An unfinished sentence — the frozen LM gives its period less than `min_end_probability`: forced
    at the last position, or closing a phrase mid-way — is passed over while a finished one
    competes, and its version trimmed to the LM's likeliest earlier end competes too ("... in the
    right direction and." → "... in the right direction.", source "trimmed greedy@36"). Val then
    scores the trimmed text like any other. With every candidate unfinished, all compete.
    """
    end: dict[str, SentenceEnd] = {}
    pool: list[Candidate] = []
    for c in candidates:
        end[c.text] = trainer.policy.sentence_end(c.action_ids, TASK_LEVEL_CONTEXT)
        pool.append(c)
        trimmed = end[c.text].trimmed
        if end[c.text].probability >= min_end_probability or trimmed == c.action_ids:
            continue
        text = trainer.policy.decode(torch.tensor(trimmed))
        if text not in end:
            end[text] = trainer.policy.sentence_end(trimmed, TASK_LEVEL_CONTEXT)
            pool.append(Candidate(text, trimmed, f"trimmed {c.source}"))
    finished = [c for c in pool if end[c.text].probability >= min_end_probability]
    passed_over = [c.text for c in pool if finished and c not in finished]
    return finished or pool, passed_over, end


def run_training(run: RunConfig, run_dir: Path, accelerator=None) -> dict | None:
    """Train, then (main process) write prompts.json, prompt.txt and summary.json. Returns the summary."""
    started = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(run, run_dir, accelerator)
    trainer.train()
    total_calls = trainer.total_target_calls()  # collective: every rank takes part
    if not trainer.is_main:
        return None
    prompts = learned_prompts(trainer, run)
    train_seconds = trainer.train_seconds
    eval_target = trainer.target.with_counter(CallCounter(role="eval"))  # outside the budget
    selection = None
    if run.eval.select_checkpoints or run.eval.select_samples:
        selection = select_task_prompt(trainer, run, prompts, eval_target)
    write_prompts(run_dir, prompts)
    summary = evaluate_run(trainer, run, prompts, eval_target)
    write_learning_curve(run_dir / "learning_curve.png", trainer, selection)
    counter = trainer.target.counter  # training: this rank's; target_calls sums all ranks
    greedy = trainer.learning.greedy_rewards()
    greedy_rise = reward_rise(greedy, scenarios=trainer.learning.scenarios) if greedy else None
    summary.update(
        {
            "task": run.task.name,
            "method": prompts.method,
            "steps": trainer.step_index,
            "processes": trainer.world,
            "target_calls": total_calls,
            "eval_target_calls": eval_target.counter.calls,
            "cache_hits": counter.cache_hits,
            "eval_cache_hits": eval_target.counter.cache_hits,
            "retries": counter.retries,
            "reward_calls": {k: c.calls for k, c in trainer.reward.counters.items()},
            "train_seconds": train_seconds,
            "phase_seconds": dict(trainer.phases.seconds),
            "target_completion_tokens": counter.completion_tokens,
            "wall_seconds": time.perf_counter() - started,
            "task_level_prompt": prompts.task_level.text,
            "selection": selection,
            "training_reward": {"steps": trainer.learning.steps, "mean": trainer.learning.reward},
            "training_reward_rise": reward_rise(
                trainer.learning.reward, scenarios=trainer.learning.scenarios
            ),
            # the same statistic for the greedy prompt (what ships) on the steps' scenarios
            "greedy_reward_rise": greedy_rise,
            "config": asdict(run),
        }
    )
    write_json(run_dir / "summary.json", summary)
    return summary


def write_learning_curve(path: Path, trainer: PPOTrainer, selection: dict | None) -> None:
    """learning_curve.png: training reward per step + the greedy prompt's val reward at checkpoints."""
    checkpoints = []
    for row in (selection or {}).get("candidates", []):
        if row["source"].startswith("greedy@"):
            checkpoints.append((int(row["source"].split("@")[1]), row["val_reward"]))
    base_val = selection["base_val"] if selection else None
    plot_learning_curve(
        path,
        trainer.learning.steps,
        trainer.learning.reward,
        sorted(checkpoints),
        base_val,
        trainer.learning.greedy_rewards(),
    )
