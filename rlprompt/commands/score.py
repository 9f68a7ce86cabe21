"""Score a system prompt on a split with the configured reward, module by module.

    rlprompt score +split=test +limit=16                     # the task's base instruction
    rlprompt score +prompt_text="You are a pushy salesperson." reward=sales_full
    rlprompt score +prompt_file=prompts/mine.txt +split=val
    rlprompt score +prompt_text=null                          # no system prompt at all

Compose config → validate → build → score → print. The scoring lives in rlprompt/evaluation/scoring.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

from rlprompt.cli import guarded, setup_logging
from rlprompt.commands.hydra_app import HydraCommand, run_hydra

SCRIPT_KEYS = ("prompt_text", "prompt_file", "split", "limit")
_UNSET = object()


def main(cfg: DictConfig) -> None:
    # Inside the Hydra task: Hydra would otherwise print a UserError with a traceback and exit 1.
    guarded(lambda: score(cfg))


COMMAND = HydraCommand("score", __doc__ or "", main, own_keys=SCRIPT_KEYS)


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt score ...` and `scripts/score.py ...`."""
    run_hydra(COMMAND, argv, prog)


def score(cfg: DictConfig) -> None:
    from rlprompt.config import validate
    from rlprompt.env.prompting import check_prompt_text
    from rlprompt.errors import ConfigError
    from rlprompt.task import load_task

    setup_logging()
    with open_dict(cfg):  # script-only keys are not part of RunConfig
        extra = {k: cfg.pop(k) if k in cfg else _UNSET for k in SCRIPT_KEYS}
    run = validate(cfg)
    task = load_task(run.task.name, run.task.path)
    if extra["prompt_file"] is not _UNSET:
        path = Path(str(extra["prompt_file"]))
        if not path.is_file():
            raise ConfigError(f"+prompt_file: no such file '{path}'")
        prompt = path.read_text().strip()
    elif extra["prompt_text"] is not _UNSET:
        prompt = extra["prompt_text"]  # null → no system prompt
    else:
        prompt = task.base_instruction
    if prompt is not None:
        prompt = check_prompt_text(
            str(prompt), "+prompt_file" if extra["prompt_file"] is not _UNSET else "+prompt_text"
        )
    split = "test" if extra["split"] is _UNSET else str(extra["split"])
    limit = None if extra["limit"] is _UNSET or extra["limit"] is None else int(extra["limit"])
    task.split(split)  # an unknown or empty split fails here, before any model loads

    from rlprompt.build import build_cache, build_target, set_threads
    from rlprompt.evaluation.evaluate import build_evaluator
    from rlprompt.evaluation.scoring import score_prompt
    from rlprompt.rewards.factory import reward_from_config

    set_threads(run)
    cache = build_cache(run.cache)
    reward = reward_from_config(run.reward, task, cache)  # before the target, as it always was
    target = build_target(run.target, cache)
    evaluator = build_evaluator(run, task, target, reward)
    report = score_prompt(evaluator, split, prompt, limit, run.eval.confidence, run.eval.bootstrap)
    print(f"task={task.name} target={target.target_id} reward={run.reward.name}")
    print(report.table())
    calls = {"target": target.counter, **reward.counters}
    print("calls: " + ", ".join(f"{k} {c.calls} (+{c.cache_hits} cached)" for k, c in calls.items()))
