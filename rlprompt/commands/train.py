"""Train the PPO prompt policy on a task, evaluate it on the held-out splits, write a run folder.

    rlprompt train task=car_sales optimizer.steps=10
    accelerate launch --cpu --num_processes 1 -m rlprompt.train task=car_sales     # = scripts/train.py
    accelerate launch --multi_gpu --num_processes 2 -m rlprompt.train threads=1    # two processes

Writes runs/<task>/<time>-ppo/ (or hydra.run.dir): .hydra/config.yaml, tb/, checkpoints/,
prompts.json, prompt.txt, summary.json. resume=<run dir> continues a run exactly.
User errors print one `error:` line (exit 2; `debug=true` shows the traceback); a target that
fails for good prints how to resume (exit 3). docs/RELIABILITY.md lists the guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from rlprompt.cli import guarded, setup_logging
from rlprompt.commands.hydra_app import HydraCommand, run_hydra


def main(cfg: DictConfig) -> None:
    # Inside the Hydra task: Hydra would otherwise print a UserError with a traceback and exit 1.
    guarded(lambda: train(cfg))


COMMAND = HydraCommand("train", __doc__ or "", main)


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt train ...`, `python -m rlprompt.train ...`, `scripts/train.py ...`."""
    run_hydra(COMMAND, argv, prog)


def train(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from rlprompt.config import validate
    from rlprompt.errors import TargetError

    setup_logging()
    run = validate(cfg)
    preflight(run)  # before the heavy imports below: a typo fails in a second

    from rlprompt.ppo.distributed import make_accelerator, shared_run_dir
    from rlprompt.ppo.run import run_training, verdict_line

    accelerator = make_accelerator()
    run_dir = shared_run_dir(Path(run.resume or HydraConfig.get().runtime.output_dir), accelerator)
    try:
        summary = run_training(run, run_dir, accelerator)
    except TargetError as err:
        raise TargetError(f"{err}\nContinue this run with: resume={run_dir}") from err
    if summary is not None:
        print(f"run folder: {run_dir}")
        for split, entry in summary["splits"].items():
            learned, base = entry["learned"]["reward"], entry["base_instruction"]["reward"]
            print(
                f"  {split:16s} learned {learned['mean']:.3f} [{learned['ci_low']:.3f}, {learned['ci_high']:.3f}]"
                f"   base instruction {base['mean']:.3f} [{base['ci_low']:.3f}, {base['ci_high']:.3f}]"
            )
        print(verdict_line(summary))


def preflight(run) -> None:
    """Cheap checks that would otherwise fail after training (eval splits) or deep in a build."""
    from rlprompt.build import check_run
    from rlprompt.errors import ConfigError, UserError
    from rlprompt.task import load_task

    check_run(run)  # cross-field combinations (policy.head=lora needs policy.action_space=tokens)

    task = load_task(run.task.name, run.task.path)
    for split in ["train", *run.eval.splits]:
        task.split(split)  # unknown or empty: a ConfigError naming the split and the file
    if run.resume and not (Path(run.resume) / "checkpoints" / "latest.json").is_file():
        raise UserError(
            f"resume={run.resume}: no checkpoint there ({Path(run.resume) / 'checkpoints' / 'latest.json'} "
            "is missing); pass the run folder of an earlier run, or start without resume="
        )
    from rlprompt.rewards.base import REWARDS
    from rlprompt.rewards.factory import load_plugins

    load_plugins(run.reward.plugins)
    for name in run.reward.modules:
        REWARDS.get(name)  # before any model loads for the modules listed ahead of it
    from rlprompt.optimizers import OPTIMIZERS

    OPTIMIZERS.get(run.optimizer.name)  # unknown name: the error lists the valid ones
    if run.optimizer.name != "ppo":
        raise ConfigError(
            f"rlprompt train (scripts/train.py) trains the PPO prompt policy (optimizer=ppo; "
            f"policy=tokens|components|lora); '{run.optimizer.name}' runs through rlprompt compare "
            f"(scripts/compare.py), every method on one budget "
            f"(rlprompt compare task={run.task.name} +budget=N)"
        )
