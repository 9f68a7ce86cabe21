"""The gateway's async upstream path (rlprompt/serve/upstream.py) with real servers on loopback:
every fault class of tests/fault_server.py, live SSE relay (stripped like a whole reply), a stream
that dies midway (nothing charged), the grouped feedback write, and `serve --help`. No models."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import httpx2 as httpx
import openai
import pytest
import sqlalchemy as sa
from fault_server import FaultServer
from serve_support import ThreadServer, serve_run
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

from rlprompt.serve import store
from rlprompt.serve.app import create_app
from rlprompt.serve.events import FeedbackRow, record_chats, record_feedback
from rlprompt.serve.gateway import Gateway
from rlprompt.targets.cache import CachedTarget
from rlprompt.targets.openai_api import OpenAITarget
from rlprompt.task import load_task

TASK = load_task("car_sales")
HELLO = [{"role": "user", "content": "Hi, I need a car."}]
SECRET = "sk-upstream-7d2e"


def gateway_for(tmp_path, base_url: str, max_retries: int) -> Gateway:
    run = serve_run(f"sqlite:///{tmp_path / 'g.sqlite'}", "serve.retry_after_s=3")
    inner = OpenAITarget(
        "m",
        base_url,
        api_key_env="RLPROMPT_TEST_UPSTREAM_KEY",
        timeout_s=1,
        max_retries=max_retries,
        backoff_s=0.01,
    )
    gateway = Gateway(run, TASK, CachedTarget(inner, None))
    assert gateway.upstream is not None  # the async path, not the thread
    return gateway


def count(db, sql: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchone()[0]


@pytest.mark.parametrize(
    "script,retries,status",
    [
        (["drop", "truncated", "500", "malformed", "not_a_completion", "ok"], 5, 200),
        (["timeout"], 0, 503),
        (["429"], 0, 502),
        (["null_content"], 0, 502),
        (["401", "ok"], 3, 502),  # not retryable: fails at once
        (["echo_key"], 0, 502),
    ],
)
def test_every_upstream_fault_is_retried_or_mapped_and_only_success_is_charged(
    tmp_path, monkeypatch, script, retries, status
):
    monkeypatch.setenv("RLPROMPT_TEST_UPSTREAM_KEY", SECRET)
    with FaultServer(script, sleep_s=3) as upstream:
        gateway = gateway_for(tmp_path, upstream.base_url, retries)
        with ThreadServer(create_app(gateway)) as server:
            response = httpx.post(
                f"{server.url}/v1/chat/completions", json={"model": "m", "messages": HELLO}, timeout=30
            )
            assert response.status_code == status, response.text
            assert SECRET not in response.text
            if status != 200:
                assert response.headers["retry-after"] == "3"
        gateway.close()
        sent = upstream.count()
    assert sent == (len(script) if status == 200 else 1)
    assert gateway.target.inner.retry_counter.retries == sent - 1
    assert gateway.target.counter.calls == (status == 200)
    assert count(tmp_path / "g.sqlite", "SELECT count(*) FROM conversations") == (status == 200)


def sse_upstream(pieces: list[str], fail: bool):
    async def chat(request):
        body = await request.json()
        assert body["stream"] is True

        async def events():
            for piece in pieces:
                chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0.01)
            if fail:
                raise RuntimeError("the upstream dies mid-stream")
            yield f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': 9, 'completion_tokens': 4}})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_streaming_is_relayed_live_and_charged_only_when_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPROMPT_TEST_UPSTREAM_KEY", SECRET)
    pieces = ["\n ", " Hello", " there", ",", "  ", " friend", "  \n"]
    with ThreadServer(sse_upstream(pieces, fail=False)) as upstream:
        gateway = gateway_for(tmp_path, f"{upstream.url}/v1", 0)
        with ThreadServer(create_app(gateway)) as server:
            api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
            stream = api.chat.completions.create(
                model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}
            )
            chunks = list(stream)
        gateway.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(pieces).strip() == "Hello there,   friend"
    assert chunks[-1].usage.completion_tokens == 4
    with sqlite3.connect(tmp_path / "g.sqlite") as conn:
        assert conn.execute("SELECT reply, stream, completion_tokens FROM turns").fetchall() == [(text, 1, 4)]

    with ThreadServer(sse_upstream(["Hello", " there"], fail=True)) as upstream:
        gateway = gateway_for(tmp_path, f"{upstream.url}/v1", 0)
        with ThreadServer(create_app(gateway)) as server:
            api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0)
            with pytest.raises(openai.APIError, match="mid-stream"):
                list(api.chat.completions.create(model="m", messages=HELLO, stream=True))
        gateway.close()
    assert gateway.target.counter.calls == 0
    assert count(tmp_path / "g.sqlite", "SELECT count(*) FROM conversations") == 1  # the first run's only


def test_grouped_feedback_answers_each_event_as_one_at_a_time_would(tmp_path):
    engine = store.make_engine(f"sqlite:///{tmp_path / 'f.sqlite'}")
    store.migrate(engine)
    with engine.begin() as conn:
        conn.execute(
            store.arms.insert().values(
                key="k",
                text="t",
                source="s",
                origin="manual",
                prior_alpha=1.0,
                prior_beta=1.0,
                created_at=0.0,
            )
        )
        conversation = {"id": "c1", "arm_id": 1, "context": "*|*|*", "model": "m", "created_at": 0.0}
        turn = {"conversation_id": "c1", "messages": "[]", "reply": "r", "prompt_tokens": 1}
        turn |= {"completion_tokens": 1, "target_ms": 1.0, "stream": False, "created_at": 0.0}
        record_chats(conn, [{"conversation": conversation, "turn": turn}])
        first = record_feedback(conn, [FeedbackRow("a", "c1", "reward", None, 5)])
        rows = [
            FeedbackRow("b", "c1", "reward", None, 7),
            FeedbackRow("a", "c1", "reward", None, 9),  # stored earlier
            FeedbackRow("x", "nope", "thumbs", "up", 1),  # unknown conversation
            FeedbackRow("b", "c1", "reward", None, 8),  # repeated inside the batch
            FeedbackRow("c", "c1", "outcome", "purchase", 3),
        ]
        results = record_feedback(conn, rows)
        stored = conn.execute(sa.text("SELECT feedback_id, seq, value_nano FROM feedback ORDER BY seq")).all()
    engine.dispose()
    assert first == [{"arm_id": 1, "context": "*|*|*", "seq": 1}]
    assert [r.get("error") for r in results] == [None, 409, 404, 409, None]
    assert results[0]["seq"] == 2 and results[4]["seq"] == 3
    assert results[1]["seq"] == 1 and results[3]["seq"] == 2  # a repeat names the stored event
    assert stored == [("a", 1, 5), ("b", 2, 7), ("c", 3, 3)]


def test_serve_help_stars_the_bandit_it_runs():
    from rlprompt.commands.serve import serve_help

    text = serve_help("rlprompt serve", ["--help"])
    line = next(x for x in text.splitlines() if x.strip().startswith("optimizer "))
    assert "bandit*" in line and "ppo*" not in line
