"""Train a prompt policy with PPO: `accelerate launch scripts/train.py task=car_sales`.

Compose config → validate → build → train → write the run folder. No logic lives here.
User errors print one `error:` line (exit 2; `debug=true` shows the traceback); a target that
fails for good prints how to resume (exit 3). docs/RELIABILITY.md lists the guarantees.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlprompt.cli import check_overrides, guarded, setup_logging

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Inside the Hydra task: Hydra would otherwise print a UserError with a traceback and exit 1.
    guarded(lambda: train(cfg))


def train(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from rlprompt.config import validate
    from rlprompt.errors import TargetError

    setup_logging()
    run = validate(cfg)
    preflight(run)  # before the heavy imports below: a typo fails in a second

    from rlprompt.distributed import make_accelerator, shared_run_dir
    from rlprompt.training_run import run_training, verdict_line

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
            f"scripts/train.py trains the PPO prompt policy (optimizer=ppo; policy=tokens|components|lora); "
            f"'{run.optimizer.name}' runs through scripts/compare.py, every method on one budget "
            f"(python scripts/compare.py task={run.task.name} +budget=N)"
        )


if __name__ == "__main__":
    guarded(lambda: check_overrides(sys.argv[1:], CONFIG_DIR))
    main()
