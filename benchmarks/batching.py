"""Batched vs one-by-one target generation (goal: >= 4x at batch 8 on this CPU), float32 vs bfloat16.

python benchmarks/batching.py [--new-tokens 48] [--batches 8 16]
"""

from __future__ import annotations

import argparse

from common import Stopwatch, set_threads, write_result

from rlprompt.targets.base import GenerationParams
from rlprompt.targets.hf import HFTarget
from rlprompt.task import load_task


def conversations(n: int) -> list:
    task = load_task("car_sales")
    scenarios = task.split("train")[:n]
    return [s.messages(task.base_instruction) for s in scenarios]


def tokens_per_second(
    target: HFTarget, convs: list, params: GenerationParams, batched: bool
) -> tuple[float, float]:
    with Stopwatch() as watch:
        if batched:
            replies = target.generate(convs, params)
        else:
            replies = [target.generate([c], params)[0] for c in convs]
    tokens = sum(r.completion_tokens for r in replies)
    return tokens / watch.seconds, watch.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads)
    params = GenerationParams(max_new_tokens=args.new_tokens)
    figures: dict = {"new_tokens": args.new_tokens}
    for dtype in ("float32", "bfloat16"):
        target = HFTarget(dtype=dtype, batch_size=max(args.batches))
        target.generate(conversations(2), GenerationParams(max_new_tokens=4))  # warm-up
        for batch in args.batches:
            target.batch_size = batch
            convs = conversations(batch)
            single_tps, single_s = tokens_per_second(target, convs, params, batched=False)
            batch_tps, batch_s = tokens_per_second(target, convs, params, batched=True)
            ratio = batch_tps / single_tps
            figures[f"{dtype}_batch{batch}"] = {
                "one_by_one_tok_s": round(single_tps, 1),
                "batched_tok_s": round(batch_tps, 1),
                "one_by_one_s": round(single_s, 2),
                "batched_s": round(batch_s, 2),
                "speedup": round(ratio, 2),
            }
            print(
                f"{dtype:9s} batch {batch:2d}: one-by-one {single_tps:6.1f} tok/s, batched {batch_tps:6.1f} tok/s "
                f"→ {ratio:.2f}x (goal >= 4x at batch 8)"
            )
    for batch in args.batches:
        ratio = (
            figures[f"bfloat16_batch{batch}"]["batched_tok_s"]
            / figures[f"float32_batch{batch}"]["batched_tok_s"]
        )
        figures[f"bf16_over_fp32_batch{batch}"] = round(ratio, 2)
        print(f"bfloat16 / float32 batched throughput at batch {batch}: {ratio:.2f}x")
    write_result("batching", figures)


if __name__ == "__main__":
    main()
