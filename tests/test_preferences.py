"""The expert preference pairs and the RewardBench-style accuracy computed on them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from rlprompt.errors import ConfigError
from rlprompt.preferences import accuracy_table, load_pairs, score_pairs
from rlprompt.rewards.base import RewardFunction, RewardResult
from rlprompt.task import load_task

CATEGORIES = ["needs", "next_step", "answers", "honest", "calm", "on_topic", "warm", "concise"]


@pytest.fixture(scope="module")
def task():
    return load_task("car_sales")


def test_the_pairs_cover_every_category_persona_and_stage_in_two_halves(task):
    pairs = load_pairs(task)
    assert len(pairs) >= 200
    assert len({p.id for p in pairs}) == len(pairs)
    by_category = Counter(p.category for p in pairs)
    assert set(by_category) == set(CATEGORIES) and min(by_category.values()) >= 25
    for category in CATEGORIES:
        halves = Counter(p.split for p in pairs if p.category == category)
        assert halves["dev"] == halves["heldout"]  # half of every category is kept for the report
    assert {p.scenario.persona for p in pairs} == {x.name for x in task.personas}
    assert {p.scenario.stage for p in pairs} == {x.name for x in task.stages}
    assert all(p.scenario.urgency != "high" for p in pairs if p.category == "calm")
    assert all(p.chosen.strip() and p.rejected.strip() and p.chosen != p.rejected for p in pairs)
    assert sum(p.hard for p in pairs) >= len(pairs) // 5


class LengthReward:
    """A stand-in module: longer reply, higher score (for the accuracy arithmetic only)."""

    low, high = 0.0, 1000.0

    def score(self, samples):
        return [RewardResult(float(len(s.first_reply))) for s in samples]


def test_accuracy_counts_strict_wins_and_reports_ties_apart(task):
    pairs = [p for p in load_pairs(task) if p.category == "concise"]  # chosen is the short one
    scores = score_pairs(pairs, RewardFunction({"length": (LengthReward(), 1.0)}), {"neg": {"length": -1.0}})
    table = accuracy_table(scores, "all")
    assert table.accuracy["length"]["concise"] == 0.0  # prefers the padded reply every time
    assert table.accuracy["neg"]["concise"] == 1.0
    assert table.n["overall"] == len(pairs)
    same = score_pairs(pairs, RewardFunction({"length": (LengthReward(), 1.0)}), {"flat": {"length": 0.0}})
    accuracy, ties = same.accuracy("flat")
    assert accuracy == 0.0 and ties == 1.0  # a tie is never a win
    dev = accuracy_table(scores, "dev")
    assert dev.n["overall"] == sum(p.split == "dev" for p in pairs)


def test_a_bad_pair_names_the_file_line_and_field(task, tmp_path):
    good = json.loads((task.folder / "preferences.jsonl").read_text().splitlines()[0])
    path = tmp_path / "preferences.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "persona": "Astronaut"}) + "\n")
    with pytest.raises(ConfigError, match=r"preferences.jsonl:2: persona 'Astronaut'; valid: Newbie"):
        load_pairs(task, path)
    path.write_text(json.dumps({**good, "split": "train"}) + "\n")
    with pytest.raises(ConfigError, match=r":1: split 'train'; valid: dev, heldout"):
        load_pairs(task, path)
    path.write_text("\ufeff" + json.dumps(good) + "\n")  # a BOM from a spreadsheet export is fine
    assert len(load_pairs(task, path)) == 1
    with pytest.raises(ConfigError, match="no preference pairs"):
        load_pairs(task, tmp_path / "missing.jsonl")


def test_preference_model_is_fit_on_the_dev_half_only(task, tmp_path):
    """Scrambling every heldout pair must not change the fitted weights: they are never read."""
    from rlprompt.rewards.preference import PreferenceReward

    lines = (task.folder / "preferences.jsonl").read_text().splitlines()
    scrambled = []
    for line in lines:
        raw = json.loads(line)
        if raw["split"] == "heldout":
            raw["chosen"], raw["rejected"] = raw["rejected"], "Whatever. Buy it today, $5,000 off!"
        scrambled.append(json.dumps(raw))
    path = tmp_path / "preferences.jsonl"
    path.write_text("\n".join(scrambled) + "\n")
    original = PreferenceReward(task)
    other = PreferenceReward(task, pairs_file=str(path))
    assert np.allclose(original.weights.numpy(), other.weights.numpy())
    assert (original.weights >= 0).all()  # signs live in the features: no signal learned backwards
    heldout = PreferenceReward(task, split="heldout", pairs_file=str(path))
    assert not np.allclose(original.weights.numpy(), heldout.weights.numpy())
