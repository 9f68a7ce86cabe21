"""A local OpenAI-compatible server that fails on purpose, for the fault-injection tests.

`POST /v1/chat/completions` answers each request with the next entry of a scripted fault list
(then `default`, "ok" unless set). A healthy answer is deterministic: its text is a hash of the
messages, so a retried or resumed call returns exactly what the first one would have.

Faults (one entry = one HTTP request):
  ok              200, a valid completion
  timeout         sleep `sleep_s` (past the client's timeout), then answer
  429             429 Too Many Requests with `Retry-After: <retry_after>`
  500, 502, 503   server errors with a JSON error body
  401             authentication error (not retryable)
  malformed       200, application/json, a body that is not JSON
  not_a_completion 200, valid JSON that is not a chat completion (a list)
  empty_choices   200, `"choices": []`
  null_content    200, a choice whose message content is null
  truncated       200 with Content-Length larger than the body, then the connection closes
  drop            the connection closes without any response
  echo_key        401 whose error message repeats the Authorization header (a careless server)

A request with `"logprobs": true` gets, on a healthy answer, the server's `logprobs` (token →
probability) as the answer token's top logprobs (for the judge / customer choice scorers);
without `logprobs` set, the server does not support them and returns none.

Every request is recorded (`requests`: fault, Authorization header, parsed body).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = (
    "ok",
    "timeout",
    "429",
    "500",
    "502",
    "503",
    "401",
    "malformed",
    "not_a_completion",
    "empty_choices",
    "null_content",
    "truncated",
    "drop",
    "echo_key",
)


def reply_text(messages: list[dict]) -> str:
    """The deterministic healthy reply to `messages`."""
    digest = hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:12]
    return f"Happy to help you find the right car today. ref {digest}"


class FaultServer:
    """`with FaultServer(["429", "drop"]) as server: ... server.base_url ...`"""

    def __init__(
        self,
        faults: list[str] | None = None,
        default: str = "ok",
        sleep_s: float = 2.0,
        retry_after="0",
        logprobs: dict[str, float] | None = None,
    ) -> None:
        for fault in [*(faults or []), default]:
            if fault not in FAULTS:
                raise ValueError(f"unknown fault '{fault}'. Valid: {', '.join(FAULTS)}")
        self.script: deque[str] = deque(faults or [])
        self.default = default
        self.sleep_s = sleep_s
        self.retry_after = retry_after
        self.logprobs = logprobs
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                server._handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    # ------------------------------------------------------------------ control

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def set_script(self, faults: list[str], default: str | None = None) -> None:
        with self._lock:
            self.script = deque(faults)
            if default is not None:
                self.default = default

    def count(self, fault: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if fault is None or r["fault"] == fault)

    # ------------------------------------------------------------------ requests

    def _next_fault(self) -> str:
        with self._lock:
            return self.script.popleft() if self.script else self.default

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        fault = self._next_fault() if handler.path.rstrip("/").endswith("/chat/completions") else "404"
        with self._lock:
            self.requests.append(
                {"fault": fault, "authorization": handler.headers.get("Authorization"), "body": body}
            )
        # the client may have given up (timeout fault): nothing to do then
        with contextlib.suppress(TimeoutError, BrokenPipeError, ConnectionResetError):
            self._respond(handler, fault, body)

    def _respond(self, handler: BaseHTTPRequestHandler, fault: str, body: dict) -> None:
        if fault == "timeout":
            self._closing.wait(self.sleep_s)
            fault = "ok"
        if fault == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "404":
            return self._send(handler, 404, {"error": {"message": "not found"}})
        if fault == "429":
            return self._send(
                handler,
                429,
                {"error": {"message": "rate limited", "type": "rate_limit"}},
                {"Retry-After": str(self.retry_after)},
            )
        if fault in ("500", "502", "503"):
            return self._send(handler, int(fault), {"error": {"message": f"server error {fault}"}})
        if fault == "401":
            return self._send(handler, 401, {"error": {"message": "invalid api key"}})
        if fault == "echo_key":
            auth = handler.headers.get("Authorization", "")
            return self._send(handler, 401, {"error": {"message": f"invalid api key: {auth}"}})
        if fault == "malformed":
            return self._send_raw(handler, 200, b'{"id": "x", "choices": [{"message": ', "application/json")
        if fault == "not_a_completion":
            return self._send(handler, 200, ["not", "a", "completion"])
        messages = body.get("messages", [])
        completion = self._completion(body, reply_text(messages))
        if fault == "empty_choices":
            completion["choices"] = []
        elif fault == "null_content":
            completion["choices"][0]["message"]["content"] = None
        if fault == "truncated":
            data = json.dumps(completion).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data) + 500))
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(handler, 200, completion)

    def _completion(self, body: dict, text: str) -> dict:
        completion = {
            "id": "chatcmpl-fault",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fault-model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": len(text.split()), "total_tokens": 0},
        }
        if body.get("logprobs") and self.logprobs:
            top = [{"token": t, "logprob": math.log(p), "bytes": None} for t, p in self.logprobs.items()]
            completion["choices"][0]["message"]["content"] = top[0]["token"]
            completion["choices"][0]["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        return completion

    def _send(self, handler, status: int, payload, headers: dict | None = None) -> None:
        self._send_raw(handler, status, json.dumps(payload).encode(), "application/json", headers)

    @staticmethod
    def _send_raw(handler, status: int, data: bytes, content_type: str, headers: dict | None = None) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()
