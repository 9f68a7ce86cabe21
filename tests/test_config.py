"""Config validation, the registry's errors, and the installed package layout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from rlprompt.build import TARGETS
from rlprompt.config import RunConfig, validate
from rlprompt.errors import ConfigError
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
