"""Scale-out: step throughput of a 2-process accelerate run against 1 process.

On this 2-core CPU the fair comparison is 1 process x 2 threads against 2 processes x 1 thread
(same cores). On a GPU machine run it with --gpu to compare 1 and 2 GPU processes.

    python benchmarks/scale_out.py [--steps 6]
"""

from __future__ import annotations

import argparse
import os

from common import write_result
from train_runs import train_subprocess


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    overrides = [f"optimizer.steps={args.steps}", "optimizer.contexts_per_step=4"]
    one = train_subprocess(overrides, processes=1, threads=cores)
    two = train_subprocess(overrides, processes=2, threads=max(1, cores // 2))
    rows = {}
    for label, summary in (("1 process", one), ("2 processes", two)):
        steps_per_s = summary["steps"] / summary["train_seconds"]
        rows[label] = {
            "steps_per_s": round(steps_per_s, 4),
            "train_seconds": round(summary["train_seconds"], 1),
            "target_calls": summary["target_calls"],
        }
        print(
            f"{label:12s} {steps_per_s:.3f} steps/s ({summary['train_seconds']:.0f} s for {summary['steps']} steps)"
        )
    ratio = rows["2 processes"]["steps_per_s"] / rows["1 process"]["steps_per_s"]
    print(f"2 processes / 1 process step throughput: {ratio:.2f}x")
    write_result("scale_out", {"steps": args.steps, "cores": cores, "rows": rows, "ratio": round(ratio, 3)})


if __name__ == "__main__":
    main()
