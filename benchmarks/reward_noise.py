"""The reward's noise floor: how much does one prompt's reward move when nothing but the batch changes?

    python benchmarks/reward_noise.py [--split val] [--prompt "..."]

The target decodes greedily in bfloat16. A reply still depends on which other conversations share
its batch (padding length changes the numerics), so the same (prompt, scenario) can yield another
reply and another reward. This benchmark plays one prompt on a split twice, with batch size 16
and with a different batch size (7, so rows meet other neighbours and paddings), with the cache
off, and prints the per-scenario reward change against the spread between prompts that
docs/LEARNING.md compares it with: a prompt difference below this floor is noise to PPO.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import set_threads, write_result

from rlprompt.config import TargetConfig
from rlprompt.env.conversation import run_conversations
from rlprompt.rewards.base import build_reward
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.hf import HFTarget
from rlprompt.task import load_task

COMPOSITES = {
    "sales_default": {"preference": 1.0, "expert": 0.5, "repetition": 0.5},
    "old sales_default": {"rubric": 1.0, "similarity": 0.5, "length": 0.5, "repetition": 0.5},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="val")
    parser.add_argument("--prompt", default=None, help="system prompt (default: the base instruction)")
    args = parser.parse_args()
    set_threads()
    task = load_task("car_sales")
    scenarios = task.split(args.split)
    prompt = args.prompt or task.base_instruction
    cfg = TargetConfig(dtype="bfloat16", max_new_tokens=48)
    params = GenerationParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    modules = sorted({m for weights in COMPOSITES.values() for m in weights})
    reward = build_reward(task, {m: 1.0 for m in modules})
    totals = {}
    replies = {}
    for batch_size in (16, 7):
        target = HFTarget(model=cfg.model, dtype=cfg.dtype, batch_size=batch_size)
        samples = run_conversations(target, scenarios, [prompt] * len(scenarios), params)
        parts = {k: v.numpy() for k, v in reward.score(samples).parts.items()}
        totals[batch_size] = {c: sum(w * parts[m] for m, w in ws.items()) for c, ws in COMPOSITES.items()}
        replies[batch_size] = [s.first_reply for s in samples]
    changed = float(np.mean([a != b for a, b in zip(replies[16], replies[7])]))
    figures = {"split": args.split, "n": len(scenarios), "replies_changed": changed, "rewards": {}}
    print(f"{len(scenarios)} scenarios of {args.split}; replies that changed with the batch: {changed:.0%}")
    for composite in COMPOSITES:
        delta = np.abs(totals[16][composite] - totals[7][composite])
        sd = float(np.std(totals[16][composite], ddof=1))
        figures["rewards"][composite] = {
            "mean_abs_change": float(delta.mean()),
            "max_abs_change": float(delta.max()),
            "scenario_sd": sd,
            "mean_change_of_split_mean": float(
                abs(totals[16][composite].mean() - totals[7][composite].mean())
            ),
        }
        print(
            f"{composite:18s} |reward change| per scenario: mean {delta.mean():.3f}, max {delta.max():.3f}; "
            f"split mean moved {figures['rewards'][composite]['mean_change_of_split_mean']:.3f}; "
            f"scenario-to-scenario sd {sd:.3f}"
        )
    write_result(f"reward_noise_{args.split}", figures)


if __name__ == "__main__":
    main()
