"""Kill and resume: `scripts/train.py` killed with SIGKILL mid-step resumes exactly.

The real trainer, the real SmolLM2 policy and target, in subprocesses. An uninterrupted run and a
run killed with `kill -9` just after it paid for a step's replies (but before that step's
checkpoint) run side by side with the same seed; `resume=<run dir>` then finishes the killed one.
It must end with bit-identical head weights, and the replies the killed process already paid for
must come from the cache: the resumed run makes exactly that many fewer target calls.

Checkpoint writes are atomic (tmp + rename, `latest.json` last): a process that dies between two
writes leaves the previous checkpoint whole (`test_a_kill_between_checkpoint_writes_...`).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlprompt.errors import UserError
from rlprompt.ppo.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "scripts" / "train.py"
TINY = [
    "optimizer.steps=4",
    "optimizer.contexts_per_step=2",
    "optimizer.prompts_per_context=2",
    "checkpoint_every=1",
    "target.max_new_tokens=8",
    "eval.max_scenarios=2",
    "eval.splits=[val]",
    "eval.bootstrap=200",
    "reward=rubric",
    "threads=1",
    "seed=3",
]


def script_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def start_training(cwd: Path, *overrides: str, log_name: str) -> subprocess.Popen:
    log = open(cwd / log_name, "wb")  # noqa: SIM115  (closed with the process, below)
    process = subprocess.Popen(
        [sys.executable, str(TRAIN), *TINY, *overrides],
        cwd=cwd,
        env=script_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    process.log_path = cwd / log_name  # type: ignore[attr-defined]
    process.log_file = log  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.log_file.close()  # type: ignore[attr-defined]
    return process.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def latest_step(run_dir: Path) -> int | None:
    pointer = run_dir / "checkpoints" / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.exists() else None


def cache_rows(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0
    finally:
        conn.close()


def checkpoint(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"step_{step:06d}" / "state.pt", weights_only=False)


def target_counter(run_dir: Path, step: int, rank: int = 0) -> dict:
    """A rank's target call counter at a checkpoint (each rank's counters are in its rank file)."""
    path = run_dir / "checkpoints" / f"step_{step:06d}" / f"rng_rank{rank}.pt"
    return torch.load(path, weights_only=False)["counters"]["target"]


def kill_mid_step(process: subprocess.Popen, run_dir: Path, cache: Path, deadline_s: float = 200) -> None:
    """SIGKILL once a step >= 2 has paid for its replies (cache rows beyond the last checkpoint's
    call count) but before its checkpoint is written (the PPO update takes ~0.5 s in between)."""
    deadline = time.monotonic() + deadline_s
    seen_step, calls_at_step = None, None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the run ended before it could be killed:\n{finish(process)[-3000:]}")
        step = latest_step(run_dir)
        if step is not None and step >= 2 and step != seen_step:
            seen_step, calls_at_step = step, target_counter(run_dir, step)["calls"]
        if seen_step is not None and cache_rows(cache) > calls_at_step:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            process.log_file.close()  # type: ignore[attr-defined]
            return
        time.sleep(0.02)
    pytest.fail("no kill point reached in time")


@pytest.mark.slow
def test_sigkill_mid_step_then_resume_is_exact_and_reuses_paid_replies(tmp_path):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full_cache, split_cache = tmp_path / "full.sqlite", tmp_path / "split.sqlite"
    full = start_training(
        tmp_path, f"hydra.run.dir={full_dir}", f"cache.path={full_cache}", log_name="full.log"
    )
    killed = start_training(
        tmp_path, f"hydra.run.dir={split_dir}", f"cache.path={split_cache}", log_name="killed.log"
    )
    kill_mid_step(killed, split_dir, split_cache)
    assert killed.returncode == -signal.SIGKILL

    # What the kill left: a whole checkpoint at step k < 4, plus X paid-for replies of step k + 1.
    k = latest_step(split_dir)
    assert k is not None and 2 <= k < 4
    at_kill = target_counter(split_dir, k)
    paid_after_checkpoint = cache_rows(split_cache) - at_kill["calls"]
    assert paid_after_checkpoint > 0

    # Resume without hydra.run.dir: Hydra makes a fresh output folder (its own .hydra/) under the
    # working directory; the run continues in the resumed folder, whose .hydra/ stays the original.
    original_config = (split_dir / ".hydra" / "config.yaml").read_text()
    resumed = start_training(
        tmp_path, f"resume={split_dir}", f"cache.path={split_cache}", log_name="resumed.log"
    )
    resumed_log = finish(resumed)
    assert resumed.returncode == 0, resumed_log[-4000:]
    assert f"resumed from {split_dir} at step {k}" in resumed_log
    full_log = finish(full)
    assert full.returncode == 0, full_log[-4000:]
    assert (split_dir / ".hydra" / "config.yaml").read_text() == original_config
    assert list((tmp_path / "runs").glob("*/*/.hydra/config.yaml")), "Hydra's own folder for the resume"

    # Exact: every step's head weights (and Adam state) equal the uninterrupted run's.
    a, b = checkpoint(full_dir, 4), checkpoint(split_dir, 4)
    assert a["policy"].keys() == b["policy"].keys() and len(a["policy"]) > 0
    for name in a["policy"]:
        assert torch.equal(a["policy"][name], b["policy"][name]), name
    moved = checkpoint(full_dir, 1)["policy"]
    assert any(not torch.equal(moved[n], a["policy"][n]) for n in moved), "training moved the weights"
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for name, adam in a["optimizer"]["state"].items():  # Adam moments and step counts
        assert all(
            torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["state"][name][k]))
            for k, v in adam.items()
        )
    assert target_counter(full_dir, k) == at_kill
    full_prompts = json.loads((full_dir / "prompts.json").read_text())
    assert full_prompts == json.loads((split_dir / "prompts.json").read_text())

    # Paid-for replies came from the cache: exactly X fewer target calls, X more cache hits.
    full_summary = json.loads((full_dir / "summary.json").read_text())
    resumed_summary = json.loads((split_dir / "summary.json").read_text())
    assert resumed_summary["target_calls"] == full_summary["target_calls"] - paid_after_checkpoint
    assert resumed_summary["cache_hits"] == full_summary["cache_hits"] + paid_after_checkpoint
    assert resumed_summary["splits"] == full_summary["splits"]
    assert resumed_summary["steps"] == 4


def test_a_kill_between_checkpoint_writes_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    saver = Checkpointer(folder, rank=0, is_main=True)
    saver.save(1, {"step": 1, "w": torch.ones(3)}, {"rng": 1})

    import rlprompt.ppo.checkpoint as checkpoint_module

    real_replace = os.replace

    class Killed(BaseException):
        pass

    def dies_before(name: str):
        def replace(src, dst):
            if Path(dst).name == name:
                raise Killed  # the process dies here: `dst` is never replaced
            real_replace(src, dst)

        return replace

    for last_file in ("rng_rank0.pt", "state.pt", "latest.json"):
        monkeypatch.setattr(checkpoint_module.os, "replace", dies_before(last_file))
        with pytest.raises(Killed):
            saver.save(2, {"step": 2, "w": torch.zeros(3)}, {"rng": 2})
        monkeypatch.setattr(checkpoint_module.os, "replace", real_replace)
        shared, rank = Checkpointer(folder, 0, True).load_latest()
        assert shared["step"] == 1 and torch.equal(shared["w"], torch.ones(3)) and rank == {"rng": 1}

    # a step folder holding only a half-written temporary file does not matter either
    (folder / "step_000002" / "state.pt.tmp").write_bytes(b"\x80garbage")
    assert Checkpointer(folder, 0, True).load_latest()[0]["step"] == 1

    # the next save completes over the debris
    saver.save(2, {"step": 2, "w": torch.zeros(3)}, {"rng": 2})
    assert Checkpointer(folder, 0, True).load_latest()[0]["step"] == 2


def test_a_damaged_checkpoint_is_a_clear_user_error(tmp_path):
    folder = tmp_path / "checkpoints"
    Checkpointer(folder, 0, True).save(1, {"step": 1}, {"rng": 1})
    (folder / "step_000001" / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"step_000001/state\.pt is missing or unreadable"):
        Checkpointer(folder, 0, True).load_latest()
    with pytest.raises(UserError, match=r"latest\.json missing"):
        Checkpointer(tmp_path / "nowhere", 0, True).load_latest()


ECHO = ["target.name=rank_echo", f"reward.plugins=[{ROOT / 'tests' / 'rank_fault.py'}]"]  # no target model
QUICK_RUN = [
    *ECHO,
    "optimizer.contexts_per_step=2",
    "optimizer.prompts_per_context=2",
    "eval.max_scenarios=2",
    "eval.splits=[val]",
    "eval.bootstrap=200",
    "reward=rubric",
    "threads=1",
]


def train_now(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), *QUICK_RUN, *overrides],
        cwd=cwd,
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_resume_refuses_a_changed_config_or_process_count(tmp_path):
    run_dir, cache = tmp_path / "run", tmp_path / "c.sqlite"
    first = train_now(
        tmp_path,
        "optimizer.steps=1",
        "policy.prompt_length=5",
        "optimizer.lr=2e-5",
        f"hydra.run.dir={run_dir}",
        f"cache.path={cache}",
    )
    assert first.returncode == 0, first.stderr[-3000:]

    # what the run learns changed: refused before any model loads, each key named old → new
    changed = train_now(
        tmp_path, "optimizer.steps=2", "policy.prompt_length=7", "optimizer.lr=0.001", f"resume={run_dir}"
    )
    assert changed.returncode == 2, changed.stderr[-3000:]
    errors = error_lines(changed)
    assert len(errors) == 1 and "Traceback" not in changed.stderr, changed.stderr[-3000:]
    assert "policy.prompt_length: 5 → 7" in errors[0] and "optimizer.lr: 2e-05 → 0.001" in errors[0]
    assert "optimizer.steps" not in errors[0].split("A resume may change only")[0]  # steps may change
    assert "resumed from" not in changed.stderr
    assert json.loads((run_dir / "checkpoints" / "latest.json").read_text())["step"] == 1

    # what may change: more steps, another evaluation, thread count
    pinned = ("policy.prompt_length=5", "optimizer.lr=2e-5")  # as the first run
    extended = train_now(tmp_path, "optimizer.steps=2", "eval.max_scenarios=1", *pinned, f"resume={run_dir}")
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 2

    # the run had 2 processes (one rank file each): a 1-process resume is refused with the fix
    step_dir = run_dir / "checkpoints" / "step_000002"
    (step_dir / "rng_rank1.pt").write_bytes((step_dir / "rng_rank0.pt").read_bytes())
    pointer = run_dir / "checkpoints" / "latest.json"
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "processes": 2}))
    fewer = train_now(tmp_path, "optimizer.steps=3", *pinned, f"resume={run_dir}")
    assert fewer.returncode == 2, fewer.stderr[-3000:]
    errors = error_lines(fewer)
    assert len(errors) == 1, fewer.stderr[-3000:]
    assert "trained with 2 process(es) and this launch has 1" in errors[0]
    assert "--num_processes 2" in errors[0]


def test_a_checkpoint_without_a_recorded_config_is_compared_with_the_runs_hydra_config(tmp_path):
    """Checkpoints written before latest.json recorded the config: .hydra/config.yaml stands in."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    from rlprompt.config import RunConfig
    from rlprompt.ppo.checkpoint import check_resume

    run = RunConfig()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(run)))
    Checkpointer(tmp_path / "checkpoints", 0, True).save(1, {"step": 1}, {"rng": 1})  # no meta
    check_resume(replace(run, threads=1, optimizer=replace(run.optimizer, steps=200)), tmp_path, 1)
    changed = replace(run, policy=replace(run.policy, prompt_length=7))
    with pytest.raises(UserError, match=r"config\.yaml\): policy\.prompt_length: 5 → 7\. A resume may"):
        check_resume(changed, tmp_path, 1)
    with pytest.raises(UserError, match=r"trained with 1 process\(es\) and this launch has 2"):
        check_resume(run, tmp_path, 2)
