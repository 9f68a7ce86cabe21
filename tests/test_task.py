"""Task data and its validation: coverage, splits, and errors that name the file and the field."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml

from rlprompt.errors import ConfigError
from rlprompt.task import SPLITS, load_task, tasks_dir


@pytest.fixture(scope="module")
def car_sales():
    return load_task("car_sales")


@pytest.fixture
def task_copy(tmp_path) -> Path:
    folder = tmp_path / "car_sales"
    shutil.copytree(tasks_dir() / "car_sales", folder)
    return folder


def _edit_domain(folder: Path, edit) -> Path:
    path = folder / "domain.yaml"
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _edit_scenarios(folder: Path, edit) -> Path:
    path = folder / "scenarios.jsonl"
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _load_error(folder: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_task("car_sales", path=str(folder))
    return str(info.value)


# ---------------------------------------------------------------- the shipped data


def test_car_sales_covers_every_context(car_sales):
    assert len(car_sales.contexts) == 72
    counts = Counter(s.context for s in car_sales.scenarios)
    assert set(counts) == set(car_sales.contexts)
    assert min(counts.values()) >= 4, {c: n for c, n in counts.items() if n < 4}
    assert len(car_sales.scenarios) >= 300
    assert len(car_sales.components) == 10
    assert car_sales.max_components == 6


def test_saas_renewal_loads_with_enough_scenarios():
    task = load_task("saas_renewal")
    assert len(task.scenarios) >= 60
    counts = Counter(s.context for s in task.scenarios)
    assert set(counts) == set(task.contexts)


@pytest.mark.parametrize("name", ["car_sales", "saas_renewal"])
def test_splits_are_deterministic_disjoint_and_complete(name):
    task = load_task(name)
    again = load_task(name)
    assert task.split_ids == again.split_ids
    ids = {split: set(task.split_ids[split]) for split in SPLITS}
    for i, a in enumerate(SPLITS):
        assert ids[a], f"split {a} is empty"
        for b in SPLITS[i + 1 :]:
            assert not ids[a] & ids[b], f"{a} and {b} overlap"
    assert set().union(*ids.values()) == {s.id for s in task.scenarios}

    heldout = set(task.splits.heldout_personas)
    assert heldout
    for split in ("train", "val", "test"):
        assert not {s.persona for s in task.split(split)} & heldout
    assert {s.persona for s in task.split("heldout_persona")} == heldout


def test_split_seed_changes_the_split(task_copy):
    default = load_task("car_sales", path=str(task_copy)).split_ids
    _edit_domain(task_copy, lambda raw: raw["splits"].update(seed=1))
    reseeded = load_task("car_sales", path=str(task_copy)).split_ids
    assert reseeded["heldout_persona"] == default["heldout_persona"]
    assert reseeded["train"] != default["train"]
    assert sorted(reseeded["train"] + reseeded["val"] + reseeded["test"]) == sorted(
        default["train"] + default["val"] + default["test"]
    )


def test_dataset_has_the_four_splits(car_sales):
    from datasets import DatasetDict

    data = car_sales.dataset()
    assert isinstance(data, DatasetDict)
    assert set(data) == set(SPLITS)
    for split in SPLITS:
        assert data[split].num_rows == len(car_sales.split_ids[split])
        assert data[split]["id"] == car_sales.split_ids[split]
    row = data["train"][0]
    assert set(row) == {"id", "persona", "stage", "urgency", "customer", "history"}
    assert isinstance(json.loads(row["history"]), list)


def test_unknown_split_is_a_config_error(car_sales):
    with pytest.raises(ConfigError, match="heldout_persona"):
        car_sales.split("holdout")


def test_preferred_components_respect_the_cap(car_sales):
    bank = [c.name for c in car_sales.components]
    for scenario in car_sales.scenarios[::37]:
        chosen = car_sales.preferred_for(scenario)
        assert 0 < len(chosen) <= car_sales.max_components
        assert chosen == [c for c in bank if c in chosen]  # bank order


# ---------------------------------------------------------------- malformed task folders


def test_missing_persona_field_names_file_and_field(task_copy):
    path = _edit_domain(task_copy, lambda raw: raw["personas"][0].pop("needs"))
    message = _load_error(task_copy)
    assert str(path) in message
    assert "personas[0].needs" in message


def test_wrong_type_names_file_and_field(task_copy):
    path = _edit_domain(task_copy, lambda raw: raw.update(max_components="six"))
    message = _load_error(task_copy)
    assert str(path) in message
    assert "max_components" in message and "int" in message


def test_unknown_top_level_field_is_rejected(task_copy):
    path = _edit_domain(task_copy, lambda raw: raw.update(max_componets=5))
    message = _load_error(task_copy)
    assert str(path) in message and "max_componets" in message


def test_unknown_persona_in_scenarios_names_file_scenario_and_field(task_copy):
    def edit(lines):
        row = json.loads(lines[0])
        row["persona"] = "Time Traveller"
        lines[0] = json.dumps(row)

    path = _edit_scenarios(task_copy, edit)
    message = _load_error(task_copy)
    assert str(path) in message
    assert "car-0001" in message and "persona" in message and "Time Traveller" in message


def test_invalid_json_line_names_file_and_line(task_copy):
    path = _edit_scenarios(task_copy, lambda lines: lines.insert(4, '{"id": "car-bad", "persona": '))
    message = _load_error(task_copy)
    assert f"{path}:5" in message and "not valid JSON" in message


def test_missing_scenario_field_names_line_and_field(task_copy):
    def edit(lines):
        row = json.loads(lines[2])
        del row["customer"]
        lines[2] = json.dumps(row)

    path = _edit_scenarios(task_copy, edit)
    message = _load_error(task_copy)
    assert str(path) in message and "line 3.customer" in message


def test_unknown_component_in_preferences_is_named(task_copy):
    path = _edit_domain(
        task_copy, lambda raw: raw["preferred_components"]["stage"]["Introduction"].append("hug")
    )
    message = _load_error(task_copy)
    assert str(path) in message and "'hug'" in message


def test_unknown_task_lists_the_valid_names():
    with pytest.raises(ConfigError, match="car_sales") as info:
        load_task("car_salez")
    assert "saas_renewal" in str(info.value)


def test_context_with_too_few_scenarios_is_named(task_copy):
    def edit(lines):
        def context(line):
            row = json.loads(line)
            return row["persona"], row["stage"], row["urgency"]

        first = context(lines[0])
        keep = [line for line in lines if context(line) != first]
        lines[:] = keep + lines[:3]  # 3 of the context's scenarios left

    path = _edit_scenarios(task_copy, edit)
    message = _load_error(task_copy)
    assert str(path) in message
    assert "persona='Newbie' stage='Introduction' urgency='low' has 3 scenarios" in message


def test_files_saved_with_a_utf8_byte_order_mark_load(task_copy, car_sales):
    """Spreadsheet tools and Windows editors write a BOM; the task must load exactly as without it."""
    for name in ("scenarios.jsonl", "domain.yaml"):
        path = task_copy / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    task = load_task("car_sales", path=str(task_copy))
    assert task.scenarios == car_sales.scenarios  # the first line's id is "car-0001", not "\ufeffcar-0001"
    assert task.personas == car_sales.personas and task.base_instruction == car_sales.base_instruction
