"""The comparison report: report.md (tables) and PNG plots, from results.json alone.

Everything here reads the `results` dict written by `rlprompt.experiments.comparison`, so a report can be
re-drawn from a finished comparison without re-running a model.

Plots (matplotlib, Agg backend: no display needed):
- curves.png    best-so-far training reward against target calls spent, every method and seed;
- heatmaps.png  mean held-out reward per persona × stage cell, one panel per method, one colour scale;
- usage.png     component usage (share of a method's prompts containing each phrase) and the most
                frequent words of the learned token prompts.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from rlprompt.evaluation.evaluate import bootstrap_ci
from rlprompt.prompt_set import PromptSet

PLOTS = ("curves.png", "heatmaps.png", "usage.png")


def write_report(out_dir: Path, results: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    plot_curves(results, out_dir / "curves.png")
    plot_heatmaps(results, out_dir / "heatmaps.png")
    plot_usage(results, out_dir / "usage.png")
    (out_dir / "report.md").write_text(markdown(results))


# ---------------------------------------------------------------------- tables


def _ci(entry: dict[str, Any]) -> str:
    half = (entry["ci_high"] - entry["ci_low"]) / 2
    return f"{entry['mean']:.3f} ± {half:.3f}"


def _diff(entry: dict[str, Any]) -> str:
    """The paired test against the hand-written prompt: Δ [CI] and its verdict."""
    d = entry["diff_vs_manual"]
    verdict = entry.get("verdict_vs_manual", "")  # absent in results.json from older versions
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] {verdict}".rstrip()


def main_table(results: dict[str, Any]) -> str:
    splits = results["splits"]
    head = (
        ["method"]
        + [f"{s} reward ± 95% CI" for s in splits]
        + [f"Δ vs manual ({s})" for s in splits]
        + [f"win vs manual ({s})" for s in splits]
        + ["target calls", "optimizer-LLM calls", "optimize s", "eval s"]
    )
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in results["methods"].items():
        cells = (
            [label]
            + [_ci(m["splits"][s]) for s in splits]
            + [_diff(m["splits"][s]) for s in splits]
            + [f"{m['splits'][s]['win_rate_vs_manual']:.2f}" for s in splits]
            + [
                f"{m['target_calls']:.0f}",
                f"{m['optimizer_llm_calls']:.0f}",
                f"{m['optimize_seconds']:.0f}",
                f"{m['eval_seconds']:.0f}",
            ]
        )
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_difference(results: dict[str, Any], label: str, reference: str) -> dict[str, float]:
    """`label` − `reference` on the same scenarios, pooled over the held-out splits: the mean of
    the per-scenario differences (each the mean over seeds) with its percentile-bootstrap CI over
    scenarios, as `diff_vs_manual` is per split."""
    splits = results["splits"]
    diffs = np.concatenate(
        [
            np.asarray(results["methods"][label]["splits"][s]["scenario_means"])
            - np.asarray(results["methods"][reference]["splits"][s]["scenario_means"])
            for s in splits
        ]
    )
    ci = bootstrap_ci(diffs, results.get("confidence", 0.95), results.get("bootstrap", 2000))
    return {"mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high, "n": int(diffs.size)}


def paired_section(results: dict[str, Any], reference: str = "ppo") -> str:
    """Each `ppo-*` variant (the ablation's, and the untrained control) against `ppo` itself: what
    switching one piece off costs, paired on the same scenarios. Empty where there is nothing to
    pair (no `ppo`, no variant, or results.json from before per-scenario means were kept)."""
    methods = results["methods"]
    variants = [label for label in methods if label.startswith(f"{reference}-")]
    if reference not in methods or not variants:
        return ""
    if any(
        "scenario_means" not in methods[x]["splits"][results["splits"][0]] for x in [reference, *variants]
    ):
        return ""
    pooled = "+".join(results["splits"])
    rows = [
        f"## Each variant against {reference} (paired, {pooled} pooled)",
        "",
        f"| variant | {reference} − variant [95% CI] | verdict | scenarios |",
        "|---|---|---|---|",
    ]
    for label in variants:
        d = paired_difference(results, reference, label)
        verdict = "no detectable difference"
        if d["ci_low"] > 0:
            verdict = f"{reference} better"
        elif d["ci_high"] < 0:
            verdict = f"{label} better"
        rows.append(
            f"| {label} | {d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {verdict} | {d['n']} |"
        )
    return "\n".join([*rows, ""])


def parts_table(results: dict[str, Any]) -> str:
    methods = results["methods"]
    first = next(iter(methods.values()))
    modules = list(first["splits"][results["splits"][0]]["parts"])
    head = ["method", "split", *modules]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, m in methods.items():
        for split in results["splits"]:
            parts = m["splits"][split]["parts"]
            rows.append("| " + " | ".join([label, split, *(f"{parts[k]:.3f}" for k in modules)]) + " |")
    return "\n".join(rows)


def prompts_section(results: dict[str, Any]) -> str:
    lines = []
    for label, m in results["methods"].items():
        for seed, raw in m["prompts"].items():
            prompts = PromptSet.from_dict(raw)
            n = len(prompts.per_context)
            where = f"task-level; {n} per-context prompts in prompts.json" if n else "task-level"
            # `text` is what the method chose (the learned part, or the whole instruction)
            text = prompts.task_level.text.replace("\n", " ")
            lines.append(
                f"- **{label}** (seed {seed}, {where}, template {prompts.prompt_template!r}): {text[:300]!r}"
            )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"# Optimizer comparison: {results['task']}",
            "",
            f"- budget: {results['budget']} target calls per method and seed; seeds: {results['seeds']}",
            f"- target: {results['target_model']}; reward: {results['reward']}",
            f"- evaluation: greedy, splits {results['splits']}, "
            f"max {results['eval_max_scenarios']} scenarios per split; "
            f"{results['eval_calls']} evaluation calls (+{results['eval_cache_hits']} cache hits), "
            f"not charged to any budget, {results['eval_seconds']:.0f} s",
            f"- aggregation: {results['aggregation']}",
            "- the test: Δ vs manual is the paired difference (method − hand-written prompt on the same "
            "scenarios) with its 95% cluster-bootstrap CI; *better* / *worse* when that CI excludes 0, "
            "else *no detectable difference*. Do not read overlapping reward CIs as a test: two "
            "methods scored on the same scenarios can differ clearly while their CIs overlap",
            "- win rate: share of (scenario, seed) pairs where the method beats the hand-written prompt "
            "(ties count half)",
            "",
            "## Held-out reward",
            "",
            main_table(results),
            "",
            paired_section(results),
            "## Reward modules (mean per module, raw scale)",
            "",
            parts_table(results),
            "",
            "## Plots",
            "",
            "![reward vs target calls](curves.png)",
            "",
            "![persona x stage](heatmaps.png)",
            "",
            "![usage](usage.png)",
            "",
            "## Final prompts (task-level; the part each method chose)",
            "",
            prompts_section(results),
            "",
        ]
    )


# ---------------------------------------------------------------------- plots


def plot_curves(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, m) in enumerate(results["methods"].items()):
        for j, curve in enumerate(m["curves"].values()):
            if not curve:
                continue
            calls, reward = zip(*curve)
            color = colors[i % len(colors)]
            if len(curve) == 1:  # a static prompt scored once: a level, not a curve
                ax.axhline(reward[0], color=color, linestyle="--", alpha=0.7)
            ax.step(
                calls,
                reward,
                where="post",
                marker=".",
                color=color,
                alpha=1.0 if j == 0 else 0.5,
                label=label if j == 0 else None,
            )
    if results["budget"]:
        ax.axvline(results["budget"], color="grey", linestyle=":", label="budget")
    ax.set_xlabel("target calls spent")
    ax.set_ylabel("best-so-far training reward")
    ax.set_title(f"{results['task']}: reward vs target calls")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cell_grid(results: dict[str, Any], method: dict[str, Any]) -> np.ndarray:
    personas, stages = results["personas"], results["stages"]
    grid = np.full((len(personas), len(stages)), np.nan)
    cells = {k: v for split in results["splits"] for k, v in method["splits"][split]["cells"].items()}
    for i, persona in enumerate(personas):
        for j, stage in enumerate(stages):
            grid[i, j] = cells.get(f"{persona}|{stage}", np.nan)
    return grid


def plot_heatmaps(results: dict[str, Any], path: Path) -> None:
    methods = results["methods"]
    grids = {label: cell_grid(results, m) for label, m in methods.items()}
    values = np.concatenate([g[~np.isnan(g)] for g in grids.values()] or [np.zeros(1)])
    vmin, vmax = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    cols = min(4, len(grids))
    rows = int(np.ceil(len(grids) / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.8 * cols, 3.4 * rows), squeeze=False, layout="constrained"
    )
    image = None
    for ax, (label, grid) in zip(axes.flat, grids.items()):
        image = ax.imshow(grid, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(len(results["stages"])), results["stages"], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(results["personas"])), results["personas"], fontsize=7)
    for ax in list(axes.flat)[len(grids) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="mean held-out reward")
    fig.suptitle("held-out reward per persona × stage (test + heldout_persona)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def component_usage(results: dict[str, Any], method: dict[str, Any]) -> list[float]:
    """Share of the method's final prompts (per-context if any, else task-level) holding each phrase."""
    entries = [e for raw in method["prompts"].values() for e in PromptSet.from_dict(raw).entries]
    return [
        sum(c["phrase"] in e.system_prompt for e in entries) / max(len(entries), 1)
        for c in results["components"]
    ]


def plot_usage(results: dict[str, Any], path: Path) -> None:
    methods = results["methods"]
    labels = list(methods)
    usage = np.array([component_usage(results, methods[label]) for label in labels])
    words: Counter[str] = Counter()
    for m in methods.values():
        for raw in m["prompts"].values():
            prompts = PromptSet.from_dict(raw)
            if prompts.action_space == "tokens":
                words.update(w for e in prompts.entries for w in e.text.split())
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.5 * len(labels) + 3.5))
    image = left.imshow(usage, vmin=0, vmax=1, cmap="Blues", aspect="auto")
    left.set_yticks(range(len(labels)), labels, fontsize=8)
    names = [c["name"] for c in results["components"]]
    left.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    left.set_title("component usage (share of final prompts)", fontsize=9)
    fig.colorbar(image, ax=left, shrink=0.8)
    top = words.most_common(15)
    if top:
        right.barh([w for w, _ in top][::-1], [c for _, c in top][::-1])
        right.set_title("most frequent words in learned token prompts", fontsize=9)
    else:
        right.text(0.5, 0.5, "no token-policy prompts", ha="center", va="center")
        right.axis("off")
    right.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
