"""A training run against a failing API, and the API key that must never be written anywhere.

`scripts/train.py target=openai` talks to tests/fault_server.py. The server answers the first
step, then fails for good in step 2 (a 503, then a 401 that echoes the key back). The run must
stop with one clear error naming `resume=<run dir>` (exit 3, no traceback), keep the replies it
paid for and a checkpoint of the last whole step; once the server recovers, `resume=` finishes
the run without buying any reply twice. Then every file the runs produced (run folder, Hydra
.hydra/ configs, checkpoints, TensorBoard events, summary, prompts, exports, caches, logs) is
searched for the sentinel key.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from fault_server import FaultServer

ROOT = Path(__file__).resolve().parent.parent
KEY_ENV = "RLPROMPT_SENTINEL_KEY"


def train(cwd: Path, key: str, *overrides: str, log_name: str) -> subprocess.CompletedProcess:
    env = {**os.environ, KEY_ENV: key, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "target=openai",
        "target.model=fault-model",
        f"target.api_key_env={KEY_ENV}",
        "target.max_retries=1",
        "target.backoff_s=0.01",
        "target.timeout_s=5",
        "target.max_new_tokens=8",
        "optimizer.steps=3",
        "optimizer.contexts_per_step=2",
        "optimizer.prompts_per_context=2",
        "checkpoint_every=10",  # no periodic checkpoint before the end: the failure writes its own
        "eval.splits=[val]",
        "eval.max_scenarios=2",
        "eval.bootstrap=200",
        "reward=rubric",
        "threads=1",
        *overrides,
    ]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    (cwd / log_name).write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    return result


def files_containing(root: Path, needle: str) -> list[Path]:
    data = needle.encode()
    return [p for p in root.rglob("*") if p.is_file() and data in p.read_bytes()]


@pytest.mark.slow
def test_api_failure_mid_run_checkpoints_resumes_and_never_writes_the_key(tmp_path):
    key = f"sk-sentinel-{uuid.uuid4()}"
    run_dir, cache = tmp_path / "run", tmp_path / "cache" / "responses.sqlite"
    with FaultServer(["ok"] * 6 + ["503"], default="echo_key") as server:
        failed = train(
            tmp_path,
            key,
            f"target.base_url={server.base_url}",
            f"hydra.run.dir={run_dir}",
            f"cache.path={cache}",
            log_name="failed.log",
        )
        assert server.requests[0]["authorization"] == f"Bearer {key}"  # the key was really used
        assert failed.returncode == 3, failed.stderr[-3000:]
        assert "Traceback" not in failed.stderr
        error_lines = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1, failed.stderr[-3000:]
        assert "calls failed after retries" in error_lines[0]
        assert "AuthenticationError" in error_lines[0] and "Bearer ***" in error_lines[0]
        assert "Training stopped in step 2" in error_lines[0]
        assert f"Continue this run with: resume={run_dir}" in failed.stderr

        # the last whole step is checkpointed, and every reply paid for so far is in it and cached
        pointer = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
        assert pointer["step"] == 1
        state = torch.load(run_dir / "checkpoints" / "step_000001" / "state.pt", weights_only=False)
        assert state["step"] == 1
        import sqlite3

        with sqlite3.connect(cache) as conn:
            cached = conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        assert cached == server.count("ok") == 6  # step 1, plus the failed step's completed replies
        counter = torch.load(run_dir / "checkpoints" / "step_000001" / "rng_rank0.pt", weights_only=False)
        assert counter["counters"]["target"]["calls"] == cached
        assert counter["counters"]["target"]["retries"] >= 1  # the 503 was retried

        server.set_script([], default="ok")  # the API recovers
        resumed = train(
            tmp_path,
            key,
            f"resume={run_dir}",
            f"target.base_url={server.base_url}",
            f"cache.path={cache}",
            log_name="resumed.log",
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        ok_bodies = [
            json.dumps(r["body"]["messages"], sort_keys=True) for r in server.requests if r["fault"] == "ok"
        ]
    assert len(ok_bodies) == len(set(ok_bodies)), "a reply that was paid for was bought again"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 3
    # every paid call counted once, across the failure (training calls + evaluation calls)
    assert summary["target_calls"] + summary.get("eval_target_calls", 0) == len(ok_bodies)
    assert (run_dir / ".hydra" / "config.yaml").read_text().count(KEY_ENV) == 1  # the name, not the key

    export = ROOT / "scripts" / "export.py"
    if export.exists():  # exports are part of what must stay clean
        exported = subprocess.run(
            [sys.executable, str(export), str(run_dir), "--out", str(tmp_path / "export")],
            cwd=tmp_path,
            env={**os.environ, KEY_ENV: key},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert any((tmp_path / "export").rglob("*"))

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pt" for p in written) and any("tfevents" in p.name for p in written)
    assert any(p.name == "config.yaml" and p.parent.name == ".hydra" for p in written)
    assert files_containing(tmp_path, key) == []
    assert files_containing(tmp_path, key[len("sk-sentinel-") :]) == []  # not even the unique part
