"""End to end: scripts/train.py with the real offline models writes a complete run folder.

Tiny sizes (short replies, few steps, few evaluation scenarios) keep it to about a minute; the
full-size default run is `make train` (figures in the README).
"""

from __future__ import annotations

import contextlib
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

ACCELERATE_2 = [
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


def run_script(args: list[str], cwd: Path, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [*(launcher or [sys.executable]), str(REPO / "scripts" / "train.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_train_script_writes_complete_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    # started from another directory: the package, its rewards and tasks import from anywhere
    result = run_script(
        [
            *TINY,
            "policy.conditioning=context_conditioned",
            "policy.prompt_length=5",
            "prompt.template='{base}\n{learned}'",  # the appended assembly (the default is {learned})
            f"hydra.run.dir={run_dir}",
            f"cache.path={tmp_path / 'c.sqlite'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "run folder:" in result.stdout

    prompts = json.loads((run_dir / "prompts.json").read_text())
    assert len(prompts["per_context"]) == 72  # every persona × stage × urgency
    for entry in prompts["per_context"].values():
        assert entry["text"].strip() and len(entry["action_ids"]) == 5
        assert entry["system_prompt"] == f"{prompts['base_instruction']}\n{entry['text']}"
    assert (run_dir / "prompt.txt").read_text().strip() == prompts["task_level"]["system_prompt"]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["splits"]) == {"test", "heldout_persona", "test+heldout_persona"}
    for split, entry in summary["splits"].items():
        for method in ("learned", "base_instruction"):
            ci = entry[method]["reward"]
            assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
            assert entry[method]["n"] == (8 if split == "test+heldout_persona" else 4)
            assert set(entry[method]["parts"]) == {"rubric"}
        assert 0.0 <= entry["win_rate_vs_base"] <= 1.0
    assert summary["steps"] == 2
    # 2 steps × 2 contexts × (2 sampled prompts + the greedy one, optimizer.greedy_in_group), minus
    # in-batch duplicates the cache served
    assert 0 < summary["target_calls"] <= 12
    assert summary["target_calls"] + summary["cache_hits"] >= 12

    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    state = torch.load(run_dir / "checkpoints" / "step_000002" / "state.pt", weights_only=False)
    assert state["step"] == 2 and any(k.startswith("head.") for k in state["policy"])
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "config.yaml").exists()


def test_default_task_level_run_selects_on_val_and_reports_the_pooled_paired_test(tmp_path):
    """The default method, tiny: task-level prompts, candidates picked on val, pooled verdict."""
    run_dir = tmp_path / "run"
    args = [
        *[a for a in TINY if not a.startswith("eval.")],
        "optimizer.steps=4",
        "eval.max_scenarios=4",
        "eval.select_checkpoints=2",
        "eval.select_samples=2",
        f"hydra.run.dir={run_dir}",
        f"cache.path={tmp_path / 'c.sqlite'}",
    ]
    result = run_script(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    prompts = json.loads((run_dir / "prompts.json").read_text())
    assert prompts["conditioning"] == "task_level" and prompts["per_context"] == {}
    assert set(summary["splits"]) == {"val", "test", "heldout_persona", "test+heldout_persona"}
    pooled = summary["splits"]["test+heldout_persona"]
    assert pooled["learned"]["n"] == 8  # 4 + 4 scenarios, paired
    diff = pooled["learned_minus_base"]
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    expected = pooled["learned"]["reward"]["mean"] - pooled["base_instruction"]["reward"]["mean"]
    assert diff["mean"] == pytest.approx(expected)
    # the shipped prompt is the val-best candidate or a more fluent one within 1 SE of it (the
    # default eval.fluent_within_se), and prompt.txt holds it
    selection = summary["selection"]
    best = max(selection["candidates"], key=lambda c: c["val_reward"])
    chosen = next(c for c in selection["candidates"] if c["text"] == selection["chosen"])
    assert selection["val_best"] == best["text"] and selection["fluent_within_se"] == 1.0
    assert chosen is best or chosen["fluency"] > best["fluency"]
    assert selection["chosen"] == prompts["task_level"]["text"]
    sources = {c["source"].removeprefix("trimmed ").split("@")[0] for c in selection["candidates"]}
    assert sources <= {"greedy", "sample"}
    assert (run_dir / "prompt.txt").read_text().strip() == prompts["task_level"]["system_prompt"]
    assert prompts["task_level"]["text"].startswith("I")  # the default prompt lead
    # the default ships the learned sentence as the whole system prompt (docs/LEARNING.md 4i)
    assert prompts["task_level"]["system_prompt"] == prompts["task_level"]["text"]
    assert (run_dir / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len(summary["training_reward"]["mean"]) == 4
    # the default greedy_in_group: the greedy prompt's own reward per step, and its rise
    rise = summary["greedy_reward_rise"]
    assert rise["window"] == 2 and rise["ci_low"] <= rise["mean"] <= rise["ci_high"]
    assert rise["mean"] == pytest.approx(rise["last"] - rise["first"])
    assert "on test+heldout_persona:" in result.stdout.splitlines()[-1]


def test_two_cpu_processes_split_rollouts_and_stay_in_sync(tmp_path):
    run_dir = tmp_path / "run2"
    launcher = ACCELERATE_2
    args = [*TINY, "eval.splits=[test]", f"hydra.run.dir={run_dir}", f"cache.path={tmp_path / 'c.sqlite'}"]
    result = run_script(args, cwd=tmp_path, launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["processes"] == 2
    # each rank scored its own slice: 1 context × (2 prompts + the greedy one) per step per rank
    assert 0 < summary["target_calls"] <= 12
    step_dir = run_dir / "checkpoints" / "step_000002"
    assert (step_dir / "rng_rank0.pt").exists() and (step_dir / "rng_rank1.pt").exists()
    # ranks drew different prompts (own sampling noise) but ended with one head (checked in-run too)
    rng0 = torch.load(step_dir / "rng_rank0.pt", weights_only=False)["sample_gen"]
    rng1 = torch.load(step_dir / "rng_rank1.pt", weights_only=False)["sample_gen"]
    assert not torch.equal(rng0, rng1)


def test_a_budgeted_run_evaluates_outside_the_budget_and_writes_its_summary(tmp_path):
    """optimizer.budget limits the optimization only: evaluation has its own counter (as in
    rlprompt/experiments/comparison.py), so a run whose budget ends training still evaluates and reports both."""
    run_dir = tmp_path / "run"
    # 6 calls per step (2 contexts × (2 prompts + the greedy one)): step 1 fits in 6, step 2 does
    # not, against 16 for the evaluation (2 splits × 4 scenarios × learned and base instruction)
    result = run_script(
        [
            *TINY,
            "optimizer.budget=6",
            "eval.select_checkpoints=0",  # no val selection: the 16 calls are the evaluation alone
            "eval.select_samples=0",
            f"hydra.run.dir={run_dir}",
            f"cache.path={tmp_path / 'c.sqlite'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 1  # the budget stopped training
    assert 0 < summary["target_calls"] <= 6  # training calls only, within the budget
    assert summary["eval_target_calls"] == 16  # evaluation, counted apart and never charged to it
    assert {"test", "heldout_persona"} <= set(summary["splits"])


# tests/rank_fault.py: an instant echo target that fails on one rank (RLPROMPT_TEST_FAULT)
RANK_ECHO = [
    *TINY,
    "optimizer.steps=3",
    "checkpoint_every=10",  # no periodic checkpoint before the end: a stop writes its own
    "eval.splits=[test]",
    "target.name=rank_echo",
    f"reward.plugins=[{REPO / 'tests' / 'rank_fault.py'}]",
]
HANG_S = 240  # a normal run of RANK_ECHO takes well under a minute; longer means ranks are stuck


def launch_two(args: list[str], cwd: Path, fault: str | None) -> subprocess.CompletedProcess:
    """2 CPU processes; a hang (ranks waiting on each other) fails the test instead of blocking it."""
    import psutil

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RLPROMPT_TEST_FAULT", None)
    if fault:
        env["RLPROMPT_TEST_FAULT"] = fault
    cmd = [*ACCELERATE_2, str(REPO / "scripts" / "train.py"), *args]
    out_path, err_path = cwd / f"launch-{fault}.out", cwd / f"launch-{fault}.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:  # files: no pipe held by a stuck rank
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        try:
            process.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            # the ranks run in their own sessions: kill the launcher's whole process tree
            tree = psutil.Process(process.pid).children(recursive=True)
            for proc in [*tree, psutil.Process(process.pid)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
            process.wait()
            pytest.fail(
                f"2-process run with fault {fault} hung for {HANG_S}s:\n{err_path.read_text()[-3000:]}"
            )
    return subprocess.CompletedProcess(cmd, process.returncode, out_path.read_text(), err_path.read_text())


def rank_counters(step_dir: Path) -> list[dict]:
    return [
        torch.load(step_dir / f"rng_rank{r}.pt", weights_only=False)["counters"]["target"] for r in (0, 1)
    ]


def test_a_target_failure_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "c.sqlite"
    args = [*RANK_ECHO, f"hydra.run.dir={run_dir}", f"cache.path={cache}"]
    failed = launch_two(args, tmp_path, fault="1:2:target")  # rank 1's target fails for good in step 2
    assert failed.returncode != 0, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, failed.stderr[-3000:]  # one per rank, the same failure and the same step
    assert all("injected failure on rank 1" in e and "Training stopped in step 2" in e for e in errors), (
        errors
    )
    assert f"Continue this run with: resume={run_dir}" in failed.stderr
    # one whole checkpoint of the last completed step, from both ranks
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 1
    step_dir = run_dir / "checkpoints" / "step_000001"
    assert (step_dir / "state.pt").exists() and len(rank_counters(step_dir)) == 2

    resumed = launch_two([*args, f"resume={run_dir}"], tmp_path, fault=None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["processes"] == 2


def test_a_budget_that_runs_out_on_one_rank_stops_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    args = [*RANK_ECHO, f"hydra.run.dir={run_dir}", f"cache.path={tmp_path / 'c.sqlite'}"]
    stopped = launch_two(args, tmp_path, fault="1:2:budget")  # rank 1's budget is spent after step 1
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["processes"] == 2
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 1
    # each rank's own counters, in its own rank file: rank 0 also paid for its half of step 2
    rank0, rank1 = rank_counters(run_dir / "checkpoints" / "step_000001")
    assert 0 < rank1["calls"] <= 3 and rank1["calls"] < rank0["calls"] <= 6  # 1 context × (2 + greedy)
    assert summary["target_calls"] == rank0["calls"] + rank1["calls"]
