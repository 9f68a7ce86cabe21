"""`length` and `repetition`: penalties in [-1, 0] that close the cheapest reward hacks.

Both reuse TRL's reward helpers on word ids (trl.rewards.other_rewards): DAPO's soft overlong
punishment (Yu et al. 2025, eq. 13) and the repeated-n-gram penalty of "Demystifying Long
Chain-of-Thought Reasoning" (Yeo et al. 2025, app. C.2). Words, not tokens, so the penalty means
the same thing whatever the target's tokenizer.
"""

from __future__ import annotations

from trl.rewards import get_repetition_penalty_reward, get_soft_overlong_punishment

from rlprompt.rewards.base import RewardResult, Sample, register_reward, replies_to_score
from rlprompt.rewards.text import ngram_ids, sentences, unique_fraction, words
from rlprompt.task import Task


@register_reward("length")
class LengthPenalty:
    """0 inside the task's word band [min_words, max_words]; linear ramps to -1 outside it.

    Over-length: 0 at max_words, -1 at max_words + overlong_margin (DAPO soft punishment).
    Under-length: 0 at min_words, -1 at an empty reply.
    """

    low, high = -1.0, 0.0

    def __init__(self, task: Task, overlong_margin: int | None = None, replies: str = "first") -> None:
        self.min_words = task.rubric.min_words
        self.max_words = task.rubric.max_words
        margin = overlong_margin if overlong_margin is not None else max(1, self.max_words // 2)
        self._overlong = get_soft_overlong_punishment(
            max_completion_len=self.max_words + margin, soft_punish_cache=margin
        )
        self.replies = replies

    def penalty(self, reply: str) -> float:
        n = len(words(reply))
        if n < self.min_words:
            return -(self.min_words - n) / self.min_words
        return float(self._overlong([list(range(n))])[0])

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        results = []
        for sample in samples:
            replies = replies_to_score(sample, self.replies)
            penalties = [self.penalty(r) for r in replies]
            counts = ", ".join(str(len(words(r))) for r in replies)
            reason = f"{counts} words, band [{self.min_words}, {self.max_words}]"
            results.append(RewardResult(sum(penalties) / len(penalties), reason))
        return results


@register_reward("repetition")
class RepetitionPenalty:
    """-(share of repeated word n-grams) or -(share of repeated sentences), whichever is worse.

    With `replies: all`, sentences are pooled over the seller's turns, so a seller that repeats
    its previous turn is penalised too.
    """

    low, high = -1.0, 0.0

    def __init__(self, task: Task, ngram_size: int = 3, replies: str = "first") -> None:
        self._ngrams = get_repetition_penalty_reward(ngram_size=ngram_size, max_penalty=-1.0)
        self.replies = replies

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        results = []
        for sample in samples:
            replies = replies_to_score(sample, self.replies)
            ngram = min(float(self._ngrams([ngram_ids(words(r))])[0]) for r in replies)
            pooled = [s for r in replies for s in sentences(r)]
            sentence = -(1.0 - unique_fraction(pooled))
            reason = f"repeated n-grams {-ngram:.2f}, repeated sentences {-sentence:.2f}"
            results.append(RewardResult(max(-1.0, min(ngram, sentence, 0.0)), reason))
        return results
