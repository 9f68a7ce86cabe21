"""Peak RSS of the default training run (goal <= 4 GiB) and how it grows with K, G and batch size.

Each configuration trains a few steps in a fresh subprocess; its peak RSS (the whole process
tree, sampled every 0.2 s) is recorded.

    python benchmarks/memory.py [--steps 3]
"""

from __future__ import annotations

import argparse

from common import write_result
from train_runs import train_subprocess

GRID = [
    ("default (K=5, C=4, G=4, batch 16)", []),
    ("K=10", ["policy.prompt_length=10"]),
    ("G=8 (32 conversations/step)", ["optimizer.prompts_per_context=8"]),
    (
        "C=8, G=8 (64 conversations/step)",
        ["optimizer.contexts_per_step=8", "optimizer.prompts_per_context=8"],
    ),
    (
        "target batch 32",
        ["optimizer.contexts_per_step=8", "optimizer.prompts_per_context=8", "target.batch_size=32"],
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for label, overrides in GRID:
        summary = train_subprocess([f"optimizer.steps={args.steps}", *overrides])
        rows.append({"config": label, "overrides": overrides, "peak_rss_gib": summary["peak_rss_gib"]})
        print(f"{label:40s} peak RSS {summary['peak_rss_gib']} GiB")
    default = rows[0]["peak_rss_gib"]
    print(f"default run peak RSS {default} GiB (goal <= 4 GiB)")
    write_result(
        "memory",
        {
            "steps": args.steps,
            "rows": rows,
            "default_peak_rss_gib": default,
        },
    )


if __name__ == "__main__":
    main()
