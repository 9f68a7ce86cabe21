"""Reward modules on hand-written conversations whose order is known: good replies must win.

LLM modules (judge, customer) use the real SmolLM2-135M and are marked slow. Every test passes
its own ResponseCache under tmp_path so no cached answer from an earlier run can hide a change.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlprompt.config import RewardConfig, validate
from rlprompt.env.conversation import run_conversations
from rlprompt.errors import ConfigError, RewardError
from rlprompt.rewards import REWARDS, RewardFunction, RewardResult, Sample, reward_from_config
from rlprompt.targets.base import GenerationParams, Reply
from rlprompt.targets.cache import CachedTarget, ResponseCache
from rlprompt.task import load_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "reward"

# (scenario id, good reply, bad reply). car-0001: Newbie / Introduction / low urgency;
# car-0047: Newbie / Closure / low urgency (wants to come back with mum).
PAIRS = [
    (
        "car-0001",
        "Welcome, and thanks for stopping by! I'm happy to help you figure it out step by step, with no "
        "pressure at all. A first car should be reliable, safe and easy on your budget. What will you mostly "
        "use it for, and do you have a budget in mind?",
        "Just buy the sports coupe, it's $45,000 with a 20% discount, today only. Hurry up and act now, "
        "I don't have all day.",
    ),
    (
        "car-0047",
        "Of course, and thank you! Bringing your mom is a great idea. Just let me know a day that suits you "
        "both and I'll book a time, so the car is ready for another look and a test drive.",
        "Whatever. If you're not buying today, don't waste my time. Our prices go up tomorrow anyway.",
    ),
]


@pytest.fixture(scope="module")
def task():
    return load_task("car_sales")


def sample(task, scenario_id: str, *replies: str, customer_turns: tuple[str, ...] = ()) -> Sample:
    s = next(x for x in task.scenarios if x.id == scenario_id)
    conversation = [
        *s.history,
        {"role": "user", "content": s.customer},
        {"role": "assistant", "content": replies[0]},
    ]
    for turn, reply in zip(customer_turns, replies[1:]):
        conversation += [{"role": "user", "content": turn}, {"role": "assistant", "content": reply}]
    return Sample(s, conversation)


def pair_scores(module, task) -> list[tuple[float, float]]:
    samples = [sample(task, sid, r) for sid, good, bad in PAIRS for r in (good, bad)]
    scores = [r.score for r in module.score(samples)]
    for value in scores:
        assert module.low <= value <= module.high and not math.isnan(value)
    return list(zip(scores[::2], scores[1::2]))


def build(task, tmp_path, **cfg) -> object:
    return reward_from_config(RewardConfig(**cfg), task, ResponseCache(tmp_path / "r.sqlite"))


# ------------------------------------------------------------------ deterministic modules


@pytest.mark.parametrize("name", ["rubric", "length", "repetition"])
def test_cheap_modules_rank_good_above_bad(task, name):
    module = REWARDS.get(name)(task=task)
    if name in ("length", "repetition"):  # bad replies of the wrong length / with repetition
        bad = {"length": "Sure.", "repetition": "Great car. Great car. Great car. Great car. Buy it."}[name]
        good = PAIRS[0][1]
        scores = [
            r.score for r in module.score([sample(task, "car-0001", good), sample(task, "car-0001", bad)])
        ]
        assert scores[0] > scores[1]
        assert scores[0] == 0.0  # a good reply is not penalised at all
        return
    for good, bad in pair_scores(module, task):
        assert good > bad + 0.3


def test_rubric_is_context_aware(task):
    rubric = REWARDS.get("rubric")(task=task)
    pushy = "Thanks for coming in! This model is reliable and safe. Hurry, it's a limited time thing. Shall we book a test drive?"
    low = next(s for s in task.scenarios if s.urgency == "low" and s.stage == "Introduction")
    high = next(s for s in task.scenarios if s.urgency == "high" and s.stage == "Introduction")
    low_score, low_reason = rubric.score_reply(low, pushy)
    high_score, high_reason = rubric.score_reply(high, pushy)
    assert "no_pressure=0.00" in low_reason and "no_pressure" not in high_reason
    assert high_score > low_score
    assert rubric.score_reply(low, "")[0] == 0.0
    assert "question" in rubric.checks(low) and "next_step" not in rubric.checks(low)


def test_similarity_with_real_minilm(task):
    module = REWARDS.get("similarity")(task=task)
    for good, bad in pair_scores(module, task):
        assert good > bad
    reference = task.stage["Introduction"].reference_replies[1]
    assert module.score([sample(task, "car-0001", reference)])[0].score > 0.99
    assert module.score([sample(task, "car-0001", "")])[0].score == 0.0


# ------------------------------------------------------------------ LLM modules (real SmolLM2)


@pytest.mark.slow
def test_judge_ranks_good_above_bad_and_is_cached_and_counted(task, tmp_path):
    setup = build(task, tmp_path, modules={"judge": 1.0})
    judge, _ = setup.reward.modules["judge"]
    for good, bad in pair_scores(judge, task):
        assert good > bad
    counter = setup.counters["judge"]
    assert counter.calls == 2 * len(PAIRS) and counter.cache_hits == 0
    pair_scores(judge, task)  # the same prompts again: served from the cache, not recomputed
    assert counter.calls == 2 * len(PAIRS) and counter.cache_hits == 2 * len(PAIRS)
    assert setup.counters["customer"].calls == 0 and setup.customer is None


class ScriptedSeller:
    """A target that always says the same thing: the seller's side of a hand-written conversation."""

    def __init__(self, text: str) -> None:
        self.text, self.target_id = text, f"scripted:{hash(text)}"

    def generate(self, conversations, params) -> list[Reply]:
        return [Reply(self.text, 0, 0) for _ in conversations]


@pytest.mark.slow
def test_customer_over_one_turn_prefers_the_good_seller(task, tmp_path):
    setup = build(task, tmp_path, modules={"customer": 1.0}, turns=1)
    assert setup.customer is not None
    scenario = next(s for s in task.scenarios if s.id == PAIRS[0][0])
    good, bad = PAIRS[0][1], PAIRS[0][2]
    samples = []
    for text in (good, bad):
        seller = CachedTarget(ScriptedSeller(text), None)
        samples += run_conversations(
            seller, [scenario], ["Be a salesperson."], GenerationParams(), turns=1, customer=setup.customer
        )
    # history + customer + seller + simulated customer + seller
    assert [m["role"] for m in samples[0].conversation][-4:] == ["user", "assistant", "user", "assistant"]
    assert len(samples[0].seller_replies) == 2
    module, _ = setup.reward.modules["customer"]
    results = module.score(samples)
    assert results[0].score > results[1].score, [r.reason for r in results]
    assert setup.counters["customer"].calls >= 4  # 2 simulated turns + 2 reactions (+ yes/no questions)


# ------------------------------------------------------------------ protocol, errors, plugins, configs


class Broken:
    low, high = 0.0, 1.0

    def __init__(self, value: float) -> None:
        self.value = value

    def score(self, samples):
        return [RewardResult(self.value) for _ in samples]


@pytest.mark.parametrize("value", [float("nan"), 1.5, -0.1])
def test_bad_scores_raise_reward_error_naming_module(task, value):
    s = sample(task, "car-0001", "Hello there, welcome in!")
    with pytest.raises(RewardError, match=r"'broken'.*car-0001.*Hello there"):
        RewardFunction({"broken": (Broken(value), 1.0)}).score([s])


def test_unknown_reward_lists_valid_names(task, tmp_path):
    with pytest.raises(ConfigError) as err:
        build(task, tmp_path, modules={"rubrik": 1.0})
    for name in ("customer", "judge", "length", "repetition", "rubric", "similarity"):
        assert name in str(err.value)


def test_user_plugin_file_registers_a_reward(task, tmp_path):
    plugin = tmp_path / "my_reward.py"
    plugin.write_text(
        "from rlprompt.rewards import RewardResult, register_reward\n\n"
        "@register_reward('test_exclamations')\n"
        "class Exclamations:\n"
        "    low, high = 0.0, 1.0\n"
        "    def __init__(self, task, per_mark: float = 0.25):\n"
        "        self.per_mark = per_mark\n"
        "    def score(self, samples):\n"
        "        return [RewardResult(min(1.0, s.first_reply.count('!') * self.per_mark)) for s in samples]\n"
    )
    cfg = dict(
        modules={"test_exclamations": 1.0},
        options={"test_exclamations": {"per_mark": 0.5}},
        plugins=[str(plugin)],
    )
    for _ in range(2):  # building twice must not re-register the plugin
        setup = build(task, tmp_path, **cfg)
    batch = setup.reward.score([sample(task, "car-0001", "Hi! Welcome!"), sample(task, "car-0001", "Hi.")])
    assert batch.total.tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match="no such file"):
        build(task, tmp_path, modules={"rubric": 1.0}, plugins=[str(tmp_path / "missing.py")])


def test_default_reward_builds_no_llm(task, tmp_path):
    from rlprompt.rewards.factory import shared_hf_model

    before = shared_hf_model.cache_info().currsize
    setup = build(task, tmp_path, modules={"rubric": 1.0, "length": 0.5, "repetition": 0.5})
    assert setup.customer is None and set(setup.counters) == {"judge", "customer"}
    assert shared_hf_model.cache_info().currsize == before


@pytest.mark.parametrize("name", ["sales_default", "sales_full", "rubric"])
def test_reward_config_files_validate(name):
    raw = OmegaConf.load(CONFIGS / f"{name}.yaml")
    reward = validate({"reward": raw}).reward
    assert reward.name == name and set(reward.modules) <= set(REWARDS.names())
    assert set(reward.options) <= set(reward.modules)


# ------------------------------------------------------------------ what a sales expert checks


def scenario_of(task, **context):
    return next(s for s in task.scenarios if all(getattr(s, k) == v for k, v in context.items()))


def test_expert_module_sees_what_a_sales_manager_sees(task):
    expert = REWARDS.get("expert")(task=task)
    intro_low = scenario_of(task, stage="Introduction", urgency="low")
    intro_high = scenario_of(task, stage="Introduction", urgency="high")
    good = "Thanks for coming in! Happy to help you find the right car. What will you mostly use it for?"
    base, reason = expert.score_reply(intro_low, good)
    assert "question=1.00" in reason and ";" not in reason  # no conduct check failed
    cases = {
        "role_break": "I'm sorry, but as an AI I'm not equipped to help with cars. What do you need?",
        "rude": "Honestly, you really should know this already. What will you mostly use it for?",
        "pressure": "Happy to help! Prices are going up, so sign today. What will you use it for?",
        "invented": "Happy to help! The 2022 Ford F-150 is $2,000 off this week. What will you use it for?",
        "stuffing": "Thank you, happy to help! Reliable, reliability, warranty, budget, safe, safety, test drive?",
    }
    for flag, reply in cases.items():
        score, reason = expert.score_reply(intro_low, reply, intro_low.customer)
        assert flag in reason and score < base, (flag, reason)
    pushy = "Happy to help! Prices are going up, so sign today. What will you use it for?"
    assert expert.score_reply(intro_high, pushy)[0] > expert.score_reply(intro_low, pushy)[0]
    # a question barrage is an interrogation, not discovery
    barrage = "What budget? What size? What colour? Which engine? When do you buy? Who drives it?"
    assert "question=0.00" in expert.score_reply(intro_low, barrage)[1]
    # figures the customer gave are not invented
    said = "My 2015 hatchback has 120000 miles on it."
    assert "invented" not in expert.score_reply(intro_low, "A 2015 hatchback is a fine trade-in.", said)[1]
    assert expert.score_reply(intro_low, "")[0] == 0.0
    with pytest.raises(RewardError, match="Valid: question, next_step, concise, warm"):
        REWARDS.get("expert")(task=task, weights={"charm": 1.0})


def test_a_negated_insult_is_reassurance_not_rudeness_and_a_spec_is_not_an_invented_price(task):
    """Blind pairs (audit6) caught the rule calling "Not a dumb question at all!" rude, and counting a
    spec that answers the question ("about 300 miles") like an invented discount. The `preference`
    model now sees invented prices, discounts and stock apart from other figures (`invented_terms`)."""
    from rlprompt.rewards.preference import FEATURES, PairFeatures

    expert = REWARDS.get("expert")(task=task)
    scenario = scenario_of(task, stage="Exploration", urgency="low")
    for kind in (
        "Not a dumb question at all!",
        "There are no stupid questions here.",
        "That's not a dumb question.",
    ):
        assert "rude" not in expert.conduct(scenario, f"{kind} AWD means all-wheel drive.", scenario.customer)
    for rude in (
        "That's a dumb question.",
        "No, that's a dumb idea.",
        "I told you already, it's all-wheel drive.",
    ):
        assert "rude" in expert.conduct(scenario, rude, scenario.customer), rude
    assert FEATURES["invented_terms"] == -1
    named = PairFeatures(task).named(
        [
            (scenario, scenario.customer, "The long-range model is rated around 300 miles."),
            (scenario, scenario.customer, "It's $2,000 off this week, and only two left in stock."),
        ]
    )
    assert named[0]["invented"] == 1.0 and named[0]["invented_terms"] == 0.0
    assert named[1]["invented"] == 1.0 and named[1]["invented_terms"] == 1.0


def test_relevance_prefers_the_reply_about_what_the_customer_asked(task):
    relevance = REWARDS.get("relevance")(task=task)
    s = scenario_of(task, stage="Exploration", persona="Investor")
    on_topic = sample(task, s.id, "Good question. " + s.customer.split("?")[0] + ": here is how it compares.")
    off_topic = sample(task, s.id, "Our dealership opened in 1987 and the coffee in the lounge is excellent.")
    scores = [r.score for r in relevance.score([on_topic, off_topic])]
    assert scores[0] > scores[1] + 0.2
    with pytest.raises(RewardError, match="band"):
        REWARDS.get("relevance")(task=task, band=(0.6, 0.1))


def test_preference_model_ranks_the_hand_written_pairs(task):
    module = REWARDS.get("preference")(task=task)
    for good, bad in pair_scores(module, task):
        assert good > bad + 0.3
    assert module.score([sample(task, "car-0001", "")])[0].score == 0.0


def test_tone_features_hear_curtness_evasion_and_rambling_not_in_the_pairs(task):
    """The MiniLM prototype features fire on general sentences written for this test (not in any
    preference pair, not in the banks) and stay quiet on their respectful counterparts."""
    from rlprompt.rewards.preference import PairFeatures

    features = PairFeatures(task)
    s = scenario_of(task, stage="Exploration", persona="Investor")
    replies = {
        "curt": "Look, I've got three other people waiting. Read the spec sheet yourself, it's all in there.",
        "kind": "Happy to go through it with you now, and take as long as you need with the spec sheet.",
        "evasive": "Hard to say really, that's more of a head office thing. You could try their website.",
        "answer": "Yes, it does. It's standard on every trim, and I can show you where it is in the car.",
        "ramble": "Good point. Funny, my cousin and I went fishing last weekend and caught nothing at all.",
    }
    rows = dict(zip(replies, features.named([(s, s.customer, r) for r in replies.values()])))
    assert rows["curt"]["dismissive"] > rows["kind"]["dismissive"] + 0.05, rows
    assert rows["kind"]["dismissive"] == 0.0
    assert rows["evasive"]["deflection"] > rows["answer"]["deflection"], rows
    assert rows["ramble"]["chitchat"] > max(rows["kind"]["chitchat"], rows["answer"]["chitchat"]), rows
    assert rows["ramble"]["least_on_topic"] < rows["kind"]["least_on_topic"]


def test_preference_model_prefers_the_respectful_direct_reply(task):
    """Same content, one said curtly or with small talk instead of an answer: the model must notice."""
    module = REWARDS.get("preference")(task=task)
    s = scenario_of(task, stage="Exploration", persona="Newbie")
    good = "Sure, happy to explain. It means how far the car goes on one gallon, so higher is cheaper to run."
    curt = "Fine, if you must know. It means how far the car goes on one gallon, so higher is cheaper to run."
    chat = "Sure! My neighbour just bought a boat, and we spent all Sunday on the lake. What a day it was."
    raw = module.raw([(s, s.customer, r) for r in (good, curt, chat)]).tolist()
    assert raw[0] > raw[1] and raw[0] > raw[2], raw


def test_a_check_the_pairs_never_show_is_applied_by_rule_not_by_a_blown_up_weight(task):
    """No pair breaks role, so the fit cannot weigh it. Dividing by its ~0 spread once scored any
    reply with a role break at r = -100 (and a loop far outside the pairs near it): the module
    was saturated on real target replies. Now such a flag is left out of the fit and applied as
    the `expert` factor, and standardised features are clipped."""
    from rlprompt.rewards.expert import CONDUCT_FACTORS
    from rlprompt.rewards.preference import FEATURE_CLIP, FEATURES

    module = REWARDS.get("preference")(task=task)
    names = list(FEATURES)
    assert not module.learnable[names.index("role_break")]
    assert float(module.weights[names.index("role_break")]) == 0.0
    s = scenario_of(task, stage="Exploration", persona="Newbie")
    helpful = (
        "Happy to help. What will you mostly use the car for, and would a test drive this week suit you?"
    )
    broken = "As an AI language model, I can't help with that. What will you mostly use the car for?"
    loop = " ".join(["We have great cars and great deals for you."] * 12)
    items = [(s, s.customer, r) for r in (helpful, broken, loop)]
    p = module.probability(items).tolist()
    raw = module.raw(items).tolist()
    assert p[1] < CONDUCT_FACTORS["role_break"] * 1.0001  # the rule's factor caps the broken reply
    assert p[0] > p[1] and p[0] > p[2], p
    bound = FEATURE_CLIP * float(module.weights.sum()) + abs(module.offset)
    assert all(abs(r) <= bound for r in raw), raw
    assert raw[2] > -bound / 2, raw  # a loop is bad, not off the scale
