"""The comparison harness: method plans compose from the real Hydra configs, and a tiny real
comparison (SmolLM2 target, every method, budget 24, one seed) writes every file of the report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rlprompt.comparison import MODES, plan_runs
from rlprompt.config import validate

ROOT = Path(__file__).resolve().parents[1]


def composer(extra: list[str]):
    return validate(compose(config_name="config", overrides=extra))


@pytest.mark.parametrize("mode", sorted(MODES))
def test_plans_compose_from_the_real_configs(mode):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        planned = plan_runs(composer, ["optimizer.score_subset=3"], budget=40, seeds=[0, 1], mode=mode)
    assert [p.label for p in planned] == [s.label for s in MODES[mode] for _ in (0, 1)]
    for plan in planned:
        assert plan.run.optimizer.budget == 40 and plan.run.optimizer.score_subset == 3
        assert plan.run.optimizer.name == plan.label.split("-")[0]
    by_label = {p.label: p.run for p in planned if p.seed == 1}
    assert {p.run.seed for p in planned} == {0, 1}
    if mode == "compare":
        assert by_label["components"].policy.action_space == "components"
        assert by_label["ppo"].policy.action_space == "tokens"
    elif mode == "efficiency":
        assert set(by_label) == {"manual", "ppo", "components", "opro", "bandit"}
        assert by_label["components"].policy.action_space == "components"
    else:
        assert not by_label["ppo-no-zscore"].optimizer.zscore
        assert by_label["ppo-no-kl"].optimizer.kl_coef == 0
        assert by_label["ppo-no-entropy"].optimizer.entropy_coef == 0
        assert by_label["ppo"].optimizer.zscore and by_label["ppo"].optimizer.kl_coef > 0


@pytest.mark.slow
def test_small_real_comparison_writes_the_whole_report(tmp_path):
    out = tmp_path / "report"
    budget = 24
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
