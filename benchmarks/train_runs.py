"""Run scripts/train.py in a subprocess and read back what it measured (shared by benchmarks)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICK = ["reward=sales_default", "eval.splits=[]", "checkpoint_every=1000"]


def train_subprocess(overrides: list[str], processes: int = 1, threads: int = 0, timeout: int = 900) -> dict:
    """Train with `overrides`; return summary.json plus the peak RSS of the (largest) process."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        args = [*QUICK, *overrides, f"hydra.run.dir={run_dir}", f"cache.path={Path(tmp) / 'c.sqlite'}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if processes == 1:
            cmd = [sys.executable, str(REPO / "scripts" / "train.py"), *args, f"threads={threads}"]
        else:
            cmd = [
                str(Path(sys.executable).with_name("accelerate")),
                "launch",
                "--multi_gpu",
                "--num_processes",
                str(processes),
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
                str(REPO / "scripts" / "train.py"),
                *args,
                f"threads={threads or 1}",
            ]
            env["OMP_NUM_THREADS"] = str(threads or 1)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"training failed:\n{result.stderr[-3000:]}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["peak_rss_gib"] = round(peak_kib / 2**20, 3) if peak_kib > before else None
        return summary
