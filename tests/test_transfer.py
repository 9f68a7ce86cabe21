"""Transfer matrix: prompt sets × targets (local chat model, local base model, a real API server).

The model-backed test scores two prompt sets (an exported JSON and a prompts.json) on SmolLM2
(chat template), Gemma-3-270M (base model, completion format) and a real `transformers serve`
endpoint, and checks every output file.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest

from rlprompt.config import validate
from rlprompt.errors import ConfigError
from rlprompt.evaluation.export import build_record, export, write_record
from rlprompt.experiments.transfer import (
    load_prompt_sets,
    target_spec,
    target_specs,
    transfer_matrix,
    write_matrix,
)
from rlprompt.prompt_set import PromptSet
from tests.test_export import hand_made

REPO = Path(__file__).resolve().parents[1]


def test_target_specs_from_names_and_inline_dicts():
    specs = target_specs(
        [
            "smollm2",
            "gemma3",
            {"config": "openai", "label": "api", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
        ],
        {"max_new_tokens": 8},
    )
    assert [s.label for s in specs] == ["smollm2", "gemma3", "api"]
    assert specs[1].cfg.model == "gemma3-270m" and specs[1].cfg.format == "completion"
    assert specs[2].cfg.name == "openai" and specs[2].cfg.base_url == "http://127.0.0.1:9/v1"
    assert all(s.cfg.max_new_tokens == 8 for s in specs)
    assert target_spec({"name": "hf", "model": "/models/qwen"}).label == "hf:qwen"


def test_target_spec_errors_name_the_problem():
    with pytest.raises(ConfigError, match=r"unknown target config 'gemma4'.*gemma3"):
        target_spec("gemma4")
    with pytest.raises(ConfigError, match="max_new_tokenz"):
        target_spec({"config": "smollm2", "max_new_tokenz": 3})
    with pytest.raises(ConfigError, match="unique"):
        target_specs(["smollm2", "smollm2"])


def test_prompt_set_labels_are_unique(tmp_path):
    a, b = hand_made("opro"), hand_made("opro")
    b["target_model"] = "gemma3-270m"
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    (tmp_path / "c.json").write_text(json.dumps(a))
    sets = load_prompt_sets([tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"])
    labels = [s.label for s in sets]
    assert len(set(labels)) == 3
    assert labels[1] == "opro @ smollm2-135m-instruct (trained on gemma3-270m)"


def test_prompt_sets_for_different_tasks_are_refused(tmp_path):
    other = {**hand_made(), "task": "saas_renewal"}
    (tmp_path / "a.json").write_text(json.dumps(hand_made()))
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="different tasks"):
        load_prompt_sets([tmp_path / "a.json", tmp_path / "b.json"])


def test_transfer_cli_without_prompts_fails_clearly():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "transfer.py"), "+targets=[smollm2]"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "+prompts=[...] is required" in result.stderr


@pytest.mark.slow
def test_transfer_matrix_over_two_local_targets_and_an_api(tmp_path, openai_server):
    base_url, model = openai_server
    exported = tmp_path / "exported"
    write_record(
        build_record(PromptSet.from_dict(hand_made("manual-plus", "Ask what matters most to them."))),
        exported,
    )
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "prompts.json").write_text(json.dumps(hand_made("ppo-tokens", "friendly test drive today")))
    sets = load_prompt_sets([exported / "prompts.export.json", run_folder])
    specs = target_specs(
        [
            "smollm2",
            "gemma3",
            {
                "config": "openai",
                "label": "api",
                "base_url": base_url,
                "model": model,
                "api_key_env": "RLPROMPT_TEST_API_KEY",
                "max_concurrency": 2,
            },
        ],
        {"max_new_tokens": 8},
    )
    run = validate(
        {
            "eval": {"max_scenarios": 3, "bootstrap": 200},
            "reward": {"name": "rubric+length", "modules": {"rubric": 1.0, "length": 0.5}},
        }
    )
    matrix = transfer_matrix(sets, specs, run, "test")
    paths = write_matrix(matrix, tmp_path / "out")

    data = json.loads(paths["json"].read_text())
    rows, columns = data["rows"], data["columns"]
    assert rows == ["manual-plus @ smollm2-135m-instruct", "ppo-tokens @ smollm2-135m-instruct"]
    assert columns == ["smollm2", "gemma3", "api"]
    assert data["n"] == 3 and data["split"] == "test"
    assert data["targets"]["gemma3"]["target_id"].endswith(":completion")
    assert data["targets"]["smollm2"]["target_id"].endswith(":chat")
    assert data["targets"]["api"]["target_id"].startswith("openai:")
    for column in columns:
        assert math.isfinite(data["baseline"][column]["mean"])
    for row in rows:
        assert set(data["cells"][row]) == set(columns)
        for cell in data["cells"][row].values():
            for key in ("reward", "gain"):
                ci = cell[key]
                assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
            assert 0.0 <= cell["win_rate_vs_base"] <= 1.0

    md = paths["md"].read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 + len(rows)  # header, rule, baseline, one per source
    assert all(line.count("|") == len(columns) + 2 for line in table)
    assert md.count("<br>gain ") == len(rows) * len(columns)

    image = matplotlib.image.imread(paths["png"])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_write_matrix_from_a_synthetic_matrix(tmp_path):
    from rlprompt.experiments.transfer import Matrix

    ci = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}
    cell = {"reward": ci, "gain": {"mean": -0.1, "ci_low": -0.2, "ci_high": 0.0}, "win_rate_vs_base": 0.4}
    rows, columns = ["a very long method label @ some-model (trained on another-model)", "b @ m"], ["x", "y"]
    matrix = Matrix(
        task="car_sales",
        split="test",
        reward="sales_default",
        n=3,
        confidence=0.95,
        rows=rows,
        columns=columns,
        targets={c: {"target_id": f"hf:{c}"} for c in columns},
        baseline={c: ci for c in columns},
        cells={r: {c: cell for c in columns} for r in rows},
    )
    paths = write_matrix(matrix, tmp_path)
    assert Matrix(**json.loads(paths["json"].read_text())) == matrix
    assert "| b @ m | 0.500 [0.400, 0.600]<br>gain -0.100 [-0.200, +0.000] |" in paths["md"].read_text()
    assert matplotlib.image.imread(paths["png"]).ndim == 3


def test_comparison_report_folder_gives_one_row_per_method_and_seed(tmp_path):
    from tests.test_compare import fake_report

    report = tmp_path / "report"
    fake_report(report, {"manual": [0], "ppo": [0, 1], "ppo-no-kl": [0]})
    assert (report / "report.md").is_file() and not (report / "prompts").exists()
    sets = load_prompt_sets([report])
    assert [s.label for s in sets] == [
        "manual @ smollm2-135m-instruct",
        "ppo-seed0 @ smollm2-135m-instruct",
        "ppo-seed1 @ smollm2-135m-instruct",
        "ppo-no-kl @ smollm2-135m-instruct",
    ]
    texts = [s.prompts.task_level.text for s in sets]
    assert texts[1:] == ["learned by ppo seed 0", "learned by ppo seed 1", "learned by ppo-no-kl seed 0"]
    assert all(s.source == str(report / "results.json") for s in sets)
    export(report)  # the report's export folder gives the same rows
    exported = load_prompt_sets([report / "export"])
    assert [s.label for s in exported] == sorted(s.label for s in sets)
    assert {s.label: s.prompts.task_level.text for s in exported} == {
        s.label: s.prompts.task_level.text for s in sets
    }
