"""The `Target` protocol: a batch of conversations in, replies out.

Target calls are the budget currency of the whole project, so every target is wrapped in a
`CachedTarget` (see cache.py) that serves repeats from disk and counts real calls.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

from rlprompt.errors import UserError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}
Conversation = list[Message]


@dataclass(frozen=True)
class GenerationParams:
    """Generation settings; part of every cache key."""

    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 → greedy decoding
    top_p: float = 1.0
    seed: int = 0  # sampled replies are reproducible per seed (and cached per seed)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def key(self) -> dict:
        return asdict(self) if not self.greedy else {"max_new_tokens": self.max_new_tokens, "greedy": True}


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool = False


@runtime_checkable
class Target(Protocol):
    """Anything that answers conversations. `target_id` identifies it in the response cache."""

    target_id: str

    def generate(self, conversations: list[Conversation], params: GenerationParams) -> list[Reply]: ...


def validate_conversation(conversation: Conversation) -> None:
    """Reject malformed conversations early with a message that names the problem."""
    if not conversation:
        raise ValueError("a conversation needs at least one message")
    for i, message in enumerate(conversation):
        if set(message) != {"role", "content"} or message["role"] not in ("system", "user", "assistant"):
            raise ValueError(
                f"message {i} must be {{'role': system|user|assistant, 'content': str}}, got {message!r}"
            )


class PartialGenerationError(Exception):
    """Some conversations of a batch failed for good; `completed` holds the paid-for replies.

    `CachedTarget` stores and counts the completed replies before re-raising, so a resumed run
    never pays for them again.
    """

    def __init__(self, message: str, completed: dict[int, Reply]) -> None:
        super().__init__(message)
        self.completed = completed  # index in the batch → reply


class InputTooLong(UserError):
    """A conversation is longer than the target (or policy) may read; raised before any call.

    `conversation` is the offending request, so callers that know the scenarios
    (`conversation.run_conversations`) can name the scenario.
    """

    def __init__(self, message: str, conversation: Conversation | None = None) -> None:
        super().__init__(message)
        self.conversation = conversation
