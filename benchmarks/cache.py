"""Evaluation rerun with a warm response cache: zero target calls and >= 50x faster.

python benchmarks/cache.py [--scenarios 48]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import Stopwatch, set_threads, write_result

from rlprompt.build import generation_params
from rlprompt.config import RewardConfig, TargetConfig
from rlprompt.evaluation.evaluate import Evaluator
from rlprompt.rewards.factory import reward_from_config
from rlprompt.targets.cache import CachedTarget, ResponseCache
from rlprompt.targets.hf import HFTarget
from rlprompt.task import load_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenarios", type=int, default=48)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads)
    task = load_task("car_sales")
    inner = HFTarget(batch_size=16)
    reward_cfg = RewardConfig(
        name="sales_default", modules={"rubric": 1.0, "similarity": 0.5, "length": 0.5, "repetition": 0.5}
    )
    params = generation_params(TargetConfig())
    with tempfile.TemporaryDirectory() as tmp:
        cache = ResponseCache(Path(tmp) / "responses.sqlite")
        reward = reward_from_config(reward_cfg, task, cache)
        runs = []
        for label in ("cold", "warm"):
            target = CachedTarget(inner, cache)
            with Stopwatch() as watch:
                evaluator = Evaluator(task, target, reward, params, args.scenarios)
                result = evaluator.evaluate("test", task.base_instruction)
            runs.append(
                {
                    "run": label,
                    "seconds": round(watch.seconds, 3),
                    "target_calls": target.counter.calls,
                    "cache_hits": target.counter.cache_hits,
                    "mean_reward": float(result.rewards.mean()),
                }
            )
            print(
                f"{label}: {watch.seconds:.2f} s, {target.counter.calls} target calls, "
                f"{target.counter.cache_hits} cache hits"
            )
    cold, warm = runs
    speedup = cold["seconds"] / warm["seconds"]
    same = cold["mean_reward"] == warm["mean_reward"]
    print(
        f"warm rerun: {warm['target_calls']} target calls (goal 0), {speedup:.0f}x faster (goal >= 50x), "
        f"identical reward: {same}"
    )
    write_result(
        "cache",
        {"scenarios": args.scenarios, "runs": runs, "speedup": round(speedup, 1), "identical_reward": same},
    )


if __name__ == "__main__":
    main()
