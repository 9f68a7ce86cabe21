"""OpenAI-compatible target (OpenAI, vLLM, `transformers serve`, ...), and the one client path
(`OpenAIChat`) that it and the reward LLMs' choice scorers (rewards/llm.py) share.

Bounded concurrency, per-request timeouts, and retries with exponential backoff and jitter on
408 / 409 / 429 / 5xx / timeouts / dropped connections / truncated, malformed or empty bodies
(honouring `Retry-After`, capped at `max_backoff_s`). Other 4xx (a bad key, a wrong model name)
fail at once. The API key is read from the environment variable named in config, never from
config itself, so it cannot reach a saved config, a log or a checkpoint; error messages are
scrubbed of it too (a careless server may echo it back). tests/test_fault_api.py drives every
fault class through a local fault-injecting server (tests/fault_server.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from rlprompt.errors import UserError
from rlprompt.targets.base import (
    Conversation,
    GenerationParams,
    PartialGenerationError,
    Reply,
    validate_conversation,
)
from rlprompt.targets.cache import CallCounter

log = logging.getLogger(__name__)
T = TypeVar("T")


class RetryableResponse(Exception):
    """The server answered, but with nothing usable (no choices, no content)."""


RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx; as the official client does


def _retry_after_seconds(err: Exception) -> float | None:
    """Seconds from `retry-after-ms` / `Retry-After` (seconds form; an HTTP date is ignored)."""
    response = getattr(err, "response", None)
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = response.headers.get(header)
        try:
            if value is not None and float(value) >= 0:
                return float(value) / scale
        except ValueError:
            continue
    return None


def redact(text: str, secret: str | None) -> str:
    """`text` with every occurrence of `secret` (the API key) replaced by `***`."""
    return text.replace(secret, "***") if secret else text


class OpenAIChat:
    """The client path of every OpenAI-compatible call: the key from the environment, bounded
    concurrency, retries with backoff (honouring Retry-After) counted on `retry_counter`, partial
    batches kept, and the key scrubbed from every error message.

    Callers say what to send (`request(parse, **create_kwargs)`) and how to read the answer:
    `parse` raises `RetryableResponse` for a body with nothing usable (retried), or any other
    exception to fail at once (a `UserError` reaches the caller as it is).
    `where` names the config section in messages ("target", "reward.options.judge.endpoint").
    """

    def __init__(
        self,
        model: str,
        base_url: str,
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        retry_counter: CallCounter | None = None,
        where: str = "target",
    ) -> None:
        import openai

        if not base_url:
            raise UserError(
                f"{where}.base_url is empty: set it, e.g. {where}.base_url=http://127.0.0.1:8000/v1"
            )
        api_key = os.environ.get(api_key_env)
        if api_key is None:
            raise UserError(
                f"the API key variable '{api_key_env}' ({where}.api_key_env) is not set: "
                f"export {api_key_env}=... (use any value for a local server that ignores keys)"
            )
        self._openai = openai
        self._secret = api_key  # only to scrub it from error messages
        # max_retries=0: retries happen here, where they are counted and bounded.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0)
        self.model = model
        # Read by the gateway's async client (rlprompt/serve/upstream.py), which follows this policy.
        self.base_url, self.timeout_s = base_url, timeout_s
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.retry_counter = retry_counter or CallCounter(role="retries")

    def run_batch(
        self, conversations: list[Conversation], one: Callable[[Conversation], Reply]
    ) -> list[Reply]:
        """`one` per conversation, `max_concurrency` at a time; failures keep the completed replies."""
        for conversation in conversations:
            validate_conversation(conversation)
        results: dict[int, Reply] = {}
        errors: dict[int, Exception] = {}
        if len(conversations) == 1:  # one call needs no pool: starting its thread costs ms on a busy CPU
            try:
                results[0] = one(conversations[0])
            except Exception as err:
                errors[0] = err
        else:
            with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                futures = {i: pool.submit(one, c) for i, c in enumerate(conversations)}
                for i, future in futures.items():
                    try:
                        results[i] = future.result()
                    except Exception as err:  # collected: the successful replies must not be lost
                        errors[i] = err
        if errors:
            first = next(iter(errors.values()))
            if isinstance(first, UserError):  # our own message (a server that cannot do this at all)
                raise type(first)(redact(str(first), self._secret)) from None
            message = redact(f"{type(first).__name__}: {first}", self._secret)
            raise PartialGenerationError(message, completed=results)
        return [results[i] for i in range(len(conversations))]

    def request(self, parse: Callable[[Any], T], **kwargs: Any) -> T:
        """`chat.completions.create(**kwargs)` read by `parse`, retried on transient faults."""
        openai = self._openai
        retryable = (
            openai.APITimeoutError,  # no answer within timeout_s
            openai.APIConnectionError,  # refused, dropped, truncated body (httpx.RemoteProtocolError)
            openai.APIStatusError,  # filtered below: 408 / 409 / 429 / 5xx only
            openai.APIResponseValidationError,  # a body that does not fit the schema
            json.JSONDecodeError,  # a malformed JSON body (the client does not wrap it)
            RetryableResponse,  # no choices / no content
        )
        for attempt in range(self.max_retries + 1):
            try:
                return parse(self.client.chat.completions.create(model=self.model, **kwargs))
            except retryable as err:
                status = getattr(err, "status_code", None)
                if isinstance(err, openai.APIStatusError) and status < 500 and status not in RETRYABLE_STATUS:
                    raise
                if attempt == self.max_retries:
                    raise
                delay = _retry_after_seconds(err)
                if delay is None:
                    delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                delay = min(delay, self.max_backoff_s)  # a server asking for an hour does not stall the run
                with self.retry_counter._lock:
                    self.retry_counter.retries += 1
                log.warning(
                    "%s %s: %s (attempt %d), retrying in %.1fs",
                    type(self).__name__,
                    self.model,
                    type(err).__name__,
                    attempt + 1,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")


def first_choice(response: Any) -> Any:
    """The response's first choice; `RetryableResponse` when there is none."""
    choices = getattr(response, "choices", None)
    if not choices or not isinstance(choices, list):
        raise RetryableResponse("response has no choices")
    return choices[0]


class OpenAITarget(OpenAIChat):
    """Chat completions against any OpenAI-compatible `base_url`."""

    def __init__(self, model: str, base_url: str, **kwargs: Any) -> None:
        super().__init__(model, base_url, **kwargs)
        self.target_id = f"openai:{base_url.rstrip('/')}:{model}"

    def generate(self, conversations: list[Conversation], params: GenerationParams) -> list[Reply]:
        return self.run_batch(conversations, lambda c: self._one(c, params))

    def _one(self, conversation: Conversation, params: GenerationParams) -> Reply:
        kwargs: dict[str, Any] = dict(messages=conversation, max_tokens=params.max_new_tokens)
        if params.greedy:
            kwargs.update(temperature=0.0)
        else:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        return self.request(_text_reply, **kwargs)


def _text_reply(response: Any) -> Reply:
    text = getattr(getattr(first_choice(response), "message", None), "content", None)
    if not isinstance(text, str):
        raise RetryableResponse("response choice has no text content")
    usage = getattr(response, "usage", None)
    return Reply(
        text=text.strip(),
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
    )
