"""Sample efficiency: reward vs target calls for random search, PPO tokens, PPO components, OPRO, the bandit.

Runs scripts/compare.py in `+mode=efficiency` (same budget, same seeds for every method), then
reads each method's best-so-far curve (training reward vs calls, one per seed) and its held-out
(test) reward at the end of the budget, beside PPO's starting point (`ppo-untrained`: the same
policy's greedy sentence before any step, 0 calls), so the printout says what PPO's calls bought:
ppo minus ppo-untrained, paired on the same held-out scenarios. The area under the curve is the mean best-so-far reward
over the budget (trapezoid over calls / budget; before a method's first scored call it counts 0).

    python benchmarks/sample_efficiency.py [--budget 40] [--seeds 0 1 2] [--scenarios 8]   (707 s at --budget 48 --scenarios 12)
    python benchmarks/sample_efficiency.py --budget 864 --seeds 0 --scenarios 0 --new-tokens 48 --score-subset 8 --keep
        (the default PPO run's budget, every held-out scenario, the default reply length; --keep
        reuses finished runs and cached replies, so a later `--seeds 0 1` adds seed 1 only)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import Stopwatch, write_result

from rlprompt.experiments.report import paired_difference

REPO = Path(__file__).resolve().parents[1]
METHODS = ("random", "ppo", "components", "opro", "bandit")
CONTROL = "ppo-untrained"  # PPO's starting point, 0 calls: what PPO's calls bought is ppo minus it


def area_under_curve(curve: list[tuple[int, float]], budget: int) -> float:
    """Mean best-so-far reward over [0, budget] calls (step function, 0 before the first point)."""
    if not curve:
        return 0.0
    xs = [0] + [min(c, budget) for c, _ in curve] + [budget]
    ys = [0.0] + [r for _, r in curve]
    area = sum((xs[i + 1] - xs[i]) * ys[i] for i in range(len(ys)))
    return area / budget


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", type=int, default=8, help="per held-out split; 0 = all")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--score-subset", type=int, default=4, help="scenarios per OPRO/bandit/random candidate"
    )
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument(
        "--keep", action="store_true", help="reuse finished runs and replies in the run folder"
    )
    args = parser.parse_args()
    # kept (gitignored): its prompts feed transfer.py
    out = REPO / "runs" / "bench" / f"sample_efficiency_budget{args.budget}"
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)  # compare.py would reuse finished runs found there
    with tempfile.TemporaryDirectory() as tmp, Stopwatch() as watch:
        cache = out / "replies.sqlite" if args.keep else Path(tmp) / "c.sqlite"
        cmd = [
            sys.executable, str(REPO / "scripts" / "compare.py"), "+mode=efficiency", f"+budget={args.budget}",
            f"+seeds=[{','.join(map(str, args.seeds))}]", f"eval.max_scenarios={args.scenarios or 'null'}",
            f"target.max_new_tokens={args.new_tokens}", f"optimizer.score_subset={args.score_subset}",
            f"threads={args.threads}", f"cache.path={cache}", f"hydra.run.dir={out}",
        ]  # fmt: skip
        result = subprocess.run(
            cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise SystemExit(f"compare failed:\n{result.stderr[-3000:]}")
        results = json.loads((out / "results.json").read_text())
    rows = {}
    for label in METHODS:
        method = results["methods"][label]
        aucs = [area_under_curve([tuple(p) for p in c], args.budget) for c in method["curves"].values()]
        test, heldout = method["splits"]["test"], method["splits"]["heldout_persona"]
        rows[label] = {
            "auc_mean": round(float(np.mean(aucs)), 4), "auc_per_seed": [round(a, 4) for a in aucs],
            "final_test_reward": round(test["mean"], 4), "test_per_seed": test["per_seed"],
            "test_minus_base": test["diff_vs_manual"], "heldout_persona_reward": round(heldout["mean"], 4),
            "heldout_persona_minus_base": heldout["diff_vs_manual"],
            "calls_used": method["target_calls"], "optimize_seconds": round(method["optimize_seconds"], 1),
            "prompts": method["prompts"],
        }  # fmt: skip
        print(f"{label:11s} AUC {np.mean(aucs):.3f} (per seed {', '.join(f'{a:.3f}' for a in aucs)})  "
              f"test {test['mean']:.3f} ({_diff(test)} vs base)  heldout_persona {heldout['mean']:.3f} "
              f"({_diff(heldout)} vs base)  calls {method['target_calls']:.0f}")  # fmt: skip
    control = results["methods"][CONTROL]["splits"]
    bought = paired_difference(results, "ppo", CONTROL)
    rows[CONTROL] = {
        "final_test_reward": round(control["test"]["mean"], 4), "test_minus_base": control["test"]["diff_vs_manual"],
        "heldout_persona_reward": round(control["heldout_persona"]["mean"], 4),
        "heldout_persona_minus_base": control["heldout_persona"]["diff_vs_manual"], "calls_used": 0,
        "prompts": results["methods"][CONTROL]["prompts"], "ppo_minus_untrained_pooled": bought,
    }  # fmt: skip
    print(f"{CONTROL:11s} test {control['test']['mean']:.3f} ({_diff(control['test'])} vs base)  heldout_persona "
          f"{control['heldout_persona']['mean']:.3f} ({_diff(control['heldout_persona'])} vs base)  calls 0")  # fmt: skip
    print(f"what PPO's {args.budget} calls bought (ppo - {CONTROL}, test+heldout_persona pooled, paired): "
          f"{bought['mean']:+.3f} [{bought['ci_low']:+.3f}, {bought['ci_high']:+.3f}] (n = {bought['n']})")  # fmt: skip
    manual = results["methods"]["manual"]["splits"]["test"]["mean"]
    best = max(METHODS, key=lambda k: rows[k]["auc_mean"])
    print(f"hand-written prompt on test: {manual:.3f}; most sample-efficient (AUC): {best}")
    print(f"wall time {watch.seconds:.0f} s; report: {out / 'report.md'}")
    write_result("sample_efficiency" + ("" if args.budget == 40 else f"_budget{args.budget}"), {
        "budget": args.budget, "seeds": args.seeds, "eval_scenarios": args.scenarios, "rows": rows,
        "manual_test_reward": manual, "wall_seconds": round(watch.seconds, 1), "curve_y": "best-so-far training reward (per method's own unit of scoring)",
    })  # fmt: skip


def _diff(split: dict) -> str:
    d = split["diff_vs_manual"]
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


if __name__ == "__main__":
    main()
