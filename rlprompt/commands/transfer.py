"""Score prompt sets on several target models: a transfer matrix (docs/EXPORT_TRANSFER.md).

    rlprompt transfer +prompts=[runs/a/prompts.json,runs/a/export] \
        +targets=[smollm2,gemma3] eval.max_scenarios=24 threads=1
    rlprompt transfer +prompts=[exports/compare] \
        '+targets=[smollm2,{config: openai, label: api, base_url: "http://127.0.0.1:8000/v1", model: my-model}]'
    rlprompt transfer +prompts=[...] +targets=[gemma3] '+target_overrides={max_new_tokens: 16}' +split=val

Writes transfer.md, transfer.json and transfer.png to +out (default: reports/transfer/<time>/).
Compose config → validate → load prompt sets + targets → score → write. Logic: rlprompt/experiments/transfer.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from rlprompt.cli import guarded, setup_logging
from rlprompt.commands.hydra_app import HydraCommand, run_hydra

SCRIPT_KEYS = ("prompts", "targets", "split", "out", "target_overrides")


def main(cfg: DictConfig) -> None:
    guarded(lambda: transfer(cfg))


COMMAND = HydraCommand("transfer", __doc__ or "", main, config_name="transfer", own_keys=SCRIPT_KEYS)


def cli(argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt transfer ...` and `scripts/transfer.py ...`."""
    run_hydra(COMMAND, argv, prog)


def transfer(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from rlprompt.build import set_threads
    from rlprompt.config import validate
    from rlprompt.errors import ConfigError
    from rlprompt.experiments.transfer import load_prompt_sets, target_specs, transfer_matrix, write_matrix

    setup_logging()
    with open_dict(cfg):  # script-only keys are not part of RunConfig
        extra = {k: _plain(cfg.pop(k)) if k in cfg else None for k in SCRIPT_KEYS}
    run = validate(cfg)
    set_threads(run)
    if not extra["prompts"]:
        raise ConfigError(
            "+prompts=[...] is required: exported JSON/YAML files, prompts.json files or folders"
        )
    if isinstance(extra["prompts"], str):
        extra["prompts"] = [extra["prompts"]]
    sets = load_prompt_sets(extra["prompts"])
    specs = target_specs(extra["targets"] or ["smollm2"], extra["target_overrides"])
    matrix = transfer_matrix(sets, specs, run, str(extra["split"] or "test"))
    out = Path(str(extra["out"])) if extra["out"] else Path(HydraConfig.get().runtime.output_dir)
    paths = write_matrix(matrix, out)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _plain(value: object) -> object:
    """OmegaConf lists/dicts → plain Python; scalars unchanged."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
