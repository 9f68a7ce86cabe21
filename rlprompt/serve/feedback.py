"""Feedback: validation of one event, and its group-committed write (events.record_feedback).

A mixin of `Gateway` (gateway.py) so the gateway module stays about choosing arms and calling the
target; the in-memory posterior moves only in the writer's after-commit hook, so what the bandit
believes is always what is durable.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from rlprompt.serve import store
from rlprompt.serve.events import FeedbackRow, record_feedback
from rlprompt.serve.schema import FeedbackInput, GatewayError

if TYPE_CHECKING:
    from rlprompt.config import ServeConfig
    from rlprompt.serve.evolution import Evolver
    from rlprompt.serve.portfolio import Portfolio

THUMBS = {"up": 1.0, "down": 0.0}


class FeedbackMixin:
    """Feedback methods of `Gateway` (which provides cfg, writer, portfolio and evolver)."""

    cfg: ServeConfig
    writer: store.Writer
    portfolio: Portfolio
    evolver: Evolver

    def feedback_value(
        self, reward: float | None, thumbs: str | None, outcome: str | None
    ) -> tuple[str, float, str | None]:
        """(kind, value in [0, 1], name) from exactly one of reward / thumbs / outcome."""
        given = [
            k for k, v in (("reward", reward), ("thumbs", thumbs), ("outcome", outcome)) if v is not None
        ]
        if len(given) != 1:
            raise GatewayError(
                422,
                f"give exactly one of reward (a number in [0, 1]), thumbs ('up' | 'down') or outcome "
                f"(one of: {', '.join(self.cfg.outcomes)}); got {', '.join(given) or 'none'}",
                given[1] if len(given) > 1 else "reward",
            )
        if reward is not None:
            if not (0.0 <= reward <= 1.0):  # NaN fails this too
                raise GatewayError(422, f"reward must be in [0, 1], got {reward!r}", "reward")
            return "reward", float(reward), None
        if thumbs is not None:
            if thumbs not in THUMBS:
                raise GatewayError(422, f"thumbs must be 'up' or 'down', got {thumbs!r}", "thumbs")
            return "thumbs", THUMBS[thumbs], thumbs
        if outcome not in self.cfg.outcomes:
            raise GatewayError(
                422,
                f"unknown outcome {outcome!r}. Configured outcomes (serve.outcomes): {', '.join(self.cfg.outcomes)}",
                "outcome",
            )
        return "outcome", float(self.cfg.outcomes[outcome]), outcome

    def feedback(self, item: FeedbackInput) -> dict:
        """Record one feedback event and wait for its commit (callers outside the event loop)."""
        row, after = self.feedback_op(item)
        return self.feedback_result(
            item, row.feedback_id, self.writer.submit_group(record_feedback, row, after).result()
        )

    async def feedback_async(self, item: FeedbackInput) -> dict:
        """The same, awaited on the event loop: no thread hop per event (feedback is the hot path)."""
        row, after = self.feedback_op(item)
        result = await self.writer.submit_async(None, after, group=record_feedback, payload=row)
        return self.feedback_result(item, row.feedback_id, result)

    def feedback_op(self, item: FeedbackInput) -> tuple[FeedbackRow, Any]:
        """The writer payload; the in-memory posterior moves in the hook, after the commit."""
        feedback_id = item.feedback_id or f"fb-{uuid.uuid4().hex}"
        nano = store.to_nano(item.value)
        row = FeedbackRow(feedback_id, item.conversation_id, item.kind, item.name, nano)

        def after(result: dict) -> None:
            if "error" not in result:
                total = self.portfolio.apply(result["arm_id"], result["context"], nano)
                self.evolver.on_feedback(total)

        return row, after

    def feedback_result(self, item: FeedbackInput, feedback_id: str, result: dict) -> dict:
        if result.get("error") == 409:
            raise GatewayError(
                409,
                f"feedback_id {feedback_id!r} was already recorded (seq {result['seq']}); nothing was stored",
                "feedback_id",
            )
        if result.get("error") == 404:
            raise GatewayError(
                404,
                f"unknown conversation_id {item.conversation_id!r}: use the `id` of a chat completion response",
                "conversation_id",
            )
        return {
            "feedback_id": feedback_id,
            "conversation_id": item.conversation_id,
            "arm_id": result["arm_id"],
            "context": result["context"],
            "kind": item.kind,
            "value": item.value,
            "seq": result["seq"],
        }
