"""The gateway's async client for an OpenAI-compatible upstream: the hot path of every chat.

Why not the `openai` SDK (or httpx) here: on this project's 2-core machine the sync SDK in a thread
cost ~1.5 ms of CPU per call, `openai.AsyncOpenAI` ~2 ms and a bare `httpx.AsyncClient` ~0.9 ms
(benchmarks/serve.py, docs/SERVE.md); the gateway's whole budget is a few ms. A chat completion
is one POST of JSON over HTTP/1.1, so this module speaks exactly that over asyncio streams, with a
kept-alive connection pool (http and https), Content-Length and chunked bodies, and streaming
(SSE lines as they arrive: true time-to-first-token). Everything else follows the target's own
policy (rlprompt/targets/openai_api.py): the key from the environment, `timeout_s`,
`max_retries` with backoff honouring Retry-After on 408/409/429/5xx/dropped connections/bodies
with nothing usable, other 4xx at once, the key scrubbed from every message.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from rlprompt.targets.base import GenerationParams, Reply
from rlprompt.targets.openai_api import RETRYABLE_STATUS, OpenAIChat, redact

try:  # orjson parses a reply ~5x faster; plain json is the fallback
    import orjson

    loads: Any = orjson.loads

    def dumps(value: Any) -> bytes:
        return orjson.dumps(value)

except ImportError:  # pragma: no cover - orjson is a dependency
    loads = json.loads

    def dumps(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()


class UpstreamError(Exception):
    """The upstream failed for good; `unavailable` (no answer: 503) or an answer we cannot use (502)."""

    def __init__(self, message: str, unavailable: bool) -> None:
        super().__init__(message)
        self.unavailable = unavailable


class _Retryable(Exception):
    def __init__(self, message: str, unavailable: bool, delay: float | None = None) -> None:
        super().__init__(message)
        self.unavailable, self.delay = unavailable, delay


class _Conn:
    """One kept-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.reused = reader, writer, False

    def close(self) -> None:
        self.writer.close()


class Response:
    """Status, lower-cased headers, and the body read on demand from the connection."""

    def __init__(self, client: AsyncUpstream, conn: _Conn, status: int, headers: dict[str, str]) -> None:
        self.client, self.conn, self.status, self.headers = client, conn, status, headers
        self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; the connection goes back to the pool once it is read to the end."""
        reader, timeout = self.conn.reader, self.client.timeout_s
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    size = int(
                        (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)).split(b";")[0], 16
                    )
                    if size == 0:
                        while await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout) != b"\r\n":
                            pass  # trailers
                        break
                    yield (await asyncio.wait_for(reader.readexactly(size + 2), timeout))[:-2]
            elif "content-length" in self.headers:
                yield await asyncio.wait_for(reader.readexactly(int(self.headers["content-length"])), timeout)
            else:  # delimited by the end of the connection: not reusable
                yield await asyncio.wait_for(reader.read(), timeout)
                self.headers["connection"] = "close"
            self.done = True
        finally:
            self.release()

    async def body(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def release(self) -> None:
        """Back to the pool when the body was read whole and the server keeps it alive, else closed."""
        if self.conn is None:
            return
        if self.done and self.headers.get("connection", "").lower() != "close":
            self.client.idle.append(self.conn)
        else:
            self.conn.close()
        self.conn = None  # type: ignore[assignment]
        self.client.slots.release()


class AsyncUpstream:
    """Chat completions against the OpenAI-compatible `base_url` of an `OpenAIChat` target."""

    def __init__(self, chat: OpenAIChat, pool_size: int) -> None:
        url = urlsplit(chat.base_url.rstrip("/"))
        self.chat, self.secret = chat, chat._secret
        self.host = url.hostname or "127.0.0.1"
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.path = f"{url.path}/chat/completions"
        self.timeout_s = chat.timeout_s
        host = self.host if url.port is None else f"{self.host}:{url.port}"
        self.head = (
            f"POST {self.path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {self.secret}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\nUser-Agent: rlprompt-gateway\r\n"
        ).encode()
        self.pool_size = pool_size
        self.loop: asyncio.AbstractEventLoop | None = None
        self.idle: list[_Conn] = []
        self.slots = asyncio.Semaphore(pool_size)

    def _bind(self) -> None:
        """Pools belong to one event loop (tests start a fresh server loop per gateway)."""
        loop = asyncio.get_running_loop()
        if loop is not self.loop:
            self.loop, self.idle, self.slots = loop, [], asyncio.Semaphore(self.pool_size)

    def body(self, messages: list[dict[str, str]], params: GenerationParams, stream: bool) -> dict:
        """The same request `OpenAITarget._one` sends (so both paths get the same reply)."""
        body: dict[str, Any] = {
            "model": self.chat.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
        }
        if params.greedy:
            body["temperature"] = 0.0
        else:
            body.update(temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        return body

    async def _send(self, payload: bytes) -> Response:
        """One request on a pooled connection; a kept-alive connection the server had closed is
        replaced once (that is not a retry: the request never reached the server)."""
        await self.slots.acquire()
        request = self.head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
        for _ in range(2):
            conn = self.idle.pop() if self.idle else None
            try:
                if conn is None:
                    context = ssl.create_default_context() if self.tls else None
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port, ssl=context), self.timeout_s
                    )
                    conn = _Conn(reader, writer)
                else:
                    conn.reused = True
                conn.writer.write(request)
                head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), self.timeout_s)
            except (asyncio.IncompleteReadError, ConnectionError) as err:
                if conn is not None:
                    conn.close()
                if conn is not None and conn.reused:
                    continue
                self.slots.release()
                raise _Retryable(f"connection to the upstream failed: {type(err).__name__}", True) from err
            except (OSError, asyncio.TimeoutError, asyncio.LimitOverrunError) as err:
                if conn is not None:
                    conn.close()
                self.slots.release()
                what = "timed out" if isinstance(err, asyncio.TimeoutError) else f"failed: {err}"
                raise _Retryable(f"connection to the upstream {what}", True) from err
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            if lines[0].startswith("HTTP/1.0") and headers.get("connection", "").lower() != "keep-alive":
                headers["connection"] = "close"  # HTTP/1.0 closes after each answer unless told otherwise
            return Response(self, conn, int(lines[0].split(" ", 2)[1]), headers)
        self.slots.release()
        raise _Retryable("the upstream closed the connection", True)

    async def _open(self, body: dict) -> Response:
        """A 200 response with its body unread; failures raise `_Retryable` or `UpstreamError`."""
        response = await self._send(dumps(body))
        if response.status == 200:
            return response
        try:
            text = (await response.body())[:300].decode("utf-8", "replace")
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            text = ""
        message = redact(f"upstream answered {response.status}: {text}", self.secret)
        if response.status >= 500 or response.status in RETRYABLE_STATUS:
            raise _Retryable(message, False, _retry_after(response.headers))
        raise UpstreamError(message, unavailable=False)

    async def _retrying(self, attempt_fn: Any) -> Any:
        """`attempt_fn()` under the target's retry policy (counted on its retry counter)."""
        self._bind()
        chat = self.chat
        for attempt in range(chat.max_retries + 1):
            try:
                return await attempt_fn()
            except _Retryable as err:
                if attempt == chat.max_retries:
                    raise UpstreamError(str(err), err.unavailable) from err
                delay = err.delay
                if delay is None:
                    delay = min(chat.max_backoff_s, chat.backoff_s * 2**attempt) * (0.5 + random.random() / 2)
                with chat.retry_counter._lock:
                    chat.retry_counter.retries += 1
                await asyncio.sleep(min(delay, chat.max_backoff_s))
        raise AssertionError("unreachable")

    async def complete(self, messages: list[dict[str, str]], params: GenerationParams) -> Reply:
        """One chat completion, whole."""

        async def attempt() -> Reply:
            response = await self._open(self.body(messages, params, stream=False))
            try:
                data = loads(await response.body())
                text = data["choices"][0]["message"]["content"]
                if not isinstance(text, str):
                    raise TypeError("no text content")
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError) as err:
                raise _Retryable(f"the upstream dropped its answer: {type(err).__name__}", True) from err
            except (ValueError, KeyError, IndexError, TypeError) as err:
                raise _Retryable(f"the upstream's answer has no usable reply ({err})", False) from err
            usage = data.get("usage") or {}
            return Reply(
                text.strip(), int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
            )

        return await self._retrying(attempt)

    async def stream(self, messages: list[dict[str, str]], params: GenerationParams) -> Response:
        """Open a streaming completion (retried until its 200 head arrives); read it with `events`."""
        body = self.body(messages, params, stream=True)
        return await self._retrying(lambda: self._open(body))


async def events(response: Response) -> AsyncIterator[dict]:
    """The upstream's SSE `data:` objects as they arrive (up to `[DONE]`)."""
    buffer = b""
    async for piece in response.chunks():
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                continue  # read on to the end of the body so the connection can be reused
            yield loads(data)


def _retry_after(headers: dict[str, str]) -> float | None:
    for header, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            if header in headers and float(headers[header]) >= 0:
                return float(headers[header]) / scale
        except ValueError:
            continue
    return None
