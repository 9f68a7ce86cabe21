"""FastAPI routes: an OpenAI-compatible front for the gateway (gateway.py holds the logic).

    POST /v1/chat/completions   any `model`; metadata.conversation_id continues a conversation,
                                metadata.persona / stage / urgency name its context
    POST /v1/feedback           {conversation_id, feedback_id?, one of reward | thumbs | outcome}
    GET  /v1/arms               every arm's state, from the database alone
    GET  /dashboard             traffic, posteriors, reward by arm x context, evolution log
    GET  /healthz

Errors have the OpenAI shape `{"error": {"message", "type", "param", "code"}}` so the official
client raises its usual exceptions with our message. Keys (when `serve.api_keys_env` names a set
variable) are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlprompt.serve.gateway import ChatInput, ChatResult, FeedbackInput, Gateway, GatewayError
from rlprompt.serve.streaming import relay, usage_of, whole_reply_chunks
from rlprompt.serve.upstream import dumps

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
ERROR_TYPES |= {409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error"}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]


class ChatBody(BaseModel):
    """The fields the gateway reads; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation_id: str = Field(min_length=1, max_length=64)
    feedback_id: str | None = Field(default=None, min_length=1, max_length=128)
    reward: float | None = None
    thumbs: str | None = None
    outcome: str | None = None


def error_response(
    status: int, message: str, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": ERROR_TYPES.get(status, "api_error"),
            "param": param,
            "code": status,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


class Guard:
    """Pure ASGI (no per-request task switch): API keys, then the body-size limit (413 by
    Content-Length, or while the body streams in)."""

    def __init__(self, app: ASGIApp, limit: int, keys_env: str, protect_reads: bool) -> None:
        self.app, self.limit, self.keys_env, self.protect_reads = app, limit, keys_env, protect_reads

    def keys(self) -> list[bytes]:
        raw = os.environ.get(self.keys_env, "")
        return [k.strip().encode() for k in raw.split(",") if k.strip()]

    def authorized(self, headers: dict[bytes, bytes]) -> bool:
        valid = self.keys()
        if not valid:
            return True
        header = headers.get(b"authorization", b"")
        given = header[7:].strip() if header[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        return any(hmac.compare_digest(given, k) for k in valid)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        reads = path in ("/v1/arms", "/dashboard")
        if (
            (path.startswith("/v1/") and not reads) or (reads and self.protect_reads)
        ) and not self.authorized(headers):
            denied = error_response(
                401,
                f"missing or wrong API key: send 'Authorization: Bearer <key>' with a key from ${self.keys_env}",
                "authorization",
            )
            return await denied(scope, receive, send)
        too_big = error_response(
            413, f"the request body is over serve.max_body_bytes={self.limit} bytes; send less", "body"
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_big(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooBig
            return message

        try:
            await self.app(scope, limited, send)
        except _TooBig:
            await too_big(scope, receive, send)


class _TooBig(Exception):
    pass


def message_text(content: str | list[dict[str, Any]]) -> str:
    """OpenAI content parts → text (only text parts are meaningful to a sales target)."""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if p.get("type") == "text")


def chat_input(body: ChatBody) -> ChatInput:
    meta = body.metadata or {}
    roles = {"developer": "system"}
    messages = [
        {"role": roles.get(m.role, m.role), "content": message_text(m.content)} for m in body.messages
    ]
    if not any(m["role"] == "user" for m in messages):
        raise GatewayError(422, "messages needs at least one message with role 'user'", "messages")
    return ChatInput(
        messages=messages,
        model=body.model,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stream=body.stream,
        conversation_id=meta.get("conversation_id"),
        context={k: meta.get(k) for k in ("persona", "stage", "urgency")},
    )


class FastJSON(JSONResponse):
    """orjson when installed (~4x faster than json.dumps on these bodies), plain json otherwise."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


SSE = "text/event-stream"


def completion(result: ChatResult) -> dict:
    r = result.reply
    return {
        "id": result.conversation_id,
        "object": "chat.completion",
        "created": result.created,
        "model": result.model,
        "system_fingerprint": f"arm-{result.arm_id}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": r.text},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_of(r),
        "rlprompt": {"conversation_id": result.conversation_id, "arm_id": result.arm_id},
    }


def create_app(gateway: Gateway) -> FastAPI:
    """The ASGI app for one gateway (uvicorn serves it; tests may run it in a thread)."""
    from rlprompt.serve.dashboard import render_dashboard

    cfg = gateway.cfg
    app = FastAPI(title="rlprompt gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, err: GatewayError) -> JSONResponse:
        return error_response(err.status, err.message, err.param, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        detail = first.get("msg", "invalid value")
        if first.get("type") == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {detail}", "body")
        if where == "body" and first.get("type") in ("dict_type", "model_attributes_type", "missing"):
            return error_response(
                400,
                "the body must be a JSON object (Content-Type: application/json); see docs/SERVE.md",
                "body",
            )
        if first.get("type") == "extra_forbidden":
            detail = "unknown field (valid: conversation_id, feedback_id, reward, thumbs, outcome)"
        return error_response(422, f"{where}: {detail}", where)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody) -> Response:
        item = chat_input(body)
        usage = bool((body.stream_options or {}).get("include_usage"))
        if body.stream and gateway.upstream is not None:  # relayed live: true time-to-first-token
            started = time.perf_counter()
            prep, upstream = await gateway.open_stream(item)
            return StreamingResponse(relay(gateway, prep, upstream, usage, started), media_type=SSE)
        result = await gateway.chat_async(item)
        if body.stream:
            return StreamingResponse(whole_reply_chunks(result, usage), media_type=SSE)
        return FastJSON(completion(result))

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackBody) -> JSONResponse:
        if body.reward is not None and not math.isfinite(body.reward):
            raise GatewayError(422, f"reward must be in [0, 1], got {body.reward!r}", "reward")
        kind, value, name = gateway.feedback_value(body.reward, body.thumbs, body.outcome)
        item = FeedbackInput(body.conversation_id, kind, value, name, body.feedback_id)
        return FastJSON(await gateway.feedback_async(item))

    @app.get("/v1/arms")
    async def arms() -> JSONResponse:
        return JSONResponse({"object": "list", "data": await run_in_threadpool(gateway.arms)})

    @app.get("/dashboard")
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(await run_in_threadpool(render_dashboard, gateway))

    @app.get("/healthz")
    async def healthz() -> dict:
        # In-memory state: after a restart it must equal the database's fold (tests check it).
        return {"ok": True, "arms": len(gateway.portfolio.arms), "feedback": gateway.portfolio.feedback_total}

    guarded = Guard(app, cfg.max_body_bytes, cfg.api_keys_env, cfg.protect_reads)
    guarded.gateway = gateway  # type: ignore[attr-defined]
    return guarded  # type: ignore[return-value]
