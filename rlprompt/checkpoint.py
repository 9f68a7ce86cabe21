"""Atomic checkpoints that resume exactly.

Shared state (policy head, optimizer, reward statistics, counters, history) is written by the
main process; each rank writes its own RNG states, so a multi-process run resumes with every
rank drawing the same numbers it would have drawn. Files are written to a temporary name and
renamed, and `latest.json` moves last: a kill at any point leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from rlprompt.errors import UserError


class Checkpointer:
    def __init__(self, folder: Path, rank: int, is_main: bool) -> None:
        self.folder, self.rank, self.is_main = Path(folder), rank, is_main

    def save(self, step: int, shared: dict, rank_state: dict, accelerator=None) -> None:
        step_dir = self.folder / f"step_{step:06d}"
        step_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(rank_state, step_dir / f"rng_rank{self.rank}.pt")
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if self.is_main:
            _atomic_save(shared, step_dir / "state.pt")
            tmp = self.folder / "latest.json.tmp"
            tmp.write_text(json.dumps({"step": step, "dir": step_dir.name}))
            os.replace(tmp, self.folder / "latest.json")
        if accelerator is not None:
            accelerator.wait_for_everyone()

    def load_latest(self) -> tuple[dict, dict]:
        pointer = self.folder / "latest.json"
        if not pointer.exists():
            raise UserError(
                f"resume: no checkpoint in {self.folder} (latest.json missing); start without resume="
            )
        step_dir = self.folder / json.loads(pointer.read_text())["dir"]
        rank_file = step_dir / f"rng_rank{self.rank}.pt"
        if not rank_file.exists():
            raise UserError(f"resume: {rank_file} is missing: resume with the same number of processes")
        return _load(step_dir / "state.pt"), _load(rank_file)


def _load(path: Path):
    try:
        return torch.load(path, weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(
            f"resume: checkpoint file {path} is missing or unreadable ({type(err).__name__}: {err}). "
            "Checkpoints are written atomically, so this one was changed after it was written"
        ) from err


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(path: Path, data) -> None:
    """Atomic JSON write (tmp + rename): a kill never leaves a half-written file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    tmp.replace(path)
