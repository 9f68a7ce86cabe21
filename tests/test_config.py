"""Config validation, the registry's errors, and the installed package layout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlprompt.build import TARGETS
from rlprompt.config import (
    PolicyConfig,
    RewardConfig,
    RunConfig,
    ServeConfig,
    TargetConfig,
    TaskConfig,
    validate,
)
from rlprompt.errors import ConfigError
from rlprompt.optimizers.base import OPTIMIZER_CONFIGS
from rlprompt.registry import Registry


def test_defaults_validate():
    run = validate({})
    assert isinstance(run, RunConfig)
    assert run.target.model == "smollm2-135m-instruct"


def test_valid_override_is_applied():
    run = validate({"optimizer": {"lr": 1e-4}, "target": {"name": "openai"}})
    assert run.optimizer.lr == 1e-4
    assert run.target.name == "openai"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"optimizer\.lrr"):
        validate({"optimizer": {"lrr": 1}})


def test_unknown_group_is_named():
    with pytest.raises(ConfigError, match="optimiser"):
        validate({"optimiser": {"lr": 1}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"optimizer\.steps"):
        validate({"optimizer": {"steps": "many"}})


def test_registry_error_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        TARGETS.get("hf_local")
    message = str(info.value)
    assert "hf_local" in message
    assert "hf, openai" in message


def test_registry_rejects_a_second_registration_under_one_name():
    registry: Registry = Registry("widget")
    registry.register("a")(len)
    registry.register("a")(len)  # the same entry again is fine (re-import)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("a")(print)
    with pytest.raises(ConfigError, match=r"\(none registered\)"):
        Registry("gadget").get("x")


def test_package_layout_has_no_generic_top_level_names(tmp_path):
    """`rewards/` and `tasks/` install as `rlprompt.rewards` / `rlprompt.tasks` only."""
    script = textwrap.dedent(
        """
        import importlib, sys
        import rlprompt.rewards, rlprompt.tasks
        from rlprompt.task import load_task
        assert load_task("car_sales").scenarios
        for name in ("tasks", "rewards"):
            try:
                importlib.import_module(name)
            except ImportError:
                continue
            sys.exit(f"top-level '{name}' is importable from {sys.modules[name].__file__}")
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert result.stdout.strip() == "ok"


# ---------------------------------------------------------------------- every config group composes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUP_CLASSES = {
    "task": TaskConfig,
    "target": TargetConfig,
    "policy": PolicyConfig,
    "reward": RewardConfig,
    "serve": ServeConfig,
}
OPTIONS = sorted(
    (group.name, option.stem)
    for group in CONFIGS.iterdir()
    if group.is_dir()
    for option in group.glob("*.yaml")
)


def compose_validated(config_name: str, overrides: list[str]) -> RunConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return validate(compose(config_name, overrides=overrides))


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_group_option_composes_into_its_dataclass(group, option):
    """Each file of each group, selected on the main config, validates into the group's dataclass
    (the optimizer's: the dataclass that optimizer registered) with the file's values."""
    selector = f"+{group}={option}" if group == "serve" else f"{group}={option}"
    run = compose_validated("config", [selector])
    section = getattr(run, group)
    expected = OPTIMIZER_CONFIGS.get(option) if group == "optimizer" else GROUP_CLASSES[group]
    assert type(section) is expected, (group, option, type(section))
    raw = OmegaConf.to_container(OmegaConf.load(CONFIGS / group / f"{option}.yaml"))
    raw.pop("defaults", None)  # a group file's defaults list selects other groups, not its own fields
    assert set(raw) <= {f.name for f in fields(section)}
    for key, value in raw.items():
        if value != "???":  # a mandatory value (target=openai's model) keeps the dataclass default
            assert getattr(section, key) == value, (group, option, key)


def test_optimizer_components_selects_its_policy_group_and_refuses_a_token_policy():
    """`optimizer=components` alone selects `policy=components` through its own defaults list (no
    setting forced at run time); a token policy under it is refused with the fix, not overridden."""
    from rlprompt.optimizers.ppo import ComponentsOptimizer

    alone = compose_validated("config", ["optimizer=components"])
    explicit = compose_validated("config", ["optimizer=components", "policy=components"])
    assert alone.policy == explicit.policy and alone.policy.action_space == "components"
    assert (
        compose_validated("config", ["optimizer=components", "policy.prompt_length=3"]).policy.prompt_length
        == 3
    )
    assert ComponentsOptimizer(None).configure(alone) is alone
    contradiction = compose_validated("config", ["optimizer=components", "policy=tokens"])
    with pytest.raises(ConfigError, match=r"policy\.action_space is 'tokens'.*optimizer=ppo"):
        ComponentsOptimizer(None).configure(contradiction)


@pytest.mark.parametrize("config_name", ["config", "gateway", "transfer"])
def test_every_primary_config_composes(config_name):
    run = compose_validated(config_name, [])
    assert type(run.optimizer) is OPTIMIZER_CONFIGS.get(run.optimizer.name)
    assert run.optimizer.name == ("bandit" if config_name == "gateway" else "ppo")


def test_resume_ignores_other_methods_settings_recorded_by_older_runs():
    """Runs recorded before the per-optimizer configs hold every method's optimizer.* settings;
    those are not this run's, so a resume does not count them as changed. Anything else still does."""
    from dataclasses import asdict

    from rlprompt.ppo.checkpoint import config_changes

    current = asdict(validate({}))
    older = {**current, "optimizer": {**current["optimizer"], "candidates_per_step": 8, "retire_every": 24}}
    assert config_changes(older, current) == []
    older["reward"] = {**current["reward"], "modules": {"rubric": 1.0}}
    assert "reward.modules.rubric: 1.0 → (absent)" in config_changes(older, current)


def test_a_recorded_config_from_before_the_per_optimizer_configs_still_reads():
    """summary.json of an older run holds every method's optimizer.* settings (export --verify and
    resume read it back); the other methods' keys are dropped, a typo in a fresh config still fails."""
    from rlprompt.config import validate_recorded

    older = {"optimizer": {"name": "ppo", "lr": 1e-4, "candidates_per_step": 8, "retire_every": 24}}
    assert validate_recorded(older).optimizer.lr == 1e-4
    with pytest.raises(ConfigError, match="candidates_per_step"):
        validate(older)
