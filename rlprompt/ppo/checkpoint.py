"""Atomic checkpoints that resume exactly, and the check that a resume continues the same run.

Shared state (policy head, optimizer, reward statistics) is written by the main process; each
rank writes its own file (`rng_rank<R>.pt`: its RNG states and its call counters), so a
multi-process run resumes with every rank drawing the same numbers it would have drawn and
holding its own spent budget. Files are written to a temporary name and renamed, and
`latest.json` (which also records the run's config and number of processes) moves last: a kill
at any point leaves the previous checkpoint whole.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rlprompt.errors import UserError

log = logging.getLogger(__name__)

# Config keys a resume may change (docs/RELIABILITY.md): how long the run goes on and how it is
# operated, never what it learns. A key ending in "." stands for its whole section.
RESUMABLE_KEYS = (
    "optimizer.steps",  # extend a run
    "optimizer.budget",  # extend a budgeted run
    "resume",
    "run_dir",
    "threads",
    "log_every",
    "checkpoint_every",
    "debug",
    "eval.",  # evaluation reads the trained policy
    "cache.",  # where replies are cached: a cache saves calls, it never changes a reply
    "extra.",
    "target.base_url",  # the same model behind a moved endpoint
    "target.api_key_env",
    "target.timeout_s",
    "target.max_retries",
    "target.backoff_s",
    "target.max_concurrency",
    "target.max_input_tokens",  # a guard that fails early, never a change to a reply
)


class Checkpointer:
    def __init__(self, folder: Path, rank: int, is_main: bool, meta: dict | None = None) -> None:
        self.folder, self.rank, self.is_main = Path(folder), rank, is_main
        self.meta = meta or {}  # written into latest.json (run_meta: config, number of processes)

    def save(self, step: int, shared: dict, rank_state: dict, accelerator=None) -> None:
        step_dir = self.folder / f"step_{step:06d}"
        step_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(rank_state, step_dir / f"rng_rank{self.rank}.pt")
        if accelerator is not None:
            accelerator.wait_for_everyone()
        if self.is_main:
            _atomic_save(shared, step_dir / "state.pt")
            tmp = self.folder / "latest.json.tmp"
            tmp.write_text(json.dumps({"step": step, "dir": step_dir.name, **self.meta}, default=str))
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


def run_meta(run, processes: int) -> dict:
    """What `check_resume` compares a resume against, stored in latest.json."""
    return {"processes": processes, "config": _jsonable(asdict(run))}


def check_trainable_state(expected: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    """The checkpoint's trainable weights (head or LoRA) must be exactly this policy's: same names,
    same shapes. Raises one `UserError` naming every mismatch (a strict load without the frozen
    backbone, which checkpoints do not hold)."""
    missing = sorted(set(expected) - set(saved))
    unexpected = sorted(set(saved) - set(expected))
    reshaped = [
        f"{k} {tuple(saved[k].shape)} → {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(saved))
        if tuple(saved[k].shape) != tuple(expected[k].shape)
    ]
    problems = [
        f"{label}: {', '.join(names)}"
        for label, names in (
            ("missing from the checkpoint", missing),
            ("in the checkpoint but not in this policy", unexpected),
            ("shape (checkpoint → policy)", reshaped),
        )
        if names
    ]
    if problems:
        raise UserError(
            "resume: the checkpoint's trainable weights do not match this policy ("
            + "; ".join(problems)
            + "); resume with the policy the run was trained with (policy.head, policy.hidden_size, "
            "policy.lora_r, policy.backbone), or start without resume="
        )


def check_resume(run, resume_dir: Path, processes: int) -> None:
    """Before any model loads: a resume must continue the same run.

    The number of processes must match (one RNG stream and counter set per rank), and the config
    may differ from the run's only in `RESUMABLE_KEYS`. The run's config is the one recorded in
    `checkpoints/latest.json`, or for checkpoints written before that, the run's
    `.hydra/config.yaml`. Raises one `UserError` naming each changed key (old → new).
    """
    resume_dir = Path(resume_dir)
    pointer = resume_dir / "checkpoints" / "latest.json"
    try:
        latest = json.loads(pointer.read_text())
        step_dir = pointer.parent / latest["dir"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"resume={resume_dir}: {pointer} is missing or unreadable ({type(err).__name__}: {err})"
        ) from err
    saved_processes = latest.get("processes") or len(list(step_dir.glob("rng_rank*.pt")))
    if saved_processes != processes:
        raise UserError(
            f"resume={resume_dir}: the run was trained with {saved_processes} process(es) and this launch "
            f"has {processes}; every rank resumes its own RNG streams and call counters, so relaunch with "
            f"the same number (accelerate launch --num_processes {saved_processes} ...)"
        )
    saved, source = latest.get("config"), pointer
    if saved is None:
        saved, source = (
            _hydra_config(resume_dir / ".hydra" / "config.yaml"),
            resume_dir / ".hydra" / "config.yaml",
        )
    if saved is None:
        log.warning("resume=%s: the run's config is not recorded; it cannot be compared", resume_dir)
        return
    changes = config_changes(saved, _jsonable(asdict(run)), _jsonable(asdict(type(run)())))
    if changes:
        raise UserError(
            f"resume={resume_dir}: the config differs from the run's ({source}): {'; '.join(changes)}. "
            f"A resume may change only {', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE_KEYS)}; "
            "undo the other changes, or start a new run without resume="
        )


def config_changes(saved: dict, current: dict, defaults: dict | None = None) -> list[str]:
    """`key: old → new` for every key outside `RESUMABLE_KEYS` whose value differs.

    A key the saved config lacks (a field added to the code since the run started) counts as
    changed only when its current value is not the field's default. An `optimizer.*` key the
    current config lacks (another method's setting: older runs recorded one flat OptimizerConfig
    holding every method's) cannot change what this run learns, and is skipped.
    """
    old, new, default = _flatten(saved), _flatten(current), _flatten(defaults or {})
    changes = []
    for key in sorted(set(old) | set(new)):
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE_KEYS):
            continue
        if key not in old and key in default and new.get(key) == default[key]:
            continue
        if key not in new and key.startswith("optimizer."):
            continue
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            changes.append(f"{key}: {_show(old.get(key, _ABSENT))} → {_show(new.get(key, _ABSENT))}")
    return changes


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, ensure_ascii=False)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value} if prefix else {}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _hydra_config(path: Path) -> dict | None:
    """The run's composed Hydra config as a RunConfig dict, or None when it is absent or unreadable."""
    from omegaconf import OmegaConf

    from rlprompt.config import validate_recorded

    if not path.is_file():
        return None
    try:
        return _jsonable(asdict(validate_recorded(OmegaConf.load(path))))
    except Exception as err:  # an old or hand-edited file: nothing to compare against
        log.warning("resume: cannot read %s (%s); the config is not compared", path, err)
        return None


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
