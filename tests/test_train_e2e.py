"""End to end: scripts/train.py with the real offline models writes a complete run folder.

Tiny sizes (short replies, few steps, few evaluation scenarios) keep it to about a minute; the
full-size default run is `make train` (figures in the README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "reward=rubric",
    "optimizer.steps=2",
    "optimizer.contexts_per_step=2",
    "optimizer.prompts_per_context=2",
    "optimizer.ppo_epochs=1",
    "target.max_new_tokens=12",
    "eval.max_scenarios=4",
    "eval.splits=[test,heldout_persona]",
    "checkpoint_every=1",
    "threads=1",
]

pytestmark = pytest.mark.slow


def run_script(args: list[str], cwd: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*(launcher or [sys.executable]), str(REPO / "scripts" / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_train_script_writes_complete_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    # started from another directory: the package, its rewards and tasks import from anywhere
    result = run_script(
        [*TINY, f"hydra.run.dir={run_dir}", f"cache.path={tmp_path / 'c.sqlite'}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run folder:" in result.stdout

    prompts = json.loads((run_dir / "prompts.json").read_text())
    assert len(prompts["per_context"]) == 72  # every persona × stage × urgency
    for entry in prompts["per_context"].values():
        assert entry["text"].strip() and len(entry["action_ids"]) == 5
        assert entry["system_prompt"].startswith(prompts["base_instruction"])
    assert (run_dir / "prompt.txt").read_text().strip() == prompts["task_level"]["system_prompt"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["splits"]) == {"test", "heldout_persona"}
    for entry in summary["splits"].values():
        for method in ("learned", "base_instruction"):
            ci = entry[method]["reward"]
            assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
            assert entry[method]["n"] == 4
            assert set(entry[method]["parts"]) == {"rubric"}
        assert 0.0 <= entry["win_rate_vs_base"] <= 1.0
    assert summary["steps"] == 2
    # 2 steps × 2 contexts × 2 prompts, minus in-batch duplicates the cache served
    assert 0 < summary["target_calls"] <= 8
    assert summary["target_calls"] + summary["cache_hits"] >= 8

    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    state = torch.load(run_dir / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["step"] == 2 and any(k.startswith("head.") for k in state["policy"])
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_two_cpu_processes_split_rollouts_and_stay_in_sync(tmp_path):
    run_dir = tmp_path / "run2"
    launcher = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    args = [*TINY, "eval.splits=[test]", f"hydra.run.dir={run_dir}", f"cache.path={tmp_path / 'c.sqlite'}"]
    result = run_script(args, cwd=tmp_path, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2
    # each rank scored its own slice: 1 context × 2 prompts per step per rank
    assert 0 < summary["target_calls"] <= 8
    step_dir = run_dir / "checkpoints" / "step_000002"
    assert (step_dir / "rng_rank0.pt").exists() and (step_dir / "rng_rank1.pt").exists()
    # ranks drew different prompts (own sampling noise) but ended with one head (checked in-run too)
    rng0 = torch.load(step_dir / "rng_rank0.pt", weights_only=False)["sample_gen"]
    rng1 = torch.load(step_dir / "rng_rank1.pt", weights_only=False)["sample_gen"]
    assert not torch.equal(rng0, rng1)
