"""One gateway: pick an arm, call the target, log everything, take feedback. No HTTP here (app.py).

Why this split: the logic is exercised by the HTTP tests, the traffic simulation and the
benchmark alike, and the FastAPI layer stays a thin translation of requests and errors.

A conversation is charged to an arm only when the target answered: the conversation row and its
turn are written in one transaction after the reply, so a target that is down (502/503) leaves
no trace on any posterior. Feedback is written through the group-commit writer; the in-memory
posterior moves after the commit, so what the bandit believes is always what is durable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import cached_property
from typing import Any, TypeVar

import sqlalchemy as sa

from rlprompt.config import RunConfig
from rlprompt.errors import TargetError, UserError
from rlprompt.prompt_set import split_context_key
from rlprompt.serve import store
from rlprompt.serve.events import record_chats
from rlprompt.serve.feedback import FeedbackMixin
from rlprompt.serve.portfolio import (
    Portfolio,
    arm_states,
    context_key,
    insert_arms,
    portfolio_arms,
    read_snapshot,
)
from rlprompt.serve.schema import ChatInput, ChatResult, FeedbackInput, GatewayError, Prepared
from rlprompt.serve.upstream import AsyncUpstream, Response, UpstreamError, dumps
from rlprompt.targets.base import GenerationParams, PartialGenerationError, Reply, Target
from rlprompt.targets.cache import CachedTarget
from rlprompt.targets.openai_api import OpenAIChat
from rlprompt.task import Scenario, Task

__all__ = [
    "ChatInput",
    "ChatResult",
    "FeedbackInput",
    "Gateway",
    "GatewayError",
]  # the API app.py and tests use
log = logging.getLogger(__name__)
T = TypeVar("T")
CONVERSATION_CACHE = 100_000  # (arm, context) of recent conversations kept in memory


class Gateway(FeedbackMixin):
    """State and logic of one serving process; several processes may share one database."""

    def __init__(
        self, run: RunConfig, task: Task, target: Target, reward: Any = None, llm: Any = None
    ) -> None:
        self.run, self.cfg, self.task, self.target = run, run.serve, task, target
        self._reward, self._llm = reward, llm
        self.engine = store.make_engine(self.cfg.database)
        store.migrate(self.engine)
        specs = portfolio_arms(self.cfg.portfolio, self.cfg.prompts, task)
        with self.engine.begin() as conn:
            insert_arms(conn, specs)
            conversations = conn.execute(sa.select(sa.func.count()).select_from(store.conversations)).scalar()
        # A restart draws a fresh stream: the seed and the conversations so far pick it.
        self.portfolio = Portfolio(self.cfg.contextual, self.cfg.context_strength, [run.seed, conversations])
        self.writer = store.Writer(self.engine)
        self.refresh()
        self.slots = threading.Semaphore(max(1, int(getattr(_inner(target), "max_concurrency", 1))))
        self.conversations: dict[str, tuple[int, str]] = {}
        self.conversations_lock = threading.Lock()
        # An OpenAI-compatible target without a response cache is called asynchronously on the
        # event loop (serve/upstream.py); anything else (a local model, a cache) in a thread.
        inner = _inner(target)
        self.upstream: AsyncUpstream | None = None
        if isinstance(target, CachedTarget) and target.cache is None and isinstance(inner, OpenAIChat):
            self.upstream = AsyncUpstream(inner, max(1, inner.max_concurrency))
        self.background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlprompt-auto-reward")
        self.stopping = threading.Event()
        self.refresher: threading.Thread | None = None
        if self.cfg.refresh_s > 0:
            self.refresher = threading.Thread(target=self._refresh_loop, name="rlprompt-refresh", daemon=True)
            self.refresher.start()
        from rlprompt.serve.evolution import Evolver

        self.evolver = Evolver(self)

    # ------------------------------------------------------------------ lazily built parts

    @cached_property
    def reward(self):
        """The reward modules (auto scores, offline screening of mutants), built on first use."""
        if self._reward is None:
            from rlprompt.build import build_cache
            from rlprompt.rewards.factory import reward_from_config

            self._reward = reward_from_config(self.run.reward, self.task, build_cache(self.run.cache))
        return self._reward

    @cached_property
    def bounds(self) -> tuple[float, float]:
        return self.reward.reward.bounds()

    def normalize(self, raw: float) -> float:
        low, high = self.bounds
        return min(1.0, max(0.0, (raw - low) / (high - low))) if high > low else 0.0

    @cached_property
    def llm(self):
        if self._llm is None:
            from rlprompt.build import build_cache
            from rlprompt.optimizers.llm import OptimizerLLM

            self._llm = OptimizerLLM(self.run, build_cache(self.run.cache))
        return self._llm

    # ------------------------------------------------------------------ state

    def refresh(self) -> None:
        """Fold the database into the in-memory posteriors (inside the writer: no event is lost)."""
        self.writer.call(read_snapshot, after=self.portfolio.load)

    def _refresh_loop(self) -> None:
        while not self.stopping.wait(self.cfg.refresh_s):
            try:
                self.refresh()
            except Exception:
                log.exception("refreshing posteriors from the database failed")

    def arms(self) -> list[dict]:
        with self.engine.connect() as conn:
            return arm_states(read_snapshot(conn))

    def close(self) -> None:
        self.stopping.set()
        self.evolver.wait()
        self.background.shutdown(wait=True)
        self.writer.stop()
        self.engine.dispose()

    # ------------------------------------------------------------------ chat

    def context_of(self, given: dict[str, str | None]) -> str:
        """Validate a request's persona / stage / urgency against the task; the context key."""
        valid = {
            "persona": list(self.task.persona),
            "stage": list(self.task.stage),
            "urgency": list(self.task.urgency),
        }
        for name, value in given.items():
            if value is not None and value not in valid[name]:
                raise GatewayError(
                    422,
                    f"metadata.{name}={value!r} is not a {name} of task '{self.task.name}'. "
                    f"Valid: {', '.join(valid[name])} (or leave it out)",
                    f"metadata.{name}",
                )
        return context_key(given.get("persona"), given.get("stage"), given.get("urgency"))

    def prepare(
        self, request: ChatInput, known: tuple[int, str] | None = None, looked_up: bool = False
    ) -> Prepared:
        """Arm, context and what the target reads; `known` is a continued conversation's
        (arm_id, context) when the caller `looked_up` it (from memory, or the database off the loop)."""
        if request.conversation_id:
            if not looked_up:
                known = self.lookup(request.conversation_id)
            if known is None:
                raise GatewayError(
                    404,
                    f"unknown metadata.conversation_id {request.conversation_id!r}: use the `id` of an "
                    "earlier response, or leave it out to start a new conversation",
                    "metadata.conversation_id",
                )
            conversation_id, (arm_id, context), new = request.conversation_id, known, False
        else:
            context = self.context_of(request.context)
            arm_id = self.portfolio.choose(context)
            conversation_id, new = f"conv-{uuid.uuid4().hex}", True
        messages = self.with_arm(self.portfolio.arms[arm_id].text, request.messages)
        params = GenerationParams(
            max_new_tokens=min(request.max_tokens or self.run.target.max_new_tokens, self.cfg.max_tokens),
            temperature=self.run.target.temperature if request.temperature is None else request.temperature,
            top_p=self.run.target.top_p if request.top_p is None else request.top_p,
            seed=self.run.seed if request.seed is None else request.seed,
        )
        return Prepared(request, conversation_id, arm_id, context, new, messages, params)

    def lookup(self, conversation_id: str) -> tuple[int, str] | None:
        """(arm_id, context) of a conversation: memory first, then the database (another replica's)."""
        hit = self.conversations.get(conversation_id)
        if hit is not None:
            return hit
        with self.engine.connect() as conn:
            c = store.conversations.c
            row = conn.execute(sa.select(c.arm_id, c.context).where(c.id == conversation_id)).first()
        if row is None:
            return None
        self.remember(conversation_id, (row.arm_id, row.context))
        if row.arm_id not in self.portfolio.arms:  # born on another replica since our last refresh
            self.refresh()
        return row.arm_id, row.context

    def remember(self, conversation_id: str, value: tuple[int, str]) -> None:
        with self.conversations_lock:
            self.conversations[conversation_id] = value
            if len(self.conversations) > CONVERSATION_CACHE:
                del self.conversations[next(iter(self.conversations))]

    def record(self, prep: Prepared, reply: Reply, target_ms: float, created: float) -> tuple[dict, Any]:
        """The writer payload for a conversation (new only) + turn, and its after-commit hook."""
        conversation = None
        if prep.new:
            conversation = {
                "id": prep.conversation_id,
                "arm_id": prep.arm_id,
                "context": prep.context,
                "model": prep.request.model,
                "created_at": created,
            }
        turn = {
            "conversation_id": prep.conversation_id,
            "messages": dumps(prep.messages),
            "reply": reply.text,
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": reply.completion_tokens,
            "target_ms": target_ms,
            "stream": prep.request.stream,
            "created_at": created,
        }

        def after(_: Any) -> None:
            self.remember(prep.conversation_id, (prep.arm_id, prep.context))

        return {"conversation": conversation, "turn": turn}, after

    def finish(self, prep: Prepared, reply: Reply, target_ms: float, created: float) -> ChatResult:
        if self.cfg.auto_reward and ANY_PART not in prep.context:
            self.background.submit(
                self._auto_score, prep.conversation_id, prep.arm_id, prep.context, prep.messages, reply.text
            )
        finish = "length" if reply.completion_tokens >= prep.params.max_new_tokens else "stop"
        return ChatResult(
            prep.conversation_id, prep.arm_id, reply, prep.request.model, int(created), target_ms, finish
        )

    def chat(self, request: ChatInput) -> ChatResult:
        """One chat turn, blocking (tests, the traffic simulation, and targets without an async path)."""
        prep = self.prepare(request)
        started = time.perf_counter()
        reply = self.generate(prep.messages, prep.params)
        target_ms, created = 1000 * (time.perf_counter() - started), time.time()
        payload, after = self.record(prep, reply, target_ms, created)
        self.writer.submit_group(record_chats, payload, after).result()
        return self.finish(prep, reply, target_ms, created)

    async def prepare_async(self, request: ChatInput) -> Prepared:
        """`prepare` on the event loop: only a conversation unknown to this process costs a thread hop."""
        known = None
        if request.conversation_id:
            known = self.conversations.get(request.conversation_id)
            if known is None:
                known = await asyncio.to_thread(self.lookup, request.conversation_id)
        return self.prepare(request, known, looked_up=True)

    async def chat_async(self, request: ChatInput) -> ChatResult:
        """One chat turn on the event loop: the upstream called asynchronously, the log written by
        group commit and awaited (the reply is acknowledged only once its conversation is durable)."""
        if self.upstream is None:
            return await asyncio.to_thread(self.chat, request)
        prep = await self.prepare_async(request)
        started = time.perf_counter()
        reply = await self.generate_async(prep.messages, prep.params)
        target_ms, created = 1000 * (time.perf_counter() - started), time.time()
        payload, after = self.record(prep, reply, target_ms, created)
        await self.writer.submit_async(None, after, group=record_chats, payload=payload)
        return self.finish(prep, reply, target_ms, created)

    async def generate_async(self, messages: list[dict[str, str]], params: GenerationParams) -> Reply:
        """One upstream call through `AsyncUpstream`, counted like `CachedTarget` counts it."""
        assert self.upstream is not None
        reply = await self.counted(self.upstream.complete(messages, params))
        with self.target.counter._lock:
            self.target.counter.completion_tokens += reply.completion_tokens
        return reply

    async def open_stream(self, request: ChatInput) -> tuple[Prepared, Response]:
        """A streaming upstream completion, open (its 200 head arrived): failures before the first
        byte are still 502/503 with Retry-After; streaming.relay reads it and records the turn."""
        assert self.upstream is not None
        prep = await self.prepare_async(request)
        return prep, await self.counted(self.upstream.stream(prep.messages, prep.params))

    async def counted(self, call: Awaitable[T]) -> T:
        """One target call on the budget (refunded unless it answers); failures become 502/503."""
        self.target.counter.reserve(1)
        try:
            return await call
        except BaseException as err:
            self.target._refund(1)
            if isinstance(err, UpstreamError):
                status = 503 if err.unavailable else 502
                log.warning("target failed (%d): %s", status, type(err.__cause__ or err).__name__)
                retry = {"Retry-After": str(self.cfg.retry_after_s)}
                raise GatewayError(
                    status, f"the target model failed: {err}; retry later", None, retry
                ) from err
            raise

    @staticmethod
    def with_arm(arm_text: str, messages: list[dict[str, str]]) -> list[dict[str, str]]:
        """The arm is the system message; a client's own system text follows it."""
        client_system = [m["content"] for m in messages if m["role"] == "system"]
        system = "\n\n".join([arm_text, *client_system])
        return [{"role": "system", "content": system}, *(m for m in messages if m["role"] != "system")]

    def generate(self, messages: list[dict[str, str]], params: GenerationParams) -> Reply:
        """One target call; a target that is down becomes 502/503 with Retry-After (nothing charged)."""
        retry = {"Retry-After": str(self.cfg.retry_after_s)}
        try:
            with self.slots:
                return self.target.generate([messages], params)[0]
        except UserError as err:  # e.g. InputTooLong: the request is at fault
            raise GatewayError(400, str(err), "messages") from err
        except (TargetError, PartialGenerationError) as err:
            unavailable = any(s in str(err) for s in ("Connection", "Timeout", "timed out", "refused"))
            status = 503 if unavailable else 502
            log.warning("target failed (%d): %s", status, type(err).__name__)
            raise GatewayError(status, f"the target model failed: {err}; retry later", None, retry) from err
        except Exception as err:  # a transport error that escaped the target's own handling
            if type(err).__module__.split(".")[0] in ("openai", "httpx", "httpx2", "httpcore"):
                raise GatewayError(
                    503, f"the target model is unreachable: {type(err).__name__}", None, retry
                ) from err
            raise

    def _auto_score(
        self, conversation_id: str, arm_id: int, context: str, messages: list, reply: str
    ) -> None:
        """The reward modules' score of one reply: an immediate signal, stored apart from feedback."""
        try:
            persona, stage, urgency = split_context_key(context)
            turns = [m for m in messages if m["role"] != "system"]
            scenario = Scenario(conversation_id, persona, stage, urgency, turns[-1]["content"], turns[:-1])
            from rlprompt.rewards.base import Sample

            sample = Sample(
                scenario, [*turns, {"role": "assistant", "content": reply}], messages[0]["content"]
            )
            batch = self.reward.reward.score([sample])
            total = float(batch.total[0])
            parts = {name: float(v[0]) for name, v in batch.parts.items()}
            self.writer.call(
                lambda conn: conn.execute(
                    store.auto_scores.insert().values(
                        conversation_id=conversation_id,
                        arm_id=arm_id,
                        context=context,
                        total=total,
                        normalized=self.normalize(total),
                        parts=json.dumps(parts),
                        created_at=store.now(),
                    )
                )
            )
        except Exception:
            log.exception("auto reward failed for %s", conversation_id)

    # ------------------------------------------------------------------ feedback


ANY_PART = "*"


def _inner(target: Target) -> Target:
    return getattr(target, "inner", target)


def screen_subset(task: Task, n: int, seed: int) -> list[Scenario]:
    """The fixed training scenarios mutants are screened on (same for parent and mutant)."""
    train = task.split("train")
    return random.Random(f"screen-{seed}").sample(train, min(n, len(train)))


def with_serve(run: RunConfig, **changes: Any) -> RunConfig:
    return replace(run, serve=replace(run.serve, **changes))
