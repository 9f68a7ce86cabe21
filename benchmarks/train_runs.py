"""Run scripts/train.py in a subprocess and read back what it measured (shared by benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

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
        peak, log_path = 0, Path(tmp) / "train.log"
        with log_path.open("w") as log, subprocess.Popen(cmd, env=env, stdout=log, stderr=log) as proc:
            root = psutil.Process(proc.pid)
            started = time.monotonic()
            while proc.poll() is None:  # peak RSS of the whole process tree (ranks included)
                try:
                    tree = [root, *root.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in tree))
                except psutil.Error:
                    pass
                if time.monotonic() - started > timeout:
                    proc.kill()
                time.sleep(0.2)
        if proc.returncode != 0:
            raise RuntimeError(f"training failed:\n{log_path.read_text()[-3000:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        summary["peak_rss_gib"] = round(peak / 2**30, 3)
        return summary
