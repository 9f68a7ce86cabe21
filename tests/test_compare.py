"""The comparison harness: method plans compose from the real Hydra configs, and a tiny real
comparison (SmolLM2 target, every method, budget 24, one seed) writes every file of the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir

from rlprompt.config import validate
from rlprompt.evaluation.evaluate import EvalResult, bootstrap_ci, select_scenarios
from rlprompt.experiments.comparison import EVAL_SPLITS, MODES, MethodRecord, assemble_results, plan_runs
from rlprompt.experiments.report import paired_difference, write_report
from rlprompt.optimizers.base import OptimizerResult
from rlprompt.ppo.checkpoint import write_json
from rlprompt.prompt_set import PromptSet
from rlprompt.task import load_task

ROOT = Path(__file__).resolve().parents[1]


def composer(extra: list[str]):
    return validate(compose(config_name="config", overrides=extra))


def fake_report(out: Path, seeds: dict[str, list[int]], reward=None, max_scenarios: int = 6) -> dict:
    """A comparison report folder laid out exactly as `run_comparison` writes it, without models.

    `seeds` maps method label → seeds; `reward(label, seed, i)` gives scenario i's reward (default: a
    deterministic pseudo-random value). Every method's prompts.json names the optimizer ("ppo" for
    every ablation variant), as the real optimizers do.
    """
    from tests.test_export import hand_made

    run = validate({"eval": {"max_scenarios": max_scenarios, "bootstrap": 400}})
    task = load_task("car_sales")
    if reward is None:

        def reward(label, seed, i):
            return float(np.random.default_rng([len(label), seed, i]).uniform())

    def result_for(split, value):
        scenarios = select_scenarios(task, split, max_scenarios)
        rewards = np.array([value(i) for i in range(len(scenarios))])
        return EvalResult(
            split, [x.id for x in scenarios], rewards, {"rubric": rewards}, [None] * len(rewards)
        )

    records, reference = {}, {}
    for split in EVAL_SPLITS:
        reference[split] = result_for(split, lambda i: reward("manual", 0, i))
    for label, label_seeds in seeds.items():
        record = records[label] = MethodRecord(label)
        for seed in label_seeds:
            prompts = hand_made(label.split("-")[0], f"learned by {label} seed {seed}")
            run_dir = out / "runs" / label / f"seed{seed}"
            result = OptimizerResult(
                prompts["method"], seed, PromptSet.from_dict(prompts), [(0, 0.1), (8, 0.2)], 8, 24
            )
            result.run_dir = str(run_dir)
            run_dir.mkdir(parents=True)
            write_json(run_dir / "prompts.json", prompts)
            write_json(run_dir / "result.json", result.to_dict())
            record.results.append(result)
            record.evals.append(
                {
                    split: result_for(split, lambda i, lb=label, sd=seed: reward(lb, sd, i))
                    for split in EVAL_SPLITS
                }
            )
    results = assemble_results(
        run,
        task,
        records,
        reference,
        dict.fromkeys(seeds, 1.0),
        {"eval_calls": 1, "eval_cache_hits": 0, "eval_seconds": 1.0},
    )
    (out / ".hydra").mkdir(parents=True, exist_ok=True)
    (out / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "task": {"name": "car_sales"}}))
    write_json(out / "results.json", results)
    write_report(out, results)
    return results


@pytest.mark.parametrize("mode", sorted(MODES))
def test_plans_compose_from_the_real_configs(mode):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        planned = plan_runs(composer, ["optimizer.score_subset=3"], budget=40, seeds=[0, 1], mode=mode)
    assert [p.label for p in planned] == [s.label for s in MODES[mode] for _ in (0, 1)]
    for plan in planned:
        assert plan.run.optimizer.budget == 40
        # a method-specific override reaches every method that has the key, and only those
        scored = plan.run.optimizer.name not in ("ppo", "components")
        assert getattr(plan.run.optimizer, "score_subset", None) == (3 if scored else None)
        assert plan.run.optimizer.name == plan.label.split("-")[0]
    by_label = {p.label: p.run for p in planned if p.seed == 1}
    assert {p.run.seed for p in planned} == {0, 1}
    if mode == "compare":
        assert by_label["components"].policy.action_space == "components"
        assert by_label["ppo"].policy.action_space == "tokens"
    elif mode == "efficiency":
        assert set(by_label) == {"manual", "random", "ppo", "components", "opro", "bandit", "ppo-untrained"}
        # PPO's starting point: the same run as ppo, no step (0 calls under any budget)
        assert by_label["ppo-untrained"].optimizer.steps == 0
        assert (
            replace(by_label["ppo-untrained"].optimizer, steps=by_label["ppo"].optimizer.steps)
            == by_label["ppo"].optimizer
        )
        assert by_label["random"].policy.action_space == "tokens"
        assert by_label["components"].policy.action_space == "components"
    else:
        assert not by_label["ppo-no-zscore"].optimizer.zscore
        assert by_label["ppo-no-zscore"].optimizer.reward_clip == 0
        assert by_label["ppo-no-kl"].optimizer.kl_coef == 0
        assert by_label["ppo-no-entropy"].optimizer.entropy_coef == 0
        assert by_label["ppo"].optimizer.zscore and by_label["ppo"].optimizer.kl_coef > 0


@pytest.mark.slow
def test_small_real_comparison_writes_the_whole_report(tmp_path):
    out = tmp_path / "report"
    budget = 16
    command = [
        sys.executable,
        str(ROOT / "scripts" / "compare.py"),
        "task=car_sales",
        f"+budget={budget}",
        "+seeds=[0]",
        "eval.max_scenarios=3",
        "eval.bootstrap=200",
        "target.max_new_tokens=8",
        "optimizer.score_subset=2",
        "optimizer.optimizer_max_new_tokens=16",
        "optimizer.candidates_per_step=4",
        "optimizer.retire_every=8",
        "optimizer.contexts_per_step=2",
        "optimizer.prompts_per_context=4",
        "optimizer.ppo_epochs=1",
        "policy.conditioning=task_level",
        "policy.prompt_length=2",
        f"cache.path={tmp_path / 'responses.sqlite'}",
        "threads=1",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    for name in ("report.md", "results.json", "curves.png", "heatmaps.png", "usage.png"):
        assert (out / name).is_file(), name
    import matplotlib.image

    for name in ("curves.png", "heatmaps.png", "usage.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100

    results = json.loads((out / "results.json").read_text())
    labels = [s.label for s in MODES["compare"]]
    assert list(results["methods"]) == labels
    assert results["eval_calls"] > 0  # evaluation is counted apart from every budget
    for label, method in results["methods"].items():
        assert method["target_calls"] <= budget, label
        for split in ("test", "heldout_persona"):
            entry = method["splits"][split]
            assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
            assert 0.0 <= entry["win_rate_vs_manual"] <= 1.0
        assert (out / "runs" / label / "seed0" / "prompts.json").is_file()
    assert results["methods"]["manual"]["splits"]["test"]["win_rate_vs_manual"] == 0.5

    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    for label in labels:
        assert any(line.startswith(f"| {label} |") for line in table), label


def test_seed_ci_resamples_scenarios_as_clusters(tmp_path):
    """Seeds that agree per scenario add no information: the CI must be that of the scenario means."""

    def scenario_value(label, i):  # the same for every seed: seeds perfectly correlated per scenario
        return float(np.random.default_rng([len(label), i]).uniform()) + (0.05 if label == "ppo" else 0.0)

    results = fake_report(tmp_path, {"ppo": [0, 1, 2, 3]}, lambda label, seed, i: scenario_value(label, i))
    n_boot = 400
    for split in EVAL_SPLITS:
        entry = results["methods"]["ppo"]["splits"][split]
        n = entry["n"] // 4  # (scenario, seed) pairs
        per_scenario = np.array([scenario_value("ppo", i) for i in range(n)])
        manual = np.array([scenario_value("manual", i) for i in range(n)])
        naive = bootstrap_ci(np.tile(per_scenario, 4), 0.95, n_boot)  # (scenario, seed) pairs as independent
        cluster = bootstrap_ci(per_scenario, 0.95, n_boot)
        assert (entry["ci_low"], entry["ci_high"]) == pytest.approx((cluster.low, cluster.high))
        assert entry["ci_high"] - entry["ci_low"] > 1.5 * (naive.high - naive.low)
        diff = entry["diff_vs_manual"]
        expected = bootstrap_ci(per_scenario - manual, 0.95, n_boot)
        assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((expected.low, expected.high))


def test_report_tests_each_split_by_the_paired_difference(tmp_path):
    """The report's test against the hand-written prompt is the paired Δ with its CI, on every split."""
    results = fake_report(
        tmp_path, {"manual": [0], "better": [0, 1], "same": [0]},
        lambda label, seed, i: (i % 3) / 3 + (0.2 if label == "better" else 0.0),
    )  # fmt: skip
    report = (tmp_path / "report.md").read_text()
    for split in EVAL_SPLITS:
        assert f"Δ vs manual ({split})" in report
        assert results["methods"]["better"]["splits"][split]["verdict_vs_manual"] == "better"
        assert results["methods"]["same"]["splits"][split]["verdict_vs_manual"] == "no detectable difference"
    better = next(line for line in report.splitlines() if line.startswith("| better |"))
    assert better.count("+0.200 [+0.200, +0.200] better") == len(EVAL_SPLITS)
    assert "overlap" in report  # says why overlapping CIs are not the test
    assert "against ppo" not in report  # no ppo and no variant: nothing to pair


def test_report_pairs_every_ppo_variant_with_ppo_on_the_pooled_held_out_scenarios(tmp_path):
    """The ablation's question is each variant against ppo itself, not against the hand-written prompt."""

    offsets = {"ppo": 0.1, "ppo-no-kl": 0.0, "manual": 0.05}

    def reward(label, seed, i):
        noise = float(np.random.default_rng([seed, i]).uniform())  # the same for every method
        if label == "ppo-untrained":
            return noise + 0.1 + 0.01 * (i % 2 - 0.5)
        return noise + offsets[label]

    results = fake_report(
        tmp_path, {"manual": [0], "ppo": [0, 1], "ppo-no-kl": [0, 1], "ppo-untrained": [0]}, reward
    )
    report = (tmp_path / "report.md").read_text()
    n = sum(len(results["scenario_ids"][s]) for s in EVAL_SPLITS)
    section = report.split("against ppo (paired")[1].split("\n## ")[0]
    line = next(x for x in section.splitlines() if x.startswith("| ppo-no-kl |"))
    assert line == f"| ppo-no-kl | +0.100 [+0.100, +0.100] | ppo better | {n} |"
    # untrained differs from ppo by +-0.005 per scenario (seed 0 only: its noise differs from
    # ppo's seed mean), computed here from the raw rewards, not from the report's own numbers
    ppo_means = {
        s: np.array(
            [np.mean([reward("ppo", sd, i) for sd in (0, 1)]) for i in range(len(results["scenario_ids"][s]))]
        )
        for s in EVAL_SPLITS
    }
    diffs = np.concatenate(
        [
            ppo_means[s] - np.array([reward("ppo-untrained", 0, i) for i in range(len(ppo_means[s]))])
            for s in EVAL_SPLITS
        ]
    )
    pooled = paired_difference(results, "ppo", "ppo-untrained")
    assert pooled["n"] == n and pooled["mean"] == pytest.approx(diffs.mean(), abs=1e-5)
    expected = bootstrap_ci(diffs, 0.95, 400)
    assert (pooled["ci_low"], pooled["ci_high"]) == pytest.approx((expected.low, expected.high), abs=1e-5)
    assert "| ppo-untrained |" in section and "| manual |" not in section


def _terms_in_effect(opt) -> dict[str, bool]:
    """Measured on rlprompt.ppo.losses.stabilize: does each stabilizer / loss term change anything?"""
    import dataclasses

    import torch

    from rlprompt.ppo.losses import StabilizerConfig, stabilize

    group_size = opt.prompts_per_context + opt.greedy_in_group  # the greedy prompt is one more member
    reward = torch.rand(400 * group_size, generator=torch.Generator().manual_seed(0))  # raw, in [0, 1]
    reward[:group_size] = torch.eye(group_size)[0]  # one prompt apart: the largest |z|, sqrt(G-1)
    group = torch.arange(400).repeat_interleave(group_size)
    reward[group_size : 2 * group_size] = 0.5 + 0.001 * torch.arange(group_size)  # a near-tie group
    cfg = StabilizerConfig(opt.shaping, opt.shaping_scale, opt.zscore, opt.reward_clip, opt.zscore_min_std)
    stabilized = stabilize(reward, group, 0.0, 1.0, cfg)
    unclipped = stabilize(reward, group, 0.0, 1.0, dataclasses.replace(cfg, reward_clip=0.0))
    unfloored = stabilize(reward, group, 0.0, 1.0, dataclasses.replace(cfg, zscore_min_std=0.0))
    return {
        "shaping": opt.shaping,
        "zscore": opt.zscore,
        "reward_clip": not torch.equal(stabilized, unclipped),
        "kl": opt.kl_coef > 0,
        "entropy": opt.entropy_coef > 0,
        "std_floor": not torch.equal(stabilized, unfloored),
        "stratify": opt.stratify_stages,
        "paired_halves": opt.paired_halves,
        "greedy_in_group": opt.greedy_in_group,
        "warmup": opt.lr_warmup_fraction > 0,
    }


def test_every_ablation_switches_off_exactly_one_term():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        planned = plan_runs(composer, [], budget=40, seeds=[0], mode="ablation")
    from rlprompt.experiments.comparison import policy_terms, prompt_terms

    runs = {p.label: p.run for p in planned}

    def terms(run) -> dict[str, bool]:
        return {**_terms_in_effect(run.optimizer), **policy_terms(run.policy), **prompt_terms(run.prompt)}

    full = terms(runs["ppo"])
    assert full == {
        "shaping": True,
        "zscore": True,
        "reward_clip": False,
        "kl": True,
        "entropy": True,
        "std_floor": True,
        "stratify": True,
        "paired_halves": True,
        "greedy_in_group": True,
        "warmup": True,
        "period": True,
        "first_person": True,
        "whole_prompt": True,
    }
    assert runs["ppo-no-period"].policy.end_with_period is False
    # the two pieces of stop 25, each back to the stop-24 default: the rule appended to the base
    assert runs["ppo-no-whole-prompt"].prompt.template == "{base}\n{learned}"
    assert runs["ppo-no-first-person"].policy.prompt_lead == "Always"
    assert "{role}" in runs["ppo-no-first-person"].policy.prefix_template
    # the control: every term as in ppo, no step taken
    untrained = runs["ppo-untrained"]
    assert terms(untrained) == full and untrained.optimizer.steps == 0
    assert replace(untrained.optimizer, steps=runs["ppo"].optimizer.steps) == runs["ppo"].optimizer
    for label, run in runs.items():
        if label in ("manual", "ppo", "ppo-untrained"):
            continue
        variant = terms(run)
        changed = sorted(k for k in full if variant[k] != full[k])
        changed = [k for k in changed if not (k == "std_floor" and "zscore" in changed)]  # nested
        assert changed == [label.removeprefix("ppo-no-").replace("-", "_")], (label, changed)


def test_terms_in_effect_match_the_stabilizer_and_guard_the_ablation():
    from rlprompt.errors import ConfigError
    from rlprompt.experiments.comparison import terms_in_effect
    from rlprompt.ppo.config import PPOConfig

    for opt in [
        PPOConfig(),
        PPOConfig(zscore=False),
        PPOConfig(prompts_per_context=11),  # sqrt(10) > 3: the clip can fire on z-scores
        PPOConfig(prompts_per_context=10),  # sqrt(9) = 3: it cannot
        PPOConfig(prompts_per_context=10, greedy_in_group=True),  # 11 members: sqrt(10) > 3, it can
        PPOConfig(zscore=False, shaping_scale=2.0),
        PPOConfig(zscore=False, reward_clip=0.0),
        PPOConfig(zscore_min_std=0.15, stratify_stages=True),
        PPOConfig(zscore=False, zscore_min_std=0.15),  # no z-score: the floor is inert
    ]:
        assert terms_in_effect(opt) == _terms_in_effect(opt), opt
    with (
        initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"),
        pytest.raises(ConfigError, match=r"ppo-no-zscore would change \['reward_clip', 'zscore'\]"),
    ):
        plan_runs(composer, ["optimizer.prompts_per_context=12"], budget=40, seeds=[0], mode="ablation")
