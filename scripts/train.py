"""Train a prompt policy with PPO: `accelerate launch scripts/train.py task=car_sales`.

Compose config → validate → build → train → write the run folder. No logic lives here.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlprompt.cli import guarded, setup_logging


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from rlprompt.config import validate
    from rlprompt.distributed import make_accelerator, shared_run_dir
    from rlprompt.training_run import run_training

    setup_logging()
    run = validate(cfg)
    accelerator = make_accelerator()
    run_dir = shared_run_dir(Path(run.resume or HydraConfig.get().runtime.output_dir), accelerator)
    summary = run_training(run, run_dir, accelerator)
    if summary is not None:
        print(f"run folder: {run_dir}")
        for split, entry in summary["splits"].items():
            learned, base = entry["learned"]["reward"], entry["base_instruction"]["reward"]
            print(
                f"  {split:16s} learned {learned['mean']:.3f} [{learned['ci_low']:.3f}, {learned['ci_high']:.3f}]"
                f"   base instruction {base['mean']:.3f} [{base['ci_low']:.3f}, {base['ci_high']:.3f}]"
            )


if __name__ == "__main__":
    guarded(main)
