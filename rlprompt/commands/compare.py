"""Competing optimizers on one budget: `rlprompt compare task=car_sales +budget=160 +seeds=[0,1]`.

Every method of the mode (`+mode=compare`, default, or `+mode=ablation`) runs with the same
target-call budget and seeds; the report folder (runs/compare/<task>/<time>/, or hydra.run.dir)
gets report.md, results.json, curves.png, heatmaps.png, usage.png and one run folder per method
and seed. Other overrides (eval.max_scenarios=24, target.max_new_tokens=32, threads=2, ...)
apply to every method. Rerunning into the same hydra.run.dir skips finished runs. The harness
lives in rlprompt/experiments/comparison.py and rlprompt/experiments/report.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlprompt.cli import guarded, setup_logging
from rlprompt.commands.hydra_app import HydraCommand, run_hydra

OWN_KEYS = ("budget", "seeds", "mode")  # this command's `+key=value` options, not RunConfig fields


def main(cfg: DictConfig) -> None:
    # Inside the Hydra task: Hydra would otherwise print a UserError with a traceback and exit 1.
    guarded(lambda: compare(cfg))


COMMAND = HydraCommand(
    "compare",
    __doc__ or "",
    main,
    own_keys=OWN_KEYS,
    run_dir="runs/compare/${task.name}/${now:%Y%m%d-%H%M%S}",
    every_optimizer=True,
)


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt compare ...` and `scripts/compare.py ...`."""
    run_hydra(COMMAND, argv, prog)


def compare(cfg: DictConfig) -> None:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from rlprompt.config import validate
    from rlprompt.errors import ConfigError
    from rlprompt.experiments.comparison import plan_runs, run_comparison

    setup_logging()
    if cfg.get("budget") is None:
        raise ConfigError("compare needs +budget=<target calls per method and seed>")
    seeds = [int(s) for s in OmegaConf.to_object(cfg.get("seeds", [cfg.seed]))]  # type: ignore[union-attr]
    own = tuple(f"+{k}=" for k in OWN_KEYS) + tuple(f"{k}=" for k in OWN_KEYS)
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith((*own, "seed="))]
    planned = plan_runs(
        lambda extra: validate(compose(config_name="config", overrides=extra)),
        overrides,
        int(cfg.budget),
        seeds,
        str(cfg.get("mode", "compare")),
    )
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_comparison(planned, out_dir)
    print(f"report: {out_dir / 'report.md'}")
    for label, m in results["methods"].items():
        cells = "  ".join(
            f"{s} {e['mean']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]" for s, e in m["splits"].items()
        )
        print(f"  {label:16s} {cells}  calls {m['target_calls']:.0f}")
