"""`OpenAITarget` against a real OpenAI-compatible server (`transformers serve`, see conftest.py)."""

from __future__ import annotations

import pytest

from rlprompt.errors import TargetError, UserError
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.cache import CachedTarget, CallCounter
from rlprompt.targets.openai_api import OpenAITarget

API_KEY_ENV = "RLPROMPT_TEST_API_KEY"  # set to a sentinel by the openai_server fixture
PARAMS = GenerationParams(max_new_tokens=24)
CONVERSATIONS = [
    [
        {"role": "system", "content": "You are a friendly car salesperson. Keep answers short."},
        {"role": "user", "content": "Hi, I need a reliable car for my commute."},
    ],
    [{"role": "user", "content": "What is a hybrid car?"}],
]


def _target(openai_server, **kwargs) -> OpenAITarget:
    base_url, model = openai_server
    return OpenAITarget(
        model=model, base_url=base_url, api_key_env=API_KEY_ENV, timeout_s=180, **kwargs
    )  # generous: a loaded 2-core CI box


@pytest.mark.slow
def test_openai_target_answers_through_a_real_server(openai_server):
    target = _target(openai_server, max_retries=1, backoff_s=0.1)
    replies = target.generate(CONVERSATIONS, PARAMS)
    assert len(replies) == 2
    for reply in replies:
        assert reply.text and reply.text == reply.text.strip()
        assert reply.prompt_tokens > 0
        assert 0 < reply.completion_tokens <= PARAMS.max_new_tokens
    assert target.retry_counter.retries == 0
    assert target.target_id == f"openai:{openai_server[0]}:{openai_server[1]}"


@pytest.mark.slow
def test_server_greedy_reply_matches_the_local_hf_target(openai_server, smollm2):
    """Same weights, same chat template, greedy: the API and the local target agree."""
    [remote] = _target(openai_server).generate(CONVERSATIONS[:1], PARAMS)
    [local] = smollm2.generate(CONVERSATIONS[:1], PARAMS)
    assert remote.text == local.text
    assert remote.completion_tokens == local.completion_tokens


@pytest.mark.slow
def test_openai_target_is_cached(openai_server, tmp_cache):
    counter = CallCounter()
    target = CachedTarget(_target(openai_server), tmp_cache, counter)
    [first] = target.generate(CONVERSATIONS[1:], PARAMS)
    [again] = target.generate(CONVERSATIONS[1:], PARAMS)
    assert (counter.calls, counter.cache_hits) == (1, 1)
    assert again.cached and again.text == first.text


@pytest.mark.slow
def test_wrong_model_name_fails_without_retrying(openai_server, tmp_cache):
    """The server is pinned to its folder and answers 400 for other names: a 4xx is not retried."""
    base_url, _ = openai_server
    counter = CallCounter()
    inner = OpenAITarget(
        model="not-the-served-model",
        base_url=base_url,
        api_key_env=API_KEY_ENV,
        max_retries=3,
        backoff_s=0.01,
        retry_counter=counter,
    )
    target = CachedTarget(inner, tmp_cache, counter)
    with pytest.raises(TargetError, match="BadRequestError"):
        target.generate(CONVERSATIONS[1:], PARAMS)
    assert counter.retries == 0
    assert counter.calls == 0  # refunded: nothing was delivered
    assert len(tmp_cache) == 0


def test_unreachable_server_is_retried_then_fails(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "sentinel")
    monkeypatch.setattr("rlprompt.targets.openai_api.time.sleep", lambda s: None)
    counter = CallCounter()
    target = OpenAITarget(
        model="m",
        base_url="http://127.0.0.1:9/v1",
        api_key_env=API_KEY_ENV,
        timeout_s=2,
        max_retries=2,
        retry_counter=counter,
    )
    with pytest.raises(TargetError, match="APIConnectionError"):
        CachedTarget(target, None, counter).generate(CONVERSATIONS[1:], PARAMS)
    assert counter.retries == 2
    assert counter.calls == 0


def test_missing_api_key_and_base_url_are_user_errors(monkeypatch):
    monkeypatch.delenv("RLPROMPT_TEST_UNSET_KEY", raising=False)
    with pytest.raises(UserError, match="RLPROMPT_TEST_UNSET_KEY"):
        OpenAITarget(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="RLPROMPT_TEST_UNSET_KEY")
    monkeypatch.setenv(API_KEY_ENV, "sentinel")
    with pytest.raises(UserError, match="base_url"):
        OpenAITarget(model="m", base_url="", api_key_env=API_KEY_ENV)
