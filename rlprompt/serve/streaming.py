"""Server-sent events in OpenAI's chunk format: relayed live from an OpenAI-compatible upstream, or
a whole reply (a local model answers whole) streamed word by word.

Why the live relay records at the end: the arm is charged only for a reply that was delivered
whole, so the conversation and its turn are written (and their commit awaited) after the
upstream's last chunk and before our finish chunk; an upstream that fails mid-stream ends the
stream with an OpenAI-style error event (the official client raises it) and leaves no trace. The
relayed text is the reply stripped of leading and trailing whitespace, exactly as the
non-streaming path stores it, so both give a client the same text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from rlprompt.serve.events import record_chats
from rlprompt.serve.schema import ChatResult, Prepared
from rlprompt.serve.upstream import Response, UpstreamError, dumps, events
from rlprompt.targets.base import Reply

if TYPE_CHECKING:
    from rlprompt.serve.gateway import Gateway

log = logging.getLogger(__name__)


def usage_of(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


class Chunks:
    """Formats `chat.completion.chunk` events for one conversation."""

    def __init__(self, conversation_id: str, created: int, model: str, arm_id: int) -> None:
        self.base = {
            "id": conversation_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": f"arm-{arm_id}",
        }

    def delta(self, delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return b"data: " + dumps({**self.base, "choices": [choice]}) + b"\n\n"

    def usage(self, reply: Reply) -> bytes:
        return b"data: " + dumps({**self.base, "choices": [], "usage": usage_of(reply)}) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def whole_reply_chunks(result: ChatResult, include_usage: bool) -> Iterator[bytes]:
    """A reply generated whole, streamed word by word (no time-to-first-token gain)."""
    out = Chunks(result.conversation_id, result.created, result.model, result.arm_id)
    yield out.delta({"role": "assistant", "content": ""})
    for i, word in enumerate(result.reply.text.split(" ")):
        yield out.delta({"content": word if i == 0 else " " + word})
    yield out.delta({}, result.finish_reason)
    if include_usage:
        yield out.usage(result.reply)
    yield DONE


async def relay(
    gateway: Gateway, prep: Prepared, response: Response, include_usage: bool, started: float
) -> AsyncIterator[bytes]:
    """The upstream's chunks as they arrive, under our id and arm; the turn is recorded at the end."""
    created = time.time()
    out = Chunks(prep.conversation_id, int(created), prep.request.model, prep.arm_id)
    parts: list[str] = []
    pending, begun, pieces = "", False, 0
    usage: dict[str, Any] = {}
    charged = False
    try:
        yield out.delta({"role": "assistant", "content": ""})
        async for event in events(response):
            if "error" in event:
                raise UpstreamError(f"the upstream failed mid-stream: {event['error']}", unavailable=False)
            usage = event.get("usage") or usage
            for choice in event.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if not text:
                    continue
                pieces += 1
                if not begun:  # leading whitespace is dropped, as str.strip() drops it
                    text = text.lstrip()
                    begun = bool(text)
                stripped = text.rstrip()
                if not stripped:  # trailing whitespace waits until something follows it
                    pending += text
                    continue
                piece, pending = pending + stripped, text[len(stripped) :]
                parts.append(piece)
                yield out.delta({"content": piece})
        target_ms = 1000 * (time.perf_counter() - started)
        reply = Reply(
            "".join(parts),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or pieces),
        )
        payload, after = gateway.record(prep, reply, target_ms, created)
        await gateway.writer.submit_async(None, after, group=record_chats, payload=payload)
        charged = True
        with gateway.target.counter._lock:
            gateway.target.counter.completion_tokens += reply.completion_tokens
        result = gateway.finish(prep, reply, target_ms, created)
        yield out.delta({}, result.finish_reason)
        if include_usage:
            yield out.usage(reply)
        yield DONE
    except Exception as err:  # headers are sent: end the stream with an error event
        log.warning("streaming from the target failed: %s", type(err).__name__)
        message = f"the target model failed mid-stream ({type(err).__name__}); retry later"
        yield b"data: " + dumps({"error": {"message": message, "type": "api_error", "code": 502}}) + b"\n\n"
    finally:
        response.release()
        if not charged:
            gateway.target._refund(1)
