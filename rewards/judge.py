"""`judge`: an LLM rates the salesperson against a rubric; score = E[rating] from token probabilities.

The judge sees a rubric (system message), two rated anchors and the conversation as a transcript;
the answer slot's next-token probabilities over "1".."5" are normalised over those five tokens
and the expected rating is mapped to [0, 1]: (E[r] - 1) / 4. No text is parsed, so a chatty
judge never fails and the score is smooth. Calls are cached and counted under their own role
("judge"), apart from target calls.
"""

from __future__ import annotations

from rlprompt.rewards.base import RewardResult, Sample, register_reward
from rlprompt.rewards.llm import Choices, choice_probs, transcript
from rlprompt.targets.base import Conversation
from rlprompt.targets.cache import CachedTarget
from rlprompt.task import Task

JUDGE_CHOICES = Choices.of(["1", "2", "3", "4", "5"], answer_prefix="Rating: ")

DEFAULT_RUBRIC = (
    "You are a strict sales coach. You rate a salesperson's reply from 1 (very poor: rude, pushy, unhelpful) "
    "to 5 (excellent: polite, helpful, answers the customer, suggests a sensible next step)."
)
# The anchor for a 1 in the few-shot prompt (the anchor for a 5 is the stage's first reference reply).
POOR_EXAMPLE = "I don't know. Just pick one and pay, I have other customers waiting, so hurry up."


@register_reward("judge")
class JudgeReward:
    """Expected 1-5 rating of the salesperson's last reply by an LLM judge, mapped to [0, 1].

    The prompt is few-shot: two rated anchors (the stage's first reference reply = 5, a rude
    pushy reply = 1) before the conversation to rate. SmolLM2-135M separates replies only
    weakly even so (see docs/REWARDS.md); a larger judge behind `endpoint` does much better.
    """

    low, high = 0.0, 1.0

    def __init__(
        self,
        task: Task,
        judge_scorer: CachedTarget,
        rubric: str = DEFAULT_RUBRIC,
        poor_example: str = POOR_EXAMPLE,
        show_context: bool = False,
    ) -> None:
        self.task = task
        self.scorer = judge_scorer
        self.rubric = rubric
        self.poor_example = poor_example
        # Off by default: the persona/stage/urgency paragraph made SmolLM2-135M's ratings noisier
        # (it inverted our hand-written good/bad pair); a capable judge should get it.
        self.show_context = show_context

    def prompt(self, sample: Sample) -> Conversation:
        s, task = sample.scenario, self.task
        system = self.rubric
        if self.show_context:
            system += (
                f" The salesperson is a {task.assistant_role}. The customer is: {s.persona} "
                f"({task.persona[s.persona].description}). Stage: {s.stage} (goal: {task.stage[s.stage].goal}). "
                f"Urgency: {s.urgency} ({task.urgency[s.urgency].description})."
            )
        opening = f"Customer: {s.customer}\nSalesperson: "
        anchors = (
            f"{opening}{task.stage[s.stage].reference_replies[0]}\nRating: 5\n\n"
            f"{opening}{self.poor_example}\nRating: 1\n\n"
        )
        user = f"{anchors}{transcript(sample.conversation)}\nRating:"
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        results = []
        for probs, mass in choice_probs(self.scorer, [self.prompt(s) for s in samples]):
            expected = sum((i + 1) * p for i, p in enumerate(probs))
            score = min(1.0, max(0.0, (expected - 1.0) / 4.0))
            reason = f"E[rating]={expected:.2f}, p={[round(p, 2) for p in probs]}, mass on digits {mass:.2f}"
            results.append(RewardResult(score, reason))
        return results
