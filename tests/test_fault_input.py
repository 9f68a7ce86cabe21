"""Bad input: one clear `error:` line naming the file, field or name and the valid choices.

`scripts/train.py` and `scripts/score.py` run in subprocesses with broken overrides, unknown
names, broken task files, empty splits, a prompt with control characters and a reward that
returns NaN. Each must exit 2 with exactly one `error:` line on stderr and no traceback;
`debug=true` shows the traceback. The library-level checks behind them are tested in-process.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlprompt.cli import check_overrides
from rlprompt.config import validate
from rlprompt.env.prompting import check_prompt_text
from rlprompt.errors import ConfigError, RewardError
from rlprompt.rewards.base import RewardFunction, RewardResult, Sample
from rlprompt.task import load_task

ROOT = Path(__file__).resolve().parent.parent
TRAIN, SCORE = ROOT / "scripts" / "train.py", ROOT / "scripts" / "score.py"
TASKS = ("car_sales", "saas_renewal")
SPLITS = "train, val, test, heldout_persona"
QUICK = ["threads=1", "reward=rubric", "target.max_new_tokens=4"]


def broken_task(root: Path, name: str, edit) -> Path:
    folder = root / name
    shutil.copytree(ROOT / "tasks" / "car_sales", folder)
    edit(folder)
    return folder


def _bad_yaml(folder: Path) -> None:
    (folder / "domain.yaml").write_text("personas: [unclosed\nstages: {")


def _bad_scenario_line(folder: Path) -> None:
    lines = (folder / "scenarios.jsonl").read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]  # a line cut in half
    (folder / "scenarios.jsonl").write_text("\n".join(lines) + "\n")


def _no_val_split(folder: Path) -> None:
    text = (folder / "domain.yaml").read_text().replace("val_fraction: 0.2", "val_fraction: 0.0")
    (folder / "domain.yaml").write_text(text)


NAN_PLUGIN = textwrap.dedent(
    """
    from rlprompt.rewards.base import RewardResult, register_reward

    @register_reward("always_nan")
    class AlwaysNaN:
        low, high = 0.0, 1.0

        def __init__(self, task):
            pass

        def score(self, samples):
            return [RewardResult(float("nan")) for _ in samples]
    """
)


def cases(tmp: Path) -> dict[str, tuple[Path, list[str], list[str]]]:
    """name → (script, overrides, strings stderr must contain)."""
    bad_yaml = broken_task(tmp, "bad_yaml", _bad_yaml)
    no_val = broken_task(tmp, "no_val", _no_val_split)
    (tmp / "plugin.py").write_text(NAN_PLUGIN)
    (tmp / "control.txt").write_text("Be warm.\x07\x1b[31m Ask questions.")
    run_dir = f"hydra.run.dir={tmp / 'runs' / 'x'}"
    return {
        "unknown key": (TRAIN, ["optimizer.lrr=1e-4"], ["'optimizer.lrr'", "Did you mean 'optimizer.lr'?", "Valid fields: name, budget, private_cache, steps"]),
        "unknown key added": (TRAIN, ["+optimizer.lrr=1e-4"], ["'optimizer.lrr'", "Valid fields: name, budget, private_cache, steps"]),
        "unknown group": (TRAIN, ["optimiser.lr=1"], ["'optimiser.lr'", "Did you mean 'optimizer'?", "Valid fields: task, target"]),
        "wrong type": (TRAIN, ["optimizer.steps=many"], ["'optimizer.steps'", "'many'", "Integer"]),
        "unknown task option": (TRAIN, ["task=nope_task"], ["unknown task 'nope_task'", "Valid task names: car_sales, saas_renewal"]),
        "unknown reward option": (TRAIN, ["reward=nope_reward"], ["unknown reward 'nope_reward'", "rubric, sales_default, sales_full"]),
        "unknown target": (TRAIN, ["target.name=nope_target", run_dir], ["unknown target 'nope_target'", "Valid target names: hf, openai"]),
        "unknown optimizer": (TRAIN, ["optimizer.name=nope_opt", run_dir], ["unknown optimizer 'nope_opt'", "Valid optimizer names:", "ppo"]),
        "malformed domain.yaml": (TRAIN, [f"task.path={bad_yaml}", run_dir], [str(bad_yaml / "domain.yaml"), "not valid YAML"]),
        "empty split": (TRAIN, [*QUICK, f"task.path={no_val}", run_dir], ["split 'val'", "is empty", str(no_val / "scenarios.jsonl")]),
        "score unknown split": (SCORE, [*QUICK, "+split=nope_split", run_dir], ["unknown split 'nope_split'", SPLITS]),
        "score unknown key": (SCORE, ["+prompt_txt=hi", run_dir], ["'prompt_txt'", "Valid fields: task, target"]),
        "score control characters": (SCORE, [*QUICK, f"+prompt_file={tmp / 'control.txt'}", run_dir], ["+prompt_file", "control characters", "'\\x07'"]),
        "score NaN reward": (
            SCORE,
            [*QUICK, f"reward.plugins=[{tmp / 'plugin.py'}]", "+reward.modules.always_nan=1.0", "+limit=1", "+split=val", f"cache.path={tmp / 'c.sqlite'}", run_dir],
            ["reward module 'always_nan' returned nan", "outside its range [0.0, 1.0]"],
        ),
    }  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case, two at a time (each is mostly interpreter start-up)."""
    tmp = tmp_path_factory.mktemp("bad_input")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    table = cases(tmp)

    def run(item):
        name, (script, overrides, _) = item
        done = subprocess.run(
            [sys.executable, str(script), *overrides],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return name, done

    with ThreadPoolExecutor(max_workers=2) as pool:
        return table, dict(pool.map(run, table.items()))


CASE_NAMES = [
    "unknown key",
    "unknown key added",
    "unknown group",
    "wrong type",
    "unknown task option",
    "unknown reward option",
    "unknown target",
    "unknown optimizer",
    "malformed domain.yaml",
    "empty split",
    "score unknown split",
    "score unknown key",
    "score control characters",
    "score NaN reward",
]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_user_error_is_one_line_without_traceback(results, name):
    table, done = results
    _, _, expected = table[name]
    result = done[name]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    for text in expected:
        assert text in errors[0], (text, errors[0])
    assert result.returncode == 2, result.stderr[-3000:]
    assert not (Path(table[name][1][-1].split("=", 1)[1]) / "checkpoints").exists()


def test_case_list_is_complete(tmp_path):
    assert sorted(CASE_NAMES) == sorted(cases(tmp_path))


def test_debug_true_shows_the_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TRAIN), "task.name=nope_task", "debug=true", f"hydra.run.dir={tmp_path / 'r'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr and "nope_task" in result.stderr


# ---------------------------------------------------------------------- the checks behind them


def test_task_files_and_names_are_checked_with_file_and_line(tmp_path):
    bad_line = broken_task(tmp_path, "bad_line", _bad_scenario_line)
    with pytest.raises(ConfigError, match=rf"{bad_line / 'scenarios.jsonl'}:2: not valid JSON"):
        load_task("bad_line", str(bad_line))
    with pytest.raises(
        ConfigError, match=r"unknown task 'nope_task'.*Valid task names: car_sales, saas_renewal"
    ):
        load_task("nope_task")
    with pytest.raises(ConfigError, match=f"unknown split 'nope_split'. Valid splits: {SPLITS}"):
        load_task("car_sales").split("nope_split")
    no_val = broken_task(tmp_path, "no_val", _no_val_split)
    with pytest.raises(ConfigError, match="split 'val' of task 'car_sales' is empty"):
        load_task("no_val", str(no_val)).split("val")


def test_unknown_reward_and_target_names_list_the_valid_ones():
    from rlprompt.build import TARGETS
    from rlprompt.rewards.base import REWARDS

    with pytest.raises(ConfigError, match=r"unknown reward 'nope'\. Valid reward names: .*rubric"):
        REWARDS.get("nope")
    with pytest.raises(ConfigError, match=r"unknown target 'nope'\. Valid target names: .*hf, openai"):
        TARGETS.get("nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "decodes to an empty string"),
        (" \n\t ", "decodes to an empty string"),
        ("buy\x00now", r"control characters '\\x00'; use"),
        ("\x1b[31mred", "control characters"),
        ("zero\u200bwidth", "control characters"),
    ],
)
def test_prompt_text_that_is_empty_or_holds_control_characters_is_refused(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_prompt_text(text, "learned prompt")
    assert str(info.value).startswith("learned prompt:")


def test_ordinary_prompt_text_passes():
    for text in ("Be warm.\nAsk one question.", "Café, naïve — 日本語 ✓", "\tIndented"):
        assert check_prompt_text(text, "x") == text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.5, 1.5, "0.5"])
def test_a_reward_module_returning_nan_or_out_of_range_is_refused(bad):
    class Bad:
        low, high = 0.0, 1.0

        def score(self, samples):
            return [RewardResult(bad) for _ in samples]

    scenario = load_task("car_sales").split("val")[0]
    sample = Sample(scenario, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}])
    with pytest.raises(
        RewardError, match=r"reward module 'bad_module' returned .*outside its range \[0.0, 1.0\]"
    ) as info:
        RewardFunction({"bad_module": (Bad(), 1.0)}).score([sample])
    assert scenario.id in str(info.value)


def test_validate_names_the_key_and_lists_the_valid_fields():
    with pytest.raises(ConfigError) as info:
        validate({"eval": {"max_scenario": 3}})
    message = str(info.value)
    assert "'eval.max_scenario'" in message and "Valid fields: splits, max_scenarios" in message
    assert "\n" not in message  # one line
    with pytest.raises(ConfigError, match=r"'target.max_new_tokens'.*'lots'"):
        validate({"target": {"max_new_tokens": "lots"}})


def test_check_overrides_accepts_valid_overrides():
    configs = ROOT / "configs"
    check_overrides(
        [
            "task=saas_renewal",
            "optimizer.lr=1e-4",
            "+reward.modules.rubric=2.0",  # free-form dict: anything goes below it
            "reward.options.rubric={replies: all}",
            "hydra.run.dir=/tmp/x",
            "~seed",
            "+split=val",
            "seed=1,2,3",
        ],
        configs,
        script_keys=("split",),
    )
    with pytest.raises(ConfigError, match=r"'target.max_new_token'.*Did you mean 'target.max_new_tokens'"):
        check_overrides(["target.max_new_token=3"], configs)
    with pytest.raises(
        ConfigError, match=r"unknown policy 'token'.*Valid policy names: components, lora, tokens"
    ):
        check_overrides(["policy=token"], configs)


LORA_FIELDS = (
    "policy.head=lora",
    "policy.action_space=components",
    "policy.action_space=tokens",
    "policy.head=mlp",
)


def test_lora_with_component_actions_is_refused_before_any_model_loads(tmp_path):
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(TRAIN), *QUICK, "policy=components", "policy.head=lora", "optimizer.steps=1",
         "optimizer.contexts_per_step=1", "optimizer.prompts_per_context=2", "policy.prompt_length=1",
         f"cache.path={tmp_path / 'c.sqlite'}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert all(field in errors[0] for field in LORA_FIELDS), errors[0]
    assert "ppo:" not in done.stderr  # refused at start-up, not after a rollout
    assert not (run_dir / "checkpoints").exists()


def test_lora_guard_in_the_policy_and_in_the_comparison_plan():
    from hydra import compose, initialize_config_dir

    from rlprompt.config import PolicyConfig
    from rlprompt.experiments.comparison import plan_runs
    from rlprompt.policy.policy import PromptPolicy

    cfg = PolicyConfig(action_space="components", head="lora")
    with pytest.raises(ConfigError) as info:  # before the backbone is touched: None would fail later
        PromptPolicy(cfg, load_task("car_sales"), backbone=None, tokenizer=None)
    assert all(field in str(info.value) for field in LORA_FIELDS), str(info.value)
    with (
        initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"),
        pytest.raises(ConfigError, match=r"policy\.head=lora.*policy\.action_space=components"),
    ):
        # the components method would fail only after every method before it had run
        plan_runs(
            lambda o: validate(compose(config_name="config", overrides=o)), ["policy.head=lora"], 24, [0]
        )


# ---------------------------------------------------------------------- inputs too long for a model

LONG_TURN = " ".join(["I need a reliable family car with good mileage and"] * 300)  # 3,000 words


@pytest.mark.slow
def test_a_long_scenario_fails_fast_before_generation_naming_it(monkeypatch):
    """A 3,000-word customer turn fits SmolLM2's 8k window but made a step run for minutes without a
    word: the default target.max_input_tokens refuses it before the model runs, naming the scenario."""
    import dataclasses
    import time

    from rlprompt.build import build_target
    from rlprompt.config import TargetConfig
    from rlprompt.env.conversation import run_conversations
    from rlprompt.errors import UserError
    from rlprompt.targets.base import GenerationParams

    target = build_target(TargetConfig(dtype="float32"), cache=None)
    model = target.inner.model

    def generate(*args, **kwargs):
        raise AssertionError("the model generated from an over-long input")

    monkeypatch.setattr(model, "generate", generate)
    task = load_task("car_sales")
    short = task.split("val")[0]
    long = dataclasses.replace(short, id="car-long-1", customer=LONG_TURN)
    started = time.perf_counter()
    with pytest.raises(UserError) as info:
        run_conversations(target, [short, long], ["Be brief."] * 2, GenerationParams(max_new_tokens=8))
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert "scenario 'car-long-1'" in message and short.id not in message, message
    assert "over the input limit of 2048" in message and "target.max_input_tokens" in message, message
    assert "8192" in message  # the model's context window, the most the setting can allow
    assert target.counter.calls == 0  # nothing was generated, nothing is counted


@pytest.mark.slow
def test_a_policy_prefix_over_the_backbone_window_is_refused_before_the_backbone_runs(monkeypatch):
    import rlprompt.policy.action_spaces as action_spaces
    from rlprompt.config import PolicyConfig
    from rlprompt.errors import UserError
    from rlprompt.models import load_model
    from rlprompt.policy.policy import PromptPolicy

    backbone, tokenizer = load_model("smollm2-135m-instruct", "float32")
    cfg = PolicyConfig(prefix_template="{context} " + LONG_TURN * 3)  # ~9,000 tokens
    policy = PromptPolicy(cfg, load_task("car_sales"), backbone, tokenizer)

    def forward(*args, **kwargs):
        raise AssertionError("the backbone ran on an over-long prefix")

    monkeypatch.setattr(action_spaces, "_forward", forward)
    with pytest.raises(UserError) as info:
        policy.sample(["Newbie, Introduction, low urgency."])
    message = str(info.value)
    assert "policy prefix" in message and "8192" in message and "policy.prefix_template" in message, message


@pytest.mark.slow
def test_generation_computes_vocabulary_logits_for_the_last_position_only(smollm2):
    """Prefill memory stays bounded: generate asks the model for the last position's logits only
    (transformers sets logits_to_keep=1 where the model supports it), not (batch, length, vocab)."""
    from rlprompt.targets.base import GenerationParams

    head = smollm2.model.get_output_embeddings()
    positions: list[int] = []
    hook = head.register_forward_hook(lambda module, args, out: positions.append(args[0].shape[1]))
    try:
        smollm2.generate(
            [[{"role": "user", "content": LONG_TURN[:2000]}]], GenerationParams(max_new_tokens=2)
        )
    finally:
        hook.remove()
    assert positions and max(positions) == 1, positions
