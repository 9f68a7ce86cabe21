"""What a run has spent and shows while it runs: wall seconds per phase of a step (summary.json's
`phase_seconds`, benchmarks/trainer_overhead.py) and the last step's reward (the progress bar)."""

from __future__ import annotations

import contextlib
import time

import torch


class PhaseTimer:
    """Wall seconds spent per named phase, accumulated over the run."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def time(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


class RunningStats:
    """The last step's mean raw reward (all ranks), shown by the progress bar; checkpointed."""

    def __init__(self) -> None:
        self.last_mean = 0.0

    def update(self, values: torch.Tensor) -> None:
        self.last_mean = float(values.mean())

    def state_dict(self) -> dict:
        return {"last_mean": self.last_mean}

    def load_state_dict(self, state: dict) -> None:
        self.last_mean = float(state["last_mean"])  # older checkpoints also held n / mean / m2
