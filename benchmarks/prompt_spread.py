"""How far apart are the prompts the policy samples, against the noise one comparison sees?

    python benchmarks/prompt_spread.py [--prompts 12] [--scenarios 48] [--seed 7] [--threads 2]
        [--overrides optimizer.lr=... ...]

The learner can only climb what separates its own samples. This benchmark samples N prompts from
the *untrained* default policy (its training distribution: top-k, temperature 1), plays each on
the same S training scenarios with the default target and reward (greedy, cached), and splits the
N × S rewards two ways (prompt + scenario + residual, the classic random-effects ANOVA):

- `prompt_sd`: the spread of the prompts' true mean rewards (what PPO can learn to prefer);
- `residual_sd`: the per-reply noise left after the scenario's and the prompt's effects (the
  chaos of one greedy reply; the per-scenario z-score removes the scenario's effect, not this)
  (`rlprompt.ppo.learning.variance_components`);
- `comparison_snr`: prompt_sd against the noise of one prompt's mean over a step's C scenarios,
  i.e. how well one PPO step can tell a better sample from a worse one;
- `top_decile_gain`: what a policy that only sampled the prior's best 10 % would gain over the
  prior's mean (1.755 prompt SDs for a normal spread): the most a training-reward rise can show;
- `prior_minus_base`: the prior's mean against the task's base instruction on the same scenarios
  (where the climb starts, relative to what the learned prompt must beat).

`--name` writes `benchmarks/results/<name>.json`, so variants (`--overrides policy.…`) sit side by
side with the default's figures. `--play` adds given prompts (`greedy`: the untrained policy's
greedy sentence) on the same scenarios, each against the base instruction and against the prior's
mean per scenario, paired: where a shipped prompt sits relative to where training started.

docs/LEARNING.md §4k and §4l read these figures.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import Stopwatch, set_threads, write_result
from hydra import compose, initialize_config_dir

from rlprompt.config import validate
from rlprompt.evaluation.evaluate import bootstrap_ci
from rlprompt.ppo.learning import variance_components
from rlprompt.ppo.run import build_trainer, run_evaluator
from rlprompt.ppo.trainer import TASK_LEVEL_CONTEXT
from rlprompt.targets.cache import CallCounter

REPO = Path(__file__).resolve().parents[1]
TOP_DECILE_Z = 1.755  # E[z | z > 1.2816] for a standard normal: the mean of its top 10 %


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--scenarios", type=int, default=48, help="training scenarios each prompt plays")
    parser.add_argument("--seed", type=int, default=7, help="seeds the policy's samples")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides of the default run")
    parser.add_argument("--name", default="prompt_spread", help="result file: benchmarks/results/<name>.json")
    parser.add_argument(
        "--play", nargs="*", default=[], help="prompts to place against the prior ('greedy': its greedy one)"
    )
    args = parser.parse_args()
    threads = set_threads(args.threads)
    overrides = ["task=car_sales", f"eval.max_scenarios={args.scenarios}", f"threads={threads}"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        run = validate(compose(config_name="config", overrides=[*overrides, *args.overrides]))
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(run, Path(tmp) / "run")
    generator = torch.Generator().manual_seed(args.seed)
    prompts = trainer.policy.sample([TASK_LEVEL_CONTEXT] * args.prompts, generator=generator).prompts
    # the trainer's own target, reward and generation params: nothing loads twice
    evaluator = run_evaluator(trainer, run, trainer.target.with_counter(CallCounter(role="eval")))
    rows = []
    with Stopwatch() as watch:
        for prompt in prompts:
            result = evaluator.evaluate("train", trainer.system_prompt(prompt))
            rows.append(result.rewards)
            print(f"{result.rewards.mean():.3f}  {prompt}", flush=True)
        base = evaluator.evaluate("train", trainer.task.base_instruction).rewards  # (S,)
        print(f"{base.mean():.3f}  [base instruction]", flush=True)
        rewards = np.stack(rows)  # (N, S)
        played = {}
        for text in args.play:
            if text == "greedy":
                text = trainer.policy.sample([TASK_LEVEL_CONTEXT], greedy=True).prompts[0]
            own = evaluator.evaluate("train", trainer.system_prompt(text)).rewards  # (S,)
            minus_base, minus_prior = bootstrap_ci(own - base), bootstrap_ci(own - rewards.mean(0))
            played[text] = {
                "mean": round(float(own.mean()), 4),
                "minus_base": minus_base.as_dict(),
                "minus_prior_mean": minus_prior.as_dict(),
            }
            print(
                f"{own.mean():.3f}  {text}  (vs base {minus_base}, vs the prior's mean {minus_prior})",
                flush=True,
            )
    prompt_sd, residual_sd = variance_components(rewards)
    C = run.optimizer.contexts_per_step
    step_noise = residual_sd / math.sqrt(C)
    figures = {
        "prompts": prompts,
        "prompt_means": rewards.mean(1).round(4).tolist(),
        "scenarios": rewards.shape[1],
        "prompt_sd": round(prompt_sd, 4),
        "residual_sd": round(residual_sd, 4),
        "contexts_per_step": C,
        "comparison_snr": round(prompt_sd / step_noise, 3),
        "top_decile_gain": round(TOP_DECILE_Z * prompt_sd, 4),
        "base_mean": round(float(base.mean()), 4),
        "prior_minus_base": round(float(rewards.mean() - base.mean()), 4),
        "prior_minus_base_ci": bootstrap_ci(rewards.mean(0) - base).as_dict(),
        "played": played,
        "seconds": round(watch.seconds, 1),
        "overrides": args.overrides,
    }
    print(
        f"prompt SD {prompt_sd:.3f}, residual SD {residual_sd:.3f} per reply: one step's comparison "
        f"(mean over C={C} scenarios) sees the prompts' spread at SNR {figures['comparison_snr']:.2f}; "
        f"the prior's best 10 % would score {figures['top_decile_gain']:+.3f} above its mean, "
        f"which is {figures['prior_minus_base']:+.3f} against the base instruction"
    )
    write_result(args.name, figures)


if __name__ == "__main__":
    main()
