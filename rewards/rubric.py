"""`rubric`: deterministic, stage/persona/urgency-aware checks driven by the task's domain.yaml.

Score = (weighted mean of named checks in [0, 1]) x (integrity factor in [0, 1]). The checks
that apply depend on the scenario: a question is expected only where the stage `expects`
`question`, pressure phrases only fail where the urgency level has `pressure_ok: false`.

It is built to resist the reward hacks a prompt optimizer finds first:
- keyword checks saturate (one or two hits earn the full check; stuffing adds nothing),
- the integrity factor multiplies the score down for repeated sentences / trigrams, a high
  density of rubric keywords, more than `max_questions` questions, and replies over `max_words`,
- an empty reply scores 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from rlprompt.errors import RewardError
from rlprompt.rewards.base import RewardResult, Sample, register_reward, replies_to_score
from rlprompt.rewards.text import keyword_density, keyword_hits, sentences, trigrams, unique_fraction, words
from rlprompt.task import Scenario, Task

DEFAULT_WEIGHTS = {
    "question": 1.0,
    "concern": 1.0,
    "next_step": 1.0,
    "reassurance": 0.5,
    "no_pressure": 1.0,
    "no_prices": 1.0,
    "length": 0.5,
    "polite": 0.5,
}
REASSURANCE_KEYWORDS = [
    "no pressure",
    "take your time",
    "understand",
    "no obligation",
    "comfortable",
    "peace of mind",
    "happy to explain",
    "fair",
    "transparent",
    "whatever you decide",
]
# Invented commercial terms: $ amounts, percentages, "discount", "N% off", "N percent".
PRICE_PATTERN = re.compile(
    r"\$\s?\d|\d+(\.\d+)?\s?(%|percent\b)|\bdiscount(s|ed)?\b|%\s?off\b", re.IGNORECASE
)


@register_reward("rubric")
class RubricReward:
    """Weighted mean of sales-behaviour checks, times an anti-hacking integrity factor."""

    low, high = 0.0, 1.0

    def __init__(
        self,
        task: Task,
        weights: dict[str, float] | None = None,
        concern_saturation: int = 2,
        stuffing_density: float = 0.4,
        max_questions: int = 3,
        replies: str = "first",
        reassurance_keywords: list[str] | None = None,
    ) -> None:
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise RewardError(
                f"reward.options.rubric.weights names check '{sorted(unknown)[0]}'. "
                f"Valid checks: {', '.join(DEFAULT_WEIGHTS)}"
            )
        self.task = task
        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.concern_saturation = concern_saturation
        self.stuffing_density = stuffing_density
        self.max_questions = max_questions
        self.replies = replies
        self.reassurance_keywords = reassurance_keywords or REASSURANCE_KEYWORDS

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        results = []
        for sample in samples:
            scored = [self.score_reply(sample.scenario, r) for r in replies_to_score(sample, self.replies)]
            mean = sum(s for s, _ in scored) / len(scored)
            results.append(RewardResult(mean, " | ".join(reason for _, reason in scored)))
        return results

    def checks(self, scenario: Scenario) -> dict[str, Callable[[str], float]]:
        """The checks that apply to this scenario's context (name → reply → [0, 1])."""
        rubric = self.task.rubric
        expects = set(self.task.stage[scenario.stage].expects)
        persona = self.task.persona[scenario.persona]

        def saturating(keywords: list[str], enough: int = 1) -> Callable[[str], float]:
            return lambda reply: min(len(keyword_hits(reply, keywords)), enough) / enough

        checks: dict[str, Callable[[str], float]] = {
            "concern": saturating(persona.concern_keywords, self.concern_saturation),
            "length": self._length,
            "polite": saturating(rubric.politeness_keywords),
        }
        if "question" in expects:
            # One or two questions is discovery; a barrage of them is an interrogation.
            checks["question"] = lambda reply: {0: 0.0, 1: 1.0, 2: 1.0}.get(reply.count("?"), 0.5)
        if "next_step" in expects:
            checks["next_step"] = saturating(rubric.next_step_keywords)
        if "reassurance" in expects:
            checks["reassurance"] = saturating(self.reassurance_keywords)
        if not self.task.urgency[scenario.urgency].pressure_ok:
            checks["no_pressure"] = lambda reply: 0.0 if keyword_hits(reply, rubric.pressure_phrases) else 1.0
        if not rubric.price_patterns_allowed:
            checks["no_prices"] = lambda reply: 0.0 if PRICE_PATTERN.search(reply) else 1.0
        return checks

    def score_reply(self, scenario: Scenario, reply: str) -> tuple[float, str]:
        if not words(reply):
            return 0.0, "empty reply"
        values = {name: check(reply) for name, check in self.checks(scenario).items()}
        total_weight = sum(self.weights[n] for n in values)
        base = sum(self.weights[n] * v for n, v in values.items()) / total_weight if total_weight else 0.0
        factor, notes = self._integrity(reply)
        passed = [n for n, v in values.items() if v >= 1.0]
        failed = [f"{n}={v:.2f}" for n, v in values.items() if v < 1.0]
        reason = f"pass: {', '.join(passed) or '-'}; fail: {', '.join(failed) or '-'}"
        if notes:
            reason += f"; x{factor:.2f} ({', '.join(notes)})"
        return min(1.0, max(0.0, base * factor)), reason

    def _length(self, reply: str) -> float:
        n, lo, hi = len(words(reply)), self.task.rubric.min_words, self.task.rubric.max_words
        if n < lo:
            return n / lo
        return 1.0 if n <= hi else max(0.0, 1.0 - (n - hi) / hi)

    def _integrity(self, reply: str) -> tuple[float, list[str]]:
        """Multiplicative penalties for the hacks that saturation alone does not stop."""
        tokens = words(reply)
        notes, factor = [], 1.0
        repeated = min(unique_fraction(sentences(reply)), unique_fraction(trigrams(tokens)))
        if repeated < 1.0:
            factor *= repeated
            notes.append(f"repetition {repeated:.2f}")
        rubric, persona_words = self.task.rubric, [k for p in self.task.personas for k in p.concern_keywords]
        keywords = [
            *persona_words,
            *rubric.next_step_keywords,
            *rubric.politeness_keywords,
            *self.reassurance_keywords,
        ]
        density = keyword_density(reply, keywords)
        if density > self.stuffing_density:
            factor *= (self.stuffing_density / density) ** 2  # natural replies sit near 0.3
            notes.append(f"keyword density {density:.2f}")
        questions = reply.count("?")
        if questions > self.max_questions:  # a barrage of questions hits every keyword check at once
            factor *= self.max_questions / questions
            notes.append(f"{questions} questions")
        if len(tokens) > rubric.max_words:
            factor *= rubric.max_words / len(tokens)
            notes.append(f"{len(tokens)} words > {rubric.max_words}")
        return factor, notes
