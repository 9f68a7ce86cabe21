"""Local HF targets with real models, and the response cache in front of them."""

from __future__ import annotations

import pytest

from rlprompt.errors import TargetError
from rlprompt.targets.base import GenerationParams, PartialGenerationError, Reply
from rlprompt.targets.cache import BudgetExhausted, CachedTarget, CallCounter, ResponseCache
from rlprompt.targets.hf import CompletionFormat
from rlprompt.task import load_task

GREEDY_32 = GenerationParams(max_new_tokens=32)
SHORT = GenerationParams(max_new_tokens=8)


@pytest.fixture(scope="module")
def car_sales():
    return load_task("car_sales")


def _conversations_of_different_lengths(task) -> list[list[dict[str, str]]]:
    with_history = [s for s in task.scenarios if s.history]
    without = [s for s in task.scenarios if not s.history]
    return [
        [{"role": "user", "content": "Hi"}],
        without[0].messages(None),
        without[7].messages(task.base_instruction),
        with_history[0].messages(task.base_instruction),
        with_history[-1].messages(task.seed_prompts[1]),
    ]


# ---------------------------------------------------------------- SmolLM2 (chat format)


@pytest.mark.slow
def test_batched_greedy_equals_one_by_one(smollm2, car_sales):
    conversations = _conversations_of_different_lengths(car_sales)
    lengths = [len(smollm2.tokenizer(smollm2.render(c))["input_ids"]) for c in conversations]
    assert len(set(lengths)) == len(lengths), f"want different prompt lengths, got {lengths}"

    batched = smollm2.generate(conversations, GREEDY_32)
    one_by_one = [smollm2.generate([c], GREEDY_32)[0] for c in conversations]

    assert [r.text for r in batched] == [r.text for r in one_by_one]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in one_by_one]
    # prompt_tokens counts the real tokens, not the left padding of the batch
    assert [r.prompt_tokens for r in batched] == lengths
    assert all(r.text for r in batched)
    assert all(0 < r.completion_tokens <= GREEDY_32.max_new_tokens for r in batched)


@pytest.mark.slow
def test_different_system_prompts_give_different_replies(smollm2, car_sales):
    scenario = car_sales.scenarios[0]
    prompts = [
        "You are a pirate. Answer every message in pirate speak, with 'Arr' and 'matey'.",
        "You are a formal assistant at a bank. Reply in one short formal sentence about savings accounts.",
    ]
    replies = smollm2.generate([scenario.messages(p) for p in prompts], GenerationParams(max_new_tokens=16))
    assert all(r.text for r in replies)
    assert replies[0].text != replies[1].text


@pytest.mark.slow
def test_chat_render_uses_the_chat_template(smollm2):
    text = smollm2.render([{"role": "system", "content": "SYS"}, {"role": "user", "content": "Hello"}])
    assert smollm2.format == "chat"
    assert "SYS" in text and "Hello" in text
    assert text.rstrip().endswith("assistant")  # generation prompt added


@pytest.mark.slow
def test_malformed_conversation_is_rejected_before_generation(smollm2):
    with pytest.raises(ValueError, match="message 0"):
        smollm2.generate([[{"role": "customer", "content": "hi"}]], SHORT)
    with pytest.raises(ValueError, match="at least one message"):
        smollm2.generate([[]], SHORT)


# ---------------------------------------------------------------- Gemma-3-270M (completion format)


def test_completion_format_renders_the_plain_transcript():
    conversation = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "I need a car."},
    ]
    expected = "Be kind.\n\nCustomer: Hi there.\nSalesperson: Hello! How can I help?\nCustomer: I need a car.\nSalesperson:"
    assert CompletionFormat().render(conversation) == expected
    assert CompletionFormat().render(conversation[1:]) == expected.removeprefix("Be kind.\n\n")
    assert CompletionFormat().clean(" Sure thing.\nCustomer: ok\nSalesperson: more") == "Sure thing."


@pytest.mark.slow
def test_gemma_answers_in_completion_format(gemma3, car_sales):
    assert gemma3.format == "completion"
    assert gemma3.target_id.endswith(":completion")
    conversation = car_sales.scenarios[0].messages(car_sales.base_instruction)
    assert gemma3.render(conversation) == CompletionFormat().render(conversation)

    params = GenerationParams(max_new_tokens=48)
    [reply] = gemma3.generate([conversation], params)

    assert reply.text.strip()
    assert "Customer:" not in reply.text and "Salesperson:" not in reply.text
    # It stopped at the next turn's label, not at the token limit.
    assert reply.completion_tokens < params.max_new_tokens


@pytest.mark.slow
def test_gemma_batched_completion_equals_one_by_one(gemma3, car_sales):
    """Per-row stop strings and left padding in the completion format."""
    conversations = [
        car_sales.scenarios[0].messages(car_sales.base_instruction),
        [{"role": "user", "content": "Hello, do you sell used cars?"}],
    ]
    params = GenerationParams(max_new_tokens=32)
    batched = gemma3.generate(conversations, params)
    one_by_one = [gemma3.generate([c], params)[0] for c in conversations]
    assert [r.text for r in batched] == [r.text for r in one_by_one]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in one_by_one]
    assert all("Customer:" not in r.text for r in batched)


# ---------------------------------------------------------------- response cache with a real target


@pytest.mark.slow
def test_repeated_request_is_served_from_the_cache(smollm2, car_sales, tmp_cache):
    counter = CallCounter()
    target = CachedTarget(smollm2, tmp_cache, counter)
    conversation = car_sales.scenarios[3].messages(car_sales.base_instruction)

    [first] = target.generate([conversation], SHORT)
    assert (counter.calls, counter.cache_hits) == (1, 0)
    assert not first.cached
    assert counter.completion_tokens == first.completion_tokens

    [again] = target.generate([conversation], SHORT)
    assert (counter.calls, counter.cache_hits) == (1, 1)
    assert again.cached and again.text == first.text

    # Different generation params are a different key: a real call.
    target.generate([conversation], GenerationParams(max_new_tokens=4))
    assert (counter.calls, counter.cache_hits) == (2, 1)

    # Persistence: a fresh cache object over the same sqlite file, fresh counter.
    fresh_counter = CallCounter()
    fresh = CachedTarget(smollm2, ResponseCache(tmp_cache.path), fresh_counter)
    [persisted] = fresh.generate([conversation], SHORT)
    assert (fresh_counter.calls, fresh_counter.cache_hits) == (0, 1)
    assert persisted.cached and persisted.text == first.text
    assert persisted.completion_tokens == first.completion_tokens


class _Scripted:
    """A fake inner target that records what it was asked (cache logic without a model)."""

    target_id = "scripted"

    def __init__(self, fail_index: int | None = None) -> None:
        self.batches: list[int] = []
        self.fail_index = fail_index

    def generate(self, conversations, params):
        self.batches.append(len(conversations))
        replies = {
            i: Reply(text=c[-1]["content"].upper(), prompt_tokens=1, completion_tokens=2)
            for i, c in enumerate(conversations)
        }
        if self.fail_index is not None:
            del replies[self.fail_index]
            raise PartialGenerationError("boom", completed=replies)
        return [replies[i] for i in range(len(conversations))]


def _conv(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_duplicates_in_one_batch_are_generated_once(tmp_cache):
    inner = _Scripted()
    counter = CallCounter()
    target = CachedTarget(inner, tmp_cache, counter)
    replies = target.generate([_conv("a"), _conv("b"), _conv("a")], SHORT)
    assert [r.text for r in replies] == ["A", "B", "A"]
    assert inner.batches == [2]
    assert (counter.calls, counter.cache_hits) == (2, 1)
    assert len(tmp_cache) == 2


def test_budget_is_checked_before_any_call(tmp_cache):
    inner = _Scripted()
    counter = CallCounter(budget=2)
    target = CachedTarget(inner, tmp_cache, counter)
    target.generate([_conv("a"), _conv("b")], SHORT)
    target.generate([_conv("a")], SHORT)  # cached: free
    with pytest.raises(BudgetExhausted):
        target.generate([_conv("c")], SHORT)
    assert inner.batches == [2]
    assert (counter.calls, counter.remaining) == (2, 0)


def test_partial_failure_caches_and_counts_the_completed_replies(tmp_cache):
    counter = CallCounter()
    target = CachedTarget(_Scripted(fail_index=1), tmp_cache, counter)
    with pytest.raises(TargetError, match="1 of 3 calls failed"):
        target.generate([_conv("a"), _conv("b"), _conv("c")], SHORT)
    assert counter.calls == 2  # the failed call is refunded
    healthy = _Scripted()
    retry = CachedTarget(healthy, tmp_cache, counter)
    assert [r.text for r in retry.generate([_conv("a"), _conv("b"), _conv("c")], SHORT)] == ["A", "B", "C"]
    assert healthy.batches == [1]  # only the failed one is generated again
    assert counter.calls == 3


def test_default_response_cache_is_a_tmp_file_in_tests(_default_response_cache_in_tmp):
    from rlprompt.build import build_cache
    from rlprompt.config import CacheConfig
    from rlprompt.models import cache_root

    cache = build_cache(CacheConfig())
    assert cache is not None
    assert cache.path == _default_response_cache_in_tmp / "responses.sqlite"
    assert cache_root() not in cache.path.parents  # models stay in the real cache root


def test_corrupt_cache_file_is_set_aside(tmp_path):
    path = tmp_path / "responses.sqlite"
    path.write_bytes(b"this is not a sqlite database" * 100)
    cache = ResponseCache(path)
    assert len(cache) == 0
    assert list(tmp_path.glob("responses.sqlite.corrupt-*"))
