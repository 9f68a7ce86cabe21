"""Run every benchmark at its default size, one after another (`make bench`).

Each one prints the ratio it measures and writes benchmarks/results/<name>.json. Run them on an
otherwise idle machine: on 2 cores any other load distorts every figure (and torch with 2 threads
next to a busy core slows down far more than 2x).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = [
    "batching.py",
    "cache.py",
    "trainer_overhead.py",
    "memory.py",
    "scale_out.py",
    "sample_efficiency.py",
    "serve.py",
]

if __name__ == "__main__":
    for script in ORDER:
        print(f"== {script}", flush=True)
        subprocess.run([sys.executable, str(HERE / script)], check=True)
