"""`expert`: the checks a sales manager applies to a reply, as a deterministic reward in [0, 1].

Score = (weighted mean of the behaviours a manager wants) x (conduct factor). Every name below is a
behaviour a person can see in one reply, not a keyword list to hit:

Behaviours (each in [0, 1]):
- `question`: engages the customer with one or two questions addressed to them ("you/your"); a
  barrage of questions is an interrogation. Weighted up where the stage `expects: question`.
- `next_step`: proposes something concrete to do next (a drive, a visit, a call, a comparison sent
  over, paperwork). Weighted up where the stage `expects: next_step`.
- `concise`: says it in a few sentences and finishes them (a reply cut off mid-sentence or padded
  past the task's `max_words` loses this).
- `warm`: the reply's VADER sentiment (rude and cold replies score low).

Conduct factor (multiplies the mean down; several multiply):
- `role_break`: "as an AI", "I'm not equipped to", "I'm not a salesperson": no customer is helped.
- `rude`: dismissive, condescending or impatient phrasing.
- `pressure`: high-pressure tactics where the urgency level has `pressure_ok: false`.
- `invented`: prices, percentages, discounts, stock counts, model years, technical figures (in
  digits or words: "a ten-year warranty") or brand names that neither the customer nor the task supplied (the base instruction forbids them).
- `repetition`: repeated sentences or word trigrams (a 135M target loops).
- `apology`: opening with an apology the customer gave no reason for.
- `stuffing`: a keyword list instead of sentences (task keyword density above 0.4, as in `rubric`).

Why rules and not only embeddings: a cosine to reference replies cannot tell "I'll send you a
comparison" from "I can't send you anything", and a 135M judge barely separates good from rude
(docs/REWARDS.md). benchmarks/reward_preferences.py measures every module against expert pairs.
"""

from __future__ import annotations

import re
from functools import lru_cache

from rlprompt.errors import RewardError
from rlprompt.rewards.base import RewardResult, Sample, register_reward, replies_to_score
from rlprompt.rewards.text import keyword_density, keyword_hits, sentences, trigrams, unique_fraction, words
from rlprompt.task import Scenario, Task

BEHAVIOUR_WEIGHTS = {"question": 1.0, "next_step": 1.0, "concise": 0.5, "warm": 0.5}
# Stage-dependent emphasis: a behaviour the stage `expects` counts this much more.
EXPECTED_BOOST = 1.5
CONDUCT_FACTORS = {
    "role_break": 0.3,
    "rude": 0.2,
    "pressure": 0.4,
    "invented": 0.5,
    "apology": 0.85,
    "stuffing": 0.2,
}
STUFFING_DENSITY = 0.4

NEXT_STEP = re.compile(
    r"\b(test[- ]drive|drive it|take (it|her|one|the \w+) (out|for a)|for a (spin|drive)|come (in|by|back)|"
    r"stop by|swing by|drop by|visit|appointment|schedule|book(ing)?|set up|reserve|hold (it|the)|"
    r"send (you|over)|email you|text you|call you|give you a call|follow up|get back to you|"
    r"meet (with|our)|introduce you|walk you through|show you|sit in|paperwork|sign|pick (it|her) up|"
    r"delivery|deliver|handover|next step|get you (started|set up)|arrange|line up|pull up|"
    r"compare (them|the two|it)|side[- ]by[- ]side|quote|appraisal|appraiser|finance manager)\b",
    re.IGNORECASE,
)
ROLE_BREAK = re.compile(
    r"\b(as an? (ai|chatbot|language model|virtual assistant|assistant)|language model|"
    r"i'?m (an ai|a chatbot|not a (car )?salesperson|not equipped|unable to)|i am (an ai|not equipped|unable to)|"
    r"not equipped to|i don'?t have the (ability|capability|capacity)|i can(no|')t (help|assist|provide)|"
    r"car-buying ai|i'?m a (car[- ]buying|car rental))\b",
    re.IGNORECASE,
)
RUDE = re.compile(
    r"\b(hurry up|not my problem|figure it out (yourself|on your own)|stupid|dumb|obviously|i don'?t have (all day|time)|"
    r"waste (of )?my time|wasting my time|just buy|make up your mind|i already told you|i told you (already|before)|are you serious|"
    r"come on|duh|if you can'?t afford|people like you|do your (own )?research|google it|"
    r"read the (brochure|website)|take it or leave it|not interested in (your|tire)|what'?s (your|the) problem|"
    r"use your head|seriously\?|any other (dumb|silly) questions|i'?m busy|next customer|pretty basic|"
    r"most people know|everyone knows|you (really )?should (already )?know|doesn'?t make mistakes|"
    r"if you really (feel|need|want)|i'?d have thought|i suppose|like i said|as i already said|"
    r"cheapest thing|that'?s probably what you|not rocket science|any idiot|it'?s not that hard|calm down|"
    # talking down without a rude word (stop 20)
    r"should be (clear|obvious) (now|by now)|like every(one|body) else|"
    r"if it (really )?matters (that much|so much) to you|if you know so much|(i'?m guessing|i assume) you'?ve already|"
    r"(it'?s|that'?s) (a bit|a little) much|every(one|body) says (that|they)|done when we'?re done|the number is the number)\b",
    re.IGNORECASE,
)
# "Not a dumb question at all!", "there are no stupid questions": an insult word under a negation
# is reassurance, and the rule marked such warm replies rude (blind set audit6, stop 23).
INSULT_WORDS = ("stupid", "dumb")
NEGATED = re.compile(
    r"\b(not|no|never|isn'?t|aren'?t|no such thing as)\s+((a|an|such a|at all)\s+)?$", re.IGNORECASE
)


def is_rude(reply: str) -> bool:
    """A `RUDE` phrase that is not an insult word negated just before it."""
    return any(
        m.group(0).lower() not in INSULT_WORDS
        or not NEGATED.search(reply[max(0, m.start() - 30) : m.start()])
        for m in RUDE.finditer(reply)
    )


PRESSURE = re.compile(
    r"\b(buy (it )?(today|now|right now)|sign (today|now|right now|it today)|decide (today|now|right now)|"
    r"right now or|won'?t last|ends (today|tonight)|today only|only today|before (it'?s|its|they'?re) gone|"
    r"gone (tomorrow|by tomorrow|soon)|don'?t (wait|miss out)|hurry|act now|last chance|limited time|"
    r"someone else (will|might) (buy|grab|take)|now or never|before someone else|once in a lifetime|"
    r"lock (it |this |that )?in|another (customer|buyer)|(go|goes|fill|fills|sell|sells) (up )?(quickly|fast)|"
    r"(only|is) (held|good|valid) (until|till|through)|prices? (are|is|will be) (going up|rising)|"
    r"(wouldn'?t|would not|don'?t) (wait|take too long)|the sooner you (decide|sign|commit)|better to decide|"
    r"(decide|sign|commit|confirm|pick one|buy|grab it|put (a|down) (a )?deposit)\W+(\w+\W+){0,3}"
    r"(today|tonight|this week|by tomorrow|right away|right now))\b",
    re.IGNORECASE,
)
INVENTED = re.compile(
    r"\$\s?\d|\d+(\.\d+)?\s?(%|percent\b)|\bapr\b|\bdiscount(s|ed)?\b|%\s?off\b|\b\d+ (left|in stock|units)\b|"
    r"\bonly (one|two|three|\d+) left\b|\b(one|two|three|four|five|\d+) (left|remaining) (with|in)\b|"
    r"\bexactly (one|two|three|four|five|six|seven|eight|nine|ten|\d+) (weeks|days|months|left)\b|"
    r"\bfree (\w+ )?(upgrade|package|trim|service|maintenance|tank|accessor\w+)\b|\b(double|triple) trade-in\b|"
    r"\b(offer|deal|promotion|promo|sale) (runs|ends|is valid) (until|till|through)\b",
    re.IGNORECASE,
)
YEAR = re.compile(r"\b(19[5-9]\d|20[0-4]\d)\b")
FIGURE = re.compile(
    r"\b\d+(\.\d+)?[- ]?(liter|litre|l\b|hp|horsepower|mpg|miles per gallon|lb-ft|kw|kwh|mph|seconds|months|years|miles|weeks|days)\b",
    re.IGNORECASE,
)
# The same claims with the number spelled out ("a ten-year warranty", "three on the lot"); "one" is
# left out: "one day" and "one of each" are idioms, not figures.
SPELLED_FIGURE = re.compile(
    r"\b(two|three|four|five|six|seven|eight|nine|ten|twelve|fifteen|twenty|thirty|fifty|hundred)[- ]"
    r"(extra |more |full |of them |of those )?(years?|months?|weeks?|days?|miles?|on the lot|in stock|left)\b",
    re.IGNORECASE,
)
APOLOGY = re.compile(
    r"^\W*(i'?m (so )?sorry|i am (so )?sorry|sorry|i apologi[sz]e|my apologies)\b", re.IGNORECASE
)
COMPLAINT = re.compile(
    r"\b(sorry|problem|issue|upset|annoyed|frustrat\w*|disappoint\w*|unhappy|wrong|broke|complain\w*|"
    r"too (much|high|expensive)|can'?t afford|worried|concern\w*|confus\w*|mistake|late|delay\w*)\b",
    re.IGNORECASE,
)
DEFAULT_BRANDS = [
    "ford", "toyota", "honda", "chevrolet", "chevy", "nissan", "bmw", "mercedes", "audi", "volkswagen",
    "vw", "hyundai", "kia", "mazda", "subaru", "tesla", "lexus", "porsche", "jeep", "dodge", "ram",
    "volvo", "jaguar", "land rover", "ferrari", "lamborghini", "gmc", "cadillac", "buick", "lincoln",
    "acura", "infiniti", "mitsubishi", "genesis", "corolla", "camry", "civic", "accord", "mustang",
    "f-150", "prius", "rav4", "cr-v",
]  # fmt: skip


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@register_reward("expert")
class ExpertReward:
    """Weighted mean of sales behaviours times a conduct factor; see the module docstring."""

    low, high = 0.0, 1.0

    def __init__(
        self,
        task: Task,
        weights: dict[str, float] | None = None,
        factors: dict[str, float] | None = None,
        brands: list[str] | None = None,
        max_questions: int = 2,
        replies: str = "first",
    ) -> None:
        for option, given, valid in (
            ("weights", weights, BEHAVIOUR_WEIGHTS),
            ("factors", factors, CONDUCT_FACTORS),
        ):
            unknown = set(given or {}) - set(valid)
            if unknown:
                raise RewardError(
                    f"reward.options.expert.{option} names '{sorted(unknown)[0]}'. Valid: {', '.join(valid)}"
                )
        self.task = task
        self.weights = {**BEHAVIOUR_WEIGHTS, **(weights or {})}
        self.factors = {**CONDUCT_FACTORS, **(factors or {})}
        self.brands = [b.lower() for b in (DEFAULT_BRANDS if brands is None else brands)]
        self.max_questions = max_questions
        rubric = task.rubric
        self.keywords = [
            *(k for p in task.personas for k in p.concern_keywords),
            *rubric.next_step_keywords,
            *rubric.politeness_keywords,
        ]
        self.replies = replies

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        results = []
        for sample in samples:
            said = " ".join(m["content"] for m in sample.conversation if m["role"] == "user")
            scored = [
                self.score_reply(sample.scenario, r, said) for r in replies_to_score(sample, self.replies)
            ]
            results.append(
                RewardResult(sum(s for s, _ in scored) / len(scored), " | ".join(r for _, r in scored))
            )
        return results

    def behaviours(self, reply: str) -> dict[str, float]:
        asked = [s for s in re.split(r"(?<=[.!?])\s+|\n+", reply) if s.strip().endswith("?")]
        to_customer = [q for q in asked if len(words(q)) >= 3]  # "Right?" engages no one
        n_words = len(words(reply))
        finished = reply.rstrip().endswith((".", "!", "?", '"', ")"))
        if n_words > self.task.rubric.max_words:
            concise = max(0.0, 1.0 - (n_words - self.task.rubric.max_words) / self.task.rubric.max_words)
        elif n_words < min(8, self.task.rubric.min_words):
            concise = n_words / min(8, self.task.rubric.min_words)
        else:
            concise = 1.0 if finished else 0.5
        if not to_customer:
            question = 0.0
        elif len(asked) <= self.max_questions:
            question = 1.0
        else:
            question = max(0.0, 1.0 - 0.5 * (len(asked) - self.max_questions))
        compound = _vader().polarity_scores(reply)["compound"]
        return {
            "question": question,
            "next_step": 1.0 if NEXT_STEP.search(reply) else 0.0,
            "concise": concise,
            "warm": min(1.0, max(0.0, (compound + 0.2) / 0.8)),
        }

    def conduct(self, scenario: Scenario, reply: str, customer_said: str) -> dict[str, float]:
        """Factor per failed conduct check (only the failed ones)."""
        failed: dict[str, float] = {}
        if ROLE_BREAK.search(reply):
            failed["role_break"] = self.factors["role_break"]
        if is_rude(reply):
            failed["rude"] = self.factors["rude"]
        pressure_ok = self.task.urgency[scenario.urgency].pressure_ok
        if not pressure_ok and (
            PRESSURE.search(reply) or keyword_hits(reply, self.task.rubric.pressure_phrases)
        ):
            failed["pressure"] = self.factors["pressure"]
        if self._invented(reply, customer_said):
            failed["invented"] = self.factors["invented"]
        if APOLOGY.search(reply) and not COMPLAINT.search(customer_said):
            failed["apology"] = self.factors["apology"]
        if keyword_density(reply, self.keywords) > STUFFING_DENSITY:
            failed["stuffing"] = self.factors["stuffing"]
        tokens = words(reply)
        repeated = min(unique_fraction(sentences(reply)), unique_fraction(trigrams(tokens)))
        if repeated < 1.0:
            failed["repetition"] = repeated
        return failed

    def invented_terms(self, reply: str) -> bool:
        """Prices, percentages, discounts or stock counts, where the task's rubric forbids them."""
        return not self.task.rubric.price_patterns_allowed and bool(INVENTED.search(reply))

    def _invented(self, reply: str, customer_said: str) -> bool:
        if self.invented_terms(reply):
            return True
        said = customer_said.lower()
        for pattern in (YEAR, FIGURE, SPELLED_FIGURE):
            if any(m.group(0).lower() not in said for m in pattern.finditer(reply)):
                return True
        named = keyword_hits(reply, self.brands)
        return any(brand not in said for brand in named)

    def score_reply(self, scenario: Scenario, reply: str, customer_said: str = "") -> tuple[float, str]:
        if not words(reply):
            return 0.0, "empty reply"
        expects = set(self.task.stage[scenario.stage].expects)
        values = self.behaviours(reply)
        weights = {name: self.weights[name] * (EXPECTED_BOOST if name in expects else 1.0) for name in values}
        mean = sum(weights[n] * v for n, v in values.items()) / sum(weights.values())
        failed = self.conduct(scenario, reply, customer_said)
        factor = 1.0
        for value in failed.values():
            factor *= value
        shown = ", ".join(f"{n}={v:.2f}" for n, v in values.items())
        reason = f"{shown}" + (f"; x{factor:.2f} ({', '.join(failed)})" if failed else "")
        return min(1.0, max(0.0, mean * factor)), reason
