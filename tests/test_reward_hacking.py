"""The cheapest hacks a prompt optimizer finds must not beat an honest good reply under the
training reward (configs/reward/sales_default.yaml: preference + expert + repetition)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlprompt.config import validate
from rlprompt.rewards import Sample, reward_from_config
from rlprompt.targets.cache import ResponseCache
from rlprompt.task import load_task

GOOD = {
    "car-0001": "Welcome, and thanks for stopping by! I'm happy to help you figure it out step by step, with no "
    "pressure at all. A first car should be reliable, safe and easy on your budget. What will you mostly use "
    "it for, and do you have a budget in mind?",
    "car-0047": "Of course, and thank you! Bringing your mom is a great idea. Just let me know a day that suits "
    "you both and I'll book a time, so the car is ready for another look and a test drive.",
}


def hacks(task, scenario_id: str, good: str) -> dict[str, str]:
    scenario = next(s for s in task.scenarios if s.id == scenario_id)
    persona = task.persona[scenario.persona]
    keywords = [*persona.concern_keywords, *task.rubric.next_step_keywords, *task.rubric.politeness_keywords]
    return {
        "keyword_stuffing": "Thank you, happy to help! " + ", ".join(keywords) + ". Book a test drive?",
        "stuffing_repeated": (
            "Thank you! Reliable, safe, warranty, budget, test drive, book, appointment? " * 4
        ).strip(),
        "self_repeating": " ".join([good] * 3),
        "overlong": good + " " + " ".join(task.stage[scenario.stage].reference_replies),
        "question_spam": "Thank you! What do you need? What is your budget? Is reliability important? "
        "Do you want a test drive? Shall I book an appointment? Anything else?",
        # a terse non-answer trips no conduct check (no role break, figure or loop): the serve
        # traffic test saw `expert` alone rate "Reply with only the word OK." best on a 135M target
        "terse_ok": "OK.",
        # a polite empty promise: answers nothing, asks nothing, proposes nothing (stop 18 had it
        # beat a good reply on car-0047; the `emptiness` and `filler` tone features catch it now)
        "empty_promise": "Sure, I can help with that.",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    task = load_task("car_sales")
    cfg = validate(
        {"reward": OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/reward/sales_default.yaml")}
    )
    return task, reward_from_config(
        cfg.reward, task, ResponseCache(tmp_path_factory.mktemp("c") / "r.sqlite")
    )


@pytest.mark.parametrize("scenario_id", sorted(GOOD))
def test_hacks_do_not_beat_a_good_reply(setup, scenario_id):
    task, reward = setup
    scenario = next(s for s in task.scenarios if s.id == scenario_id)
    replies = {"good": GOOD[scenario_id], **hacks(task, scenario_id, GOOD[scenario_id])}
    samples = [
        Sample(
            scenario,
            [
                *scenario.history,
                {"role": "user", "content": scenario.customer},
                {"role": "assistant", "content": r},
            ],
        )
        for r in replies.values()
    ]
    batch = reward.reward.score(samples)
    totals = dict(zip(replies, batch.total.tolist()))
    for name, total in totals.items():
        if name != "good":
            assert total < totals["good"], (name, totals, {k: v.tolist() for k, v in batch.parts.items()})
    # each hack is caught by a named mechanism, not only by the total
    assert batch.parts["repetition"][list(replies).index("self_repeating")] < -0.5
    reasons = dict(zip(replies, batch.reasons["expert"]))
    assert "concise=0.00" in reasons["overlong"] or "concise=0.5" in reasons["overlong"]
    assert "stuffing" in reasons["keyword_stuffing"]
