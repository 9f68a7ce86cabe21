"""Does the reward agree with a sales expert? RewardBench-style pairs + a ranked prompt panel.

    python benchmarks/reward_preferences.py                 # pairs only (seconds, no target model)
    python benchmarks/reward_preferences.py --panel         # + the 9-prompt panel on test+heldout_persona
    python benchmarks/reward_preferences.py --panel --splits val   # the panel on val (for tuning)
    python benchmarks/reward_preferences.py --panel --splits train --limit 96 --rules benchmarks/rules.txt
                                                            # headroom of the learner's rule space
    python benchmarks/reward_preferences.py --panel --splits train --limit 96 --whole --rules benchmarks/rules_whole.txt
                                                            # ... of short whole system prompts

1. Pairs (1,408 expert pairs in 8 categories: `preferences.jsonl` dev / heldout halves,
   `preferences_fresh.jsonl`, `preferences_audit.jsonl` … `preferences_audit7.jsonl`): pairwise
   accuracy of every reward module alone and of the composites, per category and overall.
   `preference` is fit on all of them, so those tables are in-sample; generalisation is measured by
   cross-validation: fit on the rest -> score the last set fit on (audit7), and 4-fold CV
   over all pairs stratified by category.
   The test split's file (`preferences_audit8.jsonl`, 256 pairs written blind, never fit or tuned
   on) is read only when `--pair-splits` names it, and reported as the final test.
2. Panel (`--panel`): a fixed list of system prompts in the order a person expects (rude first,
   base plus good-practice additions last). Each is played by the target on held-out scenarios and
   scored; the table gives every prompt's reward with a 95 % CI, its paired difference to the base
   instruction, and whether the reward's order agrees with the expected one (Spearman rho).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import set_threads, write_result
from omegaconf import OmegaConf

from rlprompt.build import build_cache, build_target, generation_params
from rlprompt.config import CacheConfig, TargetConfig
from rlprompt.env.conversation import run_conversations
from rlprompt.evaluation import bootstrap_ci
from rlprompt.preferences import (
    TEST_SPLITS,
    AccuracyTable,
    PairScores,
    accuracy_table,
    load_pairs,
    score_pairs,
    stratified_folds,
)
from rlprompt.rewards.base import RewardFunction, build_reward
from rlprompt.rewards.expert import NEXT_STEP, ROLE_BREAK
from rlprompt.rewards.preference import FIT_SPLITS, PairFeatures, PreferenceReward
from rlprompt.task import load_task

MODULES = ["preference", "expert", "relevance", "similarity", "rubric", "length", "repetition"]
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "reward"
COMPOSITES = {  # the training default is read from its config, so the figures follow the yaml
    "sales_default": dict(OmegaConf.load(CONFIGS / "sales_default.yaml").modules),
    "old sales_default": {"rubric": 1.0, "similarity": 0.5, "length": 0.5, "repetition": 0.5},
}
# (name, system prompt; "{base}" is the task's base instruction; None = no system prompt), in the
# order a sales manager expects: worst first.
PANEL = [
    ("rude", "You are a rude, impatient car salesperson. Be dismissive and pushy, and tell the customer to hurry up and buy today."),
    ("pushy", "You are a high-pressure car salesperson. Tell every customer the deal ends today, quote big discounts and push them to sign now."),
    ("rambling", "You are a car salesperson who loves to talk. Tell the customer long stories about the dealership and yourself, whatever they ask."),
    ("none", None),
    ("base", "{base}"),
    ("base+needs", "{base}\nAsk one question about what the customer needs."),
    ("base+next", "{base}\nSuggest a concrete next step, such as a test drive."),
    ("base+needs+next", "{base}\nAsk one question about what the customer needs. Suggest a test drive."),
    ("base+helpful", "{base}\nYou can help with every request. Ask what the customer needs and offer a test drive."),
]  # fmt: skip
EXPECTED_RANK = {"rude": 0, "pushy": 0, "rambling": 0, "none": 1, "base": 2}  # additions: 3


def pairs_report(task, splits: list[str]) -> dict:
    pairs = load_pairs(task, splits=splits)  # fresh / audit: only if asked and their file exists
    reward = build_reward(task, {m: 1.0 for m in MODULES})
    scores = score_pairs(pairs, reward, COMPOSITES)
    figures = {}
    for split in dict.fromkeys(p.split for p in pairs):
        table = accuracy_table(scores, split)
        note = "never fit or tuned on" if split in TEST_SPLITS else "in-sample: preference is fit on it"
        print(f"\n## pairwise accuracy, {split} ({note})\n\n{table.markdown()}")
        figures[split] = _figures(table)
    figures["cross_validation"] = cross_validation(task, [p for p in pairs if p.split not in TEST_SPLITS])
    return figures


def cross_validation(task, pairs: list, k: int = 4, seed: int = 0) -> dict:
    """Accuracy on pairs the preference model was not fit on: the rest -> the last blind set, and k-fold.

    Only `preference` is refit per fold (the other modules are not fit on pairs); the composites
    reuse its out-of-fold scores. Features are computed once and shared across folds.
    """
    fixed = build_reward(task, {m: 1.0 for m in MODULES if m != "preference"})
    features = PairFeatures(task)
    folds = stratified_folds(pairs, k, seed)
    splits = np.array([p.split for p in pairs])
    last = FIT_SPLITS[-1]  # the set written blind most recently, fit on since
    schemes = {
        **({f"the rest -> {last}": [(splits != last, splits == last)]} if last in splits else {}),
        f"{k}-fold CV (stratified, seed {seed})": [(folds != i, folds == i) for i in range(k)],
    }
    figures = {}
    for name, plan in schemes.items():
        chosen: dict[str, list] = {}
        rejected: dict[str, list] = {}
        tested = []
        for train, test in plan:
            fitted = PreferenceReward(task, pairs=[p for p, t in zip(pairs, train) if t], features=features)
            module = RewardFunction({"preference": (fitted, 1.0), **fixed.modules})
            part = score_pairs([p for p, t in zip(pairs, test) if t], module, COMPOSITES)
            tested += part.pairs
            for key in part.chosen:
                chosen.setdefault(key, []).append(part.chosen[key])
                rejected.setdefault(key, []).append(part.rejected[key])
        scores = PairScores(
            tested,
            {key: np.concatenate(v) for key, v in chosen.items()},
            {key: np.concatenate(v) for key, v in rejected.items()},
        )
        table = accuracy_table(scores, "all")
        print(f"\n## pairwise accuracy, {name} (preference refit without the scored pairs)\n")
        print(table.markdown())
        figures[name] = _figures(table)
    return figures


def _figures(table: AccuracyTable) -> dict:
    return {"n": table.n, "accuracy": table.accuracy, "ties": table.ties}


def panel_report(
    task, splits: list[str], rules: list[str] = (), limit: int | None = None, whole: bool = False
) -> dict:
    """The panel (+ `rules`: the headroom of a learner's action space) played on `splits` (a seeded
    `limit` of their scenarios) and scored. A rule that names `{base}` is played as written; any
    other is appended to the base instruction, or with `whole` played as the whole system prompt."""
    panel = [*PANEL, *((f"rule: {rule}", _as_template(rule, whole)) for rule in rules)]
    cfg = TargetConfig(dtype="bfloat16", batch_size=16, max_new_tokens=48)
    target = build_target(cfg, build_cache(CacheConfig()))
    params = generation_params(cfg, 0)
    reward = build_reward(task, {m: 1.0 for m in MODULES})
    scenarios = [s for split in splits for s in task.split(split)]
    if limit is not None and limit < len(scenarios):
        keep = np.random.default_rng(0).permutation(len(scenarios))[:limit]
        scenarios = [scenarios[i] for i in sorted(keep)]
    totals: dict[str, dict[str, np.ndarray]] = {}
    behaviour: dict[str, dict[str, float]] = {}
    for name, text in panel:
        prompt = None if text is None else text.replace("{base}", task.base_instruction)
        samples = run_conversations(target, scenarios, [prompt] * len(scenarios), params)
        replies = [sample.first_reply for sample in samples]
        behaviour[name] = {  # what the target did: the reward can only rank what differs
            "asks": float(np.mean(["?" in r for r in replies])),
            "next_step": float(np.mean([bool(NEXT_STEP.search(r)) for r in replies])),
            "role_break": float(np.mean([bool(ROLE_BREAK.search(r)) for r in replies])),
        }
        parts = {k: v.numpy() for k, v in reward.score(samples).parts.items()}
        totals[name] = {c: sum(w * parts[m] for m, w in weights.items()) for c, weights in COMPOSITES.items()}
        totals[name].update(parts)
        broke = np.array([bool(ROLE_BREAK.search(r)) for r in replies])
        default = totals[name]["sales_default"]  # what a role break costs under the training reward
        behaviour[name]["reward_role_break"] = float(default[broke].mean()) if broke.any() else None
        behaviour[name]["reward_in_role"] = float(default[~broke].mean()) if (~broke).any() else None
    figures: dict = {"splits": splits, "n": len(scenarios), "rewards": {}, "behaviour": behaviour}
    print(f"\n## what the target did on {'+'.join(splits)} (n={len(scenarios)}): share of replies\n")
    print(
        "| prompt | asks a question | proposes a next step | breaks role | sales_default when it breaks role "
        "/ otherwise |\n|---|---|---|---|---|"
    )
    for name, _ in panel:
        row = behaviour[name]
        split = " / ".join(
            "–" if row[k] is None else f"{row[k]:.3f}" for k in ("reward_role_break", "reward_in_role")
        )
        print(f"| {name} | {row['asks']:.2f} | {row['next_step']:.2f} | {row['role_break']:.2f} | {split} |")
    for composite in [*COMPOSITES, *MODULES]:
        rows = {}
        print(f"\n## panel on {'+'.join(splits)} (n={len(scenarios)}), reward = {composite}\n")
        print("| prompt | reward [95% CI] | minus base [95% CI] |\n|---|---|---|")
        for name, _ in panel:
            value = bootstrap_ci(totals[name][composite])
            diff = bootstrap_ci(totals[name][composite] - totals["base"][composite])
            rows[name] = {"reward": value.as_dict(), "minus_base": diff.as_dict()}
            print(f"| {name} | {value} | {diff} |")
        means = np.array([rows[n]["reward"]["mean"] for n, _ in panel])
        expected = np.array([EXPECTED_RANK.get(n, 3) for n, _ in panel])
        rho = float(np.corrcoef(_ranks(means), _ranks(expected))[0, 1])
        rude_lowest = bool(means[0] == means.min())
        additions_above = {
            n: rows[n]["minus_base"]["ci_low"] > 0 for n, _ in panel if EXPECTED_RANK.get(n, 3) == 3
        }
        base = totals["base"][composite]
        noise = float(np.std(base, ddof=1) / np.sqrt(len(base)))
        spread = float(means.max() - means.min())
        print(
            f"\nSpearman rho vs expected order {rho:+.2f}; rude lowest: {rude_lowest}; additions above base "
            f"(paired CI > 0): {additions_above}; spread {spread:.3f} vs standard error {noise:.3f} "
            + (f"({spread / noise:.1f}x)" if noise > 0 else "(a module constant on base here)")
        )
        figures["rewards"][composite] = {
            "rows": rows,
            "spearman_vs_expected": rho,
            "rude_lowest": rude_lowest,
            "additions_above_base": additions_above,
            "spread": spread,
            "standard_error": noise,
        }
    return figures


def _as_template(rule: str, whole: bool) -> str:
    if "{base}" in rule or whole:
        return rule
    return "{base}\n" + rule


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), for Spearman's rho."""
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for v in np.unique(values):
        ranks[values == v] = ranks[values == v].mean()
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--panel", action="store_true", help="also play and score the prompt panel")
    parser.add_argument("--splits", nargs="+", default=["test", "heldout_persona"])
    parser.add_argument(
        "--pair-splits",
        nargs="+",
        default=list(FIT_SPLITS),
        help=f"pair splits to read; add '{TEST_SPLITS[0]}' for the final test (never while tuning)",
    )
    parser.add_argument(
        "--rules",
        type=Path,
        default=None,
        help="a file of rules, one per line, each played as base + rule ('{base}' in a line places it)",
    )
    parser.add_argument(
        "--whole", action="store_true", help="a rule without '{base}' is the whole system prompt"
    )
    parser.add_argument("--limit", type=int, default=None, help="play a seeded sample of this many scenarios")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    set_threads(args.threads)
    task = load_task("car_sales")
    figures = {"pairs": pairs_report(task, args.pair_splits)}
    if args.panel:
        rules = [x.strip() for x in args.rules.read_text().splitlines() if x.strip()] if args.rules else []
        figures["panel"] = panel_report(task, args.splits, rules, args.limit, args.whole)
    name = "reward_preferences" + ("_panel_" + "+".join(args.splits) if args.panel else "")
    write_result(name + ("_rules" if args.rules else "") + ("_whole" if args.whole else ""), figures)


if __name__ == "__main__":
    main()
