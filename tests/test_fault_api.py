"""API faults: `OpenAITarget` behind `CachedTarget`, against a server that fails on purpose.

tests/fault_server.py scripts one fault per request (timeouts, 429 + Retry-After, 5xx, malformed
JSON, empty choices, truncated bodies, dropped connections, ...). Whatever the faults, a run
either gets exactly the replies a healthy server gives, counting each logical call once and each
retry on the retry counter, or fails with one `TargetError` that keeps the paid-for replies.
"""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from fault_server import FaultServer, reply_text

from rlprompt.errors import TargetError
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.cache import BudgetExhausted, CachedTarget, CallCounter, ResponseCache
from rlprompt.targets.openai_api import OpenAITarget

KEY_ENV = "RLPROMPT_FAULT_TEST_KEY"
PARAMS = GenerationParams(max_new_tokens=16)
TRANSIENT = (
    "timeout",
    "429",
    "500",
    "502",
    "503",
    "malformed",
    "not_a_completion",
    "empty_choices",
    "null_content",
    "truncated",
    "drop",
)


def conversations(n: int, tag: str = "") -> list[list[dict]]:
    return [
        [
            {"role": "system", "content": f"You sell cars. {tag}"},
            {"role": "user", "content": f"Question number {i}: which car is reliable?"},
        ]
        for i in range(n)
    ]


@pytest.fixture
def key(monkeypatch) -> str:
    value = f"sk-sentinel-{uuid.uuid4()}"
    monkeypatch.setenv(KEY_ENV, value)
    return value


def cached_target(
    server: FaultServer, cache: ResponseCache | None, budget: int | None = None, **kwargs
) -> CachedTarget:
    counter = CallCounter(budget=budget)
    options = dict(timeout_s=0.5, max_retries=3, backoff_s=0.001, max_concurrency=1)
    options.update(kwargs)
    inner = OpenAITarget(
        model="fault-model", base_url=server.base_url, api_key_env=KEY_ENV, retry_counter=counter, **options
    )
    return CachedTarget(inner, cache, counter)


@pytest.mark.parametrize("fault", TRANSIENT)
def test_a_transient_fault_is_retried_and_the_replies_are_exact(fault, key, tmp_cache):
    batch = conversations(3, fault)
    with FaultServer([fault, fault], sleep_s=1.5) as server:
        target = cached_target(server, tmp_cache)
        replies = target.generate(batch, PARAMS)
        assert [r.text for r in replies] == [reply_text(c) for c in batch]
        assert target.counter.retries == 2  # both faults retried, counted
        assert target.counter.calls == 3  # each logical call once, retries included
        assert server.count() == 5 and server.count(fault) == 2
    assert len(tmp_cache) == 3


def test_every_fault_at_once_under_concurrency(key, tmp_cache):
    script = [*TRANSIENT, "429", "drop", "truncated", "500", "malformed", "timeout"]
    batch = conversations(8, "mixed")
    with FaultServer(script, sleep_s=1.5) as server:
        target = cached_target(server, tmp_cache, max_concurrency=4, max_retries=len(script))
        replies = target.generate(batch, PARAMS)
        assert [r.text for r in replies] == [reply_text(c) for c in batch]
        assert target.counter.retries == len(script)
        assert target.counter.calls == 8
        assert server.count() == 8 + len(script)
        again = target.generate(batch, PARAMS)  # all from the cache: the server sees nothing new
        assert all(r.cached for r in again) and [r.text for r in again] == [r.text for r in replies]
        assert server.count() == 8 + len(script)
        assert (target.counter.calls, target.counter.cache_hits) == (8, 8)


def test_retry_after_is_honoured(key):
    with FaultServer(["429"], retry_after="0.6") as server:
        target = cached_target(server, None)
        started = time.perf_counter()
        target.generate(conversations(1), PARAMS)
        assert time.perf_counter() - started >= 0.6  # the jittered backoff alone is ~1 ms
        assert target.counter.retries == 1


def test_a_huge_retry_after_is_capped(key):
    with FaultServer(["429", "503"], retry_after="3600") as server:
        target = cached_target(server, None, max_backoff_s=0.2)
        started = time.perf_counter()
        [reply] = target.generate(conversations(1), PARAMS)
        assert time.perf_counter() - started < 10
        assert reply.text == reply_text(conversations(1)[0])
        assert target.counter.retries == 2


def test_an_auth_error_fails_at_once_without_retries(key, tmp_cache):
    with FaultServer([], default="401") as server:
        target = cached_target(server, tmp_cache, max_retries=5)
        with pytest.raises(TargetError, match="AuthenticationError"):
            target.generate(conversations(2), PARAMS)
        assert target.counter.retries == 0
        assert server.count() == 2
        assert target.counter.calls == 0  # refunded: nothing was delivered
    assert len(tmp_cache) == 0


def test_a_persistent_failure_raises_and_keeps_the_completed_replies(key, tmp_cache):
    batch = conversations(4, "persistent")
    with FaultServer(["ok", "ok"], default="503") as server:
        target = cached_target(server, tmp_cache, max_retries=2)
        with pytest.raises(TargetError) as info:
            target.generate(batch, PARAMS)
        message = str(info.value)
        assert "2 of 4 calls failed after retries" in message
        assert "InternalServerError" in message and "503" in message
        assert "the 2 completed replies are cached" in message
        assert len(tmp_cache) == 2  # paid for, kept
        assert target.counter.calls == 2  # the two failures are refunded
        assert target.counter.retries == 2 * 2
        failed_requests = server.count()
        assert failed_requests == 2 + 2 * 3

        server.set_script([], default="ok")  # the server recovers: only the 2 missing are asked for
        replies = target.generate(batch, PARAMS)
        assert [r.text for r in replies] == [reply_text(c) for c in batch]
        assert server.count() == failed_requests + 2
        assert (target.counter.calls, target.counter.cache_hits) == (4, 2)


def test_the_budget_counts_logical_calls_not_retries(key, tmp_cache):
    with FaultServer(["503", "drop", "429", "timeout"], sleep_s=1.5) as server:
        target = cached_target(server, tmp_cache, budget=3, max_retries=5)
        target.generate(conversations(3, "budget"), PARAMS)  # 3 calls + 4 retries: within budget 3
        assert (target.counter.calls, target.counter.retries) == (3, 4)
        seen = server.count()
        with pytest.raises(BudgetExhausted):
            target.generate(conversations(1, "over budget"), PARAMS)
        assert server.count() == seen  # refused before any request
        assert target.counter.calls == 3


def test_the_key_never_reaches_errors_or_logs(key, tmp_cache, caplog):
    """A careless server echoes the key in its error; the client logs at DEBUG. Neither leaks it."""
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    with FaultServer(["503", "429", "ok"], default="echo_key") as server:
        target = cached_target(server, tmp_cache, max_concurrency=1)
        with pytest.raises(TargetError) as info:
            target.generate(conversations(3, "secret"), PARAMS)
        assert server.requests[0]["authorization"] == f"Bearer {key}"  # the key was really sent
        assert server.count("echo_key") == 2
    message = str(info.value)
    assert "invalid api key: Bearer ***" in message  # the echoed key, scrubbed
    assert key not in message and key not in repr(info.value)
    chained = info.value.__cause__
    while chained is not None:
        assert key not in str(chained)
        chained = chained.__cause__
    assert "Sending HTTP Request" in caplog.text  # the client's DEBUG lines were captured ...
    assert "retrying" in caplog.text  # ... and so were the retries ...
    assert key not in caplog.text  # ... without the key


# ---------------------------------------------------------------------- the judge / customer scorers

YES_NO = {"Yes": 0.6, " no": 0.2, "maybe": 0.1}  # mass on the labels 0.8: P(Yes) = 0.75


def _judge_reward(server: FaultServer, modules: dict[str, float]):
    from rlprompt.config import RewardConfig
    from rlprompt.rewards.factory import reward_from_config
    from rlprompt.task import load_task

    endpoint = {"name": "openai", "base_url": server.base_url, "api_key_env": KEY_ENV, "timeout_s": 5.0}
    cfg = RewardConfig(modules=modules, options={m: {"endpoint": endpoint} for m in modules})
    task = load_task("car_sales")
    return reward_from_config(cfg, task, None), task


def test_the_choice_scorer_retries_through_429_and_5xx_and_counts_them(key):
    from rlprompt.rewards.base import Sample

    with FaultServer(["429", "500"], logprobs={"4": 0.5, "5": 0.3, "x": 0.1}) as server:
        setup, task = _judge_reward(server, {"judge": 1.0})
        scenario = task.split("val")[0]
        sample = Sample(
            scenario, [{"role": "user", "content": scenario.customer}, {"role": "assistant", "content": "Hi"}]
        )
        [score] = setup.reward.score([sample]).total.tolist()
        assert score == pytest.approx(((4 * 0.5 + 5 * 0.3) / 0.8 - 1) / 4, abs=1e-5)
        assert server.count() == 3 and server.count("429") == 1 and server.count("500") == 1
        body = server.requests[-1]["body"]
        assert (body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (True, 20, 1)
        judge = setup.counters["judge"]
        assert (judge.calls, judge.retries) == (1, 2)  # one logical call, two retries on the role's counter


def test_the_choice_scorer_never_shows_the_key_and_refuses_a_server_without_logprobs(key):
    from rlprompt.errors import UserError
    from rlprompt.rewards.llm import Choices, OpenAIChoiceScorer, choice_probs

    def scorer(server: FaultServer) -> CachedTarget:
        inner = OpenAIChoiceScorer(Choices.of(["Yes", "No"]), "fault-model", server.base_url, KEY_ENV, 5.0)
        return CachedTarget(inner, None, CallCounter(role="customer"))

    with FaultServer([], default="echo_key", logprobs=YES_NO) as server:
        with pytest.raises(Exception) as info:  # the type is checked below, after the key
            choice_probs(scorer(server), conversations(2, "secret"))
        assert server.requests[-1]["authorization"] == f"Bearer {key}"  # the key was really sent
        echoed = server.count("echo_key")
    error = info.value
    while error is not None:  # nowhere in the message or the chain
        assert key not in str(error) and key not in repr(error), f"key leaked: {error!r}"
        error = error.__cause__ or error.__context__
    assert echoed == 2  # both calls answered with the key echoed back, neither retried (a 401)
    assert isinstance(info.value, TargetError), repr(info.value)
    assert "invalid api key: Bearer ***" in str(info.value)

    with FaultServer(["ok"], logprobs=YES_NO) as server:  # healthy: P(Yes) = 0.6 / 0.8
        [(probs, mass)] = choice_probs(scorer(server), conversations(1, "healthy"))
        assert probs == pytest.approx([0.75, 0.25]) and mass == pytest.approx(0.8)
    with FaultServer([]) as server:  # no logprobs support: a user error at once, not retried
        with pytest.raises(UserError, match="returned no logprobs"):
            choice_probs(scorer(server), conversations(1, "no logprobs"))
        assert server.count() == 1
