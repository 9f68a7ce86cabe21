"""The gateway over HTTP with real parts: SmolLM2 (local HF target), a real `transformers serve`
upstream, the official `openai` client (streaming and not), SQLite files, and the 4xx/5xx paths.
"""

from __future__ import annotations

import json
import logging
import sqlite3

import httpx2 as httpx
import openai
import pytest
from fault_server import FaultServer
from serve_support import ThreadServer, serve_run

from rlprompt.serve.app import create_app
from rlprompt.serve.gateway import Gateway
from rlprompt.targets.cache import CachedTarget
from rlprompt.targets.openai_api import OpenAITarget
from rlprompt.task import load_task

TASK = load_task("car_sales")
CONTEXT = {"persona": "Newbie", "stage": "Introduction", "urgency": "low"}
HELLO = [{"role": "user", "content": "Hi, I'm looking for my first car. Where do I start?"}]


def rows(db, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def local_gateway(tmp_path, smollm2, tmp_cache):
    """A gateway in front of the session's SmolLM2 target, on its own SQLite file."""
    db = tmp_path / "serve.sqlite"
    run = serve_run(f"sqlite:///{db}", "target.max_new_tokens=12")
    gateway = Gateway(run, TASK, CachedTarget(smollm2, tmp_cache))
    with ThreadServer(create_app(gateway)) as server:
        yield gateway, server, db
    gateway.close()


def client(server: ThreadServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


@pytest.mark.slow
def test_official_client_against_local_smollm2_streaming_and_not(local_gateway):
    gateway, server, db = local_gateway
    api = client(server)
    first = api.chat.completions.create(model="anything-at-all", messages=HELLO, metadata=CONTEXT)
    assert first.id.startswith("conv-") and first.choices[0].message.content
    assert first.model == "anything-at-all"
    assert 0 < first.usage.completion_tokens <= 12 and first.usage.prompt_tokens > 0
    arm = first.system_fingerprint
    history = [*HELLO, {"role": "assistant", "content": first.choices[0].message.content}]
    history.append({"role": "user", "content": "Something small and cheap to run, please."})
    follow = {"conversation_id": first.id}
    second = api.chat.completions.create(model="m", messages=history, metadata=follow)
    assert second.id == first.id and second.system_fingerprint == arm  # later turns keep the arm
    stream = api.chat.completions.create(
        model="m", messages=history, metadata=follow, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == second.choices[0].message.content  # greedy: the same arm gives the same reply
    assert {c.id for c in chunks} == {first.id}
    assert chunks[-1].usage.completion_tokens == second.usage.completion_tokens
    # The arm is the system message the target read; everything is in the database.
    arm_id = int(arm.removeprefix("arm-"))
    [(messages, reply, tokens, target_ms)] = rows(
        db, "SELECT messages, reply, completion_tokens, target_ms FROM turns ORDER BY id LIMIT 1"
    )
    assert json.loads(messages)[0] == {"role": "system", "content": gateway.portfolio.arms[arm_id].text}
    assert reply == first.choices[0].message.content and tokens == first.usage.completion_tokens
    assert target_ms > 0
    assert rows(db, "SELECT arm_id, context FROM conversations") == [(arm_id, "Newbie|Introduction|low")]
    assert rows(db, "SELECT count(*), sum(stream) FROM turns") == [(3, 1)]


@pytest.mark.slow
def test_bad_input_gets_a_clear_4xx_and_nothing_is_stored_twice(local_gateway):
    _, server, db = local_gateway
    http = httpx.Client(base_url=server.url, timeout=120)
    ok = http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO}).json()
    cid = ok["id"]
    good = {"conversation_id": cid, "feedback_id": "fb-1", "reward": 0.75}
    assert http.post("/v1/feedback", json=good).status_code == 200
    cases = [
        ("/v1/feedback", {**good}, 409, "feedback_id"),  # the same feedback id again
        ("/v1/feedback", {**good, "feedback_id": "fb-2", "reward": 1.5}, 422, "reward"),
        ("/v1/feedback", {**good, "feedback_id": "fb-3", "reward": -0.1}, 422, "reward"),
        ("/v1/feedback", {"conversation_id": "conv-nope", "thumbs": "up"}, 404, "conversation_id"),
        ("/v1/feedback", {"conversation_id": cid, "thumbs": "up", "reward": 1.0}, 422, "reward"),
        ("/v1/feedback", {"conversation_id": cid, "outcome": "won_the_lottery"}, 422, "outcome"),
        ("/v1/feedback", {"conversation_id": cid, "thumbs": "sideways"}, 422, "thumbs"),
        ("/v1/feedback", {"conversation_id": cid, "reward": 1.0, "rating": 5}, 422, "rating"),
        ("/v1/feedback", {"reward": 1.0}, 422, "conversation_id"),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": HELLO, "metadata": {"conversation_id": "x"}},
            404,
            None,
        ),
        (
            "/v1/chat/completions",
            {"model": "m", "messages": HELLO, "metadata": {"persona": "Alien"}},
            422,
            None,
        ),
        ("/v1/chat/completions", {"model": "m", "messages": []}, 422, "messages"),
        ("/v1/chat/completions", {"model": "m", "messages": HELLO, "max_tokens": 0}, 422, "max_tokens"),
    ]
    for path, body, status, field in cases:
        response = http.post(path, json=body)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["message"] and error["code"] == status
        if field:
            assert field in error["message"], (field, error)
    malformed = http.post(
        "/v1/feedback", content=b'{"conversation_id": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]["message"]
    huge = http.post("/v1/feedback", json={**good, "feedback_id": "x" * 300_000})
    assert huge.status_code == 413 and "max_body_bytes" in huge.json()["error"]["message"]
    assert (
        "Alien"
        in http.post(
            "/v1/chat/completions", json={"model": "m", "messages": HELLO, "metadata": {"persona": "Alien"}}
        ).json()["error"]["message"]
    )
    # Nothing but the one good conversation and the one good feedback reached the database.
    assert rows(db, "SELECT count(*) FROM conversations") == [(1,)]
    assert rows(db, "SELECT feedback_id, value_nano FROM feedback") == [("fb-1", 750_000_000)]
    arms = {a["id"]: a for a in http.get("/v1/arms").json()["data"]}
    assert sum(a["feedback"] for a in arms.values()) == 1
    assert arms[ok["rlprompt"]["arm_id"]]["alpha"] == 1.75 and arms[ok["rlprompt"]["arm_id"]]["beta"] == 1.25


@pytest.mark.slow
def test_api_keys_from_the_environment_guard_feedback_and_are_never_logged(
    tmp_path, smollm2, tmp_cache, monkeypatch, caplog
):
    secret = "sk-serve-test-3c1f9a"
    monkeypatch.setenv("RLPROMPT_SERVE_API_KEYS", f"other-key, {secret}")
    caplog.set_level(logging.DEBUG)
    run = serve_run(f"sqlite:///{tmp_path / 's.sqlite'}", "target.max_new_tokens=4")
    gateway = Gateway(run, TASK, CachedTarget(smollm2, tmp_cache))
    with ThreadServer(create_app(gateway)) as server:
        with pytest.raises(openai.AuthenticationError, match="RLPROMPT_SERVE_API_KEYS"):
            client(server, "wrong").chat.completions.create(model="m", messages=HELLO)
        reply = client(server, secret).chat.completions.create(model="m", messages=HELLO)
        http = httpx.Client(base_url=server.url)
        body = {"conversation_id": reply.id, "thumbs": "up"}
        assert http.post("/v1/feedback", json=body).status_code == 401
        assert (
            http.post("/v1/feedback", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        assert (
            http.post("/v1/feedback", json=body, headers={"Authorization": f"Bearer {secret}"}).status_code
            == 200
        )
        assert http.get("/v1/arms").status_code == 200  # reads are open unless serve.protect_reads
    gateway.close()
    assert secret not in caplog.text
    assert rows(tmp_path / "s.sqlite", "SELECT count(*) FROM feedback") == [(1,)]


def _upstream_gateway(tmp_path, base_url: str) -> Gateway:
    run = serve_run(f"sqlite:///{tmp_path / 'u.sqlite'}", "serve.retry_after_s=7")
    inner = OpenAITarget("m", base_url, api_key_env="RLPROMPT_TEST_UPSTREAM_KEY", timeout_s=2, max_retries=0)
    return Gateway(run, TASK, CachedTarget(inner, None))


@pytest.mark.parametrize("fault,status", [("down", 503), ("500", 502)])
def test_upstream_failure_answers_5xx_with_retry_after_and_charges_no_arm(
    tmp_path, monkeypatch, fault, status
):
    monkeypatch.setenv("RLPROMPT_TEST_UPSTREAM_KEY", "k")
    with FaultServer([], default="500" if fault == "500" else "ok") as upstream:
        base_url = upstream.base_url if fault == "500" else "http://127.0.0.1:9/v1"
        gateway = _upstream_gateway(tmp_path, base_url)
        with ThreadServer(create_app(gateway)) as server:
            response = httpx.post(
                f"{server.url}/v1/chat/completions", json={"model": "m", "messages": HELLO}, timeout=30
            )
            assert response.status_code == status, response.text
            assert response.headers["retry-after"] == "7"
            assert "target" in response.json()["error"]["message"]
            with pytest.raises(openai.APIStatusError) as caught:
                client(server).chat.completions.create(model="m", messages=HELLO)
            assert caught.value.status_code == status
            arms = httpx.get(f"{server.url}/v1/arms").json()["data"]
        gateway.close()
    assert all(a["conversations"] == 0 and a["alpha"] == 1.0 and a["beta"] == 1.0 for a in arms)
    assert rows(tmp_path / "u.sqlite", "SELECT count(*) FROM conversations") == [(0,)]


@pytest.mark.slow
def test_gateway_in_front_of_a_real_transformers_serve_upstream(openai_server, tmp_path, monkeypatch):
    base_url, model = openai_server
    run = serve_run(
        f"sqlite:///{tmp_path / 'up.sqlite'}",
        "target=openai",
        f"target.base_url={base_url}",
        f"target.model={model}",
        "target.api_key_env=RLPROMPT_TEST_API_KEY",
        "target.max_new_tokens=16",
    )
    from rlprompt.build import build_target

    gateway = Gateway(run, TASK, build_target(run.target, None))
    with ThreadServer(create_app(gateway)) as server:
        via = client(server).chat.completions.create(model="whatever", messages=HELLO, metadata=CONTEXT)
        arm_text = gateway.portfolio.arms[int(via.system_fingerprint.removeprefix("arm-"))].text
        direct = openai.OpenAI(base_url=base_url, api_key="k").chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": arm_text}, *HELLO],
            max_tokens=16,
            temperature=0.0,
        )
        streamed = client(server).chat.completions.create(
            model="w", messages=HELLO, metadata={"conversation_id": via.id}, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    gateway.close()
    assert via.choices[0].message.content == direct.choices[0].message.content.strip()
    assert text == via.choices[0].message.content
    assert rows(tmp_path / "up.sqlite", "SELECT count(*) FROM turns") == [(2,)]
