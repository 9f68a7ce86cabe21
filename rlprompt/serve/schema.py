"""The gateway's request and result types, shared by gateway.py, feedback.py and app.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlprompt.targets.base import GenerationParams, Reply


class GatewayError(Exception):
    """An HTTP error with an OpenAI-style body: the field at fault and how to fix it."""

    def __init__(
        self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


@dataclass
class ChatInput:
    """A validated chat request (app.py turns the JSON body into this)."""

    messages: list[dict[str, str]]
    model: str = "rlprompt"
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    conversation_id: str | None = None
    context: dict[str, str | None] = field(default_factory=dict)  # persona, stage, urgency


@dataclass
class ChatResult:
    conversation_id: str
    arm_id: int
    reply: Reply
    model: str
    created: int
    target_ms: float
    finish_reason: str


@dataclass
class Prepared:
    """A chat turn ready for the target: its conversation, arm, and what the target reads."""

    request: ChatInput
    conversation_id: str
    arm_id: int
    context: str
    new: bool
    messages: list[dict[str, str]]
    params: GenerationParams


@dataclass
class FeedbackInput:
    conversation_id: str
    kind: str  # reward | thumbs | outcome
    value: float  # in [0, 1]
    name: str | None = None
    feedback_id: str | None = None
