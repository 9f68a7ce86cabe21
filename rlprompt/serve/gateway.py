"""One gateway: pick an arm, call the target, log everything, take feedback. No HTTP here (app.py).

Why this split: the logic is exercised by the HTTP tests, the traffic simulation and the
benchmark alike, and the FastAPI layer stays a thin translation of requests and errors.

A conversation is charged to an arm only when the target answered: the conversation row and its
turn are written in one transaction after the reply, so a target that is down (502/503) leaves
no trace on any posterior. Feedback is written through the group-commit writer; the in-memory
posterior moves after the commit, so what the bandit believes is always what is durable.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import sqlalchemy as sa

from rlprompt.config import RunConfig
from rlprompt.errors import TargetError, UserError
from rlprompt.serve import store
from rlprompt.serve.portfolio import (
    Portfolio,
    arm_states,
    context_key,
    insert_arms,
    portfolio_arms,
    read_snapshot,
)
from rlprompt.targets.base import GenerationParams, PartialGenerationError, Reply, Target
from rlprompt.task import Scenario, Task

log = logging.getLogger(__name__)
THUMBS = {"up": 1.0, "down": 0.0}


class GatewayError(Exception):
    """An HTTP error with an OpenAI-style body: the field at fault and how to fix it."""

    def __init__(
        self, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}


@dataclass
class ChatInput:
    """A validated chat request (app.py turns the JSON body into this)."""

    messages: list[dict[str, str]]
    model: str = "rlprompt"
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stream: bool = False
    conversation_id: str | None = None
    context: dict[str, str | None] = field(default_factory=dict)  # persona, stage, urgency


@dataclass
class ChatResult:
    conversation_id: str
    arm_id: int
    reply: Reply
    model: str
    created: int
    target_ms: float
    finish_reason: str


@dataclass
class FeedbackInput:
    conversation_id: str
    kind: str  # reward | thumbs | outcome
    value: float  # in [0, 1]
    name: str | None = None
    feedback_id: str | None = None


class Gateway:
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
        from rlprompt.trainer import reward_bounds

        return reward_bounds(self.reward.reward)

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

    def chat(self, request: ChatInput) -> ChatResult:
        if request.conversation_id:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(store.conversations).where(store.conversations.c.id == request.conversation_id)
                ).first()
            if row is None:
                raise GatewayError(
                    404,
                    f"unknown metadata.conversation_id {request.conversation_id!r}: use the `id` of an "
                    "earlier response, or leave it out to start a new conversation",
                    "metadata.conversation_id",
                )
            conversation_id, arm_id, context, new = row.id, row.arm_id, row.context, False
        else:
            context = self.context_of(request.context)
            arm_id = self.portfolio.choose(context)
            conversation_id, new = f"conv-{uuid.uuid4().hex}", True
        if arm_id not in self.portfolio.arms:  # born on another replica since our last refresh
            self.refresh()
        messages = self.with_arm(self.portfolio.arms[arm_id].text, request.messages)
        params = GenerationParams(
            max_new_tokens=min(request.max_tokens or self.run.target.max_new_tokens, self.cfg.max_tokens),
            temperature=self.run.target.temperature if request.temperature is None else request.temperature,
            top_p=self.run.target.top_p if request.top_p is None else request.top_p,
            seed=self.run.seed if request.seed is None else request.seed,
        )
        started = time.perf_counter()
        reply = self.generate(messages, params)
        target_ms = 1000 * (time.perf_counter() - started)
        created = time.time()

        def record(conn: sa.Connection) -> None:
            if new:
                conn.execute(
                    store.conversations.insert().values(
                        id=conversation_id,
                        arm_id=arm_id,
                        context=context,
                        model=request.model,
                        created_at=created,
                    )
                )
            conn.execute(
                store.turns.insert().values(
                    conversation_id=conversation_id,
                    messages=json.dumps(messages, ensure_ascii=False),
                    reply=reply.text,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    target_ms=target_ms,
                    stream=request.stream,
                    created_at=created,
                )
            )

        self.writer.call(record)
        if self.cfg.auto_reward and ANY_PART not in context:
            self.background.submit(self._auto_score, conversation_id, arm_id, context, messages, reply.text)
        finish = "length" if reply.completion_tokens >= params.max_new_tokens else "stop"
        return ChatResult(conversation_id, arm_id, reply, request.model, int(created), target_ms, finish)

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
            persona, stage, urgency = context.split("|")
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

    def feedback_value(
        self, reward: float | None, thumbs: str | None, outcome: str | None
    ) -> tuple[str, float, str | None]:
        """(kind, value in [0, 1], name) from exactly one of reward / thumbs / outcome."""
        given = [
            k for k, v in (("reward", reward), ("thumbs", thumbs), ("outcome", outcome)) if v is not None
        ]
        if len(given) != 1:
            raise GatewayError(
                422,
                f"give exactly one of reward (a number in [0, 1]), thumbs ('up' | 'down') or outcome "
                f"(one of: {', '.join(self.cfg.outcomes)}); got {', '.join(given) or 'none'}",
                given[1] if len(given) > 1 else "reward",
            )
        if reward is not None:
            if not (0.0 <= reward <= 1.0):  # NaN fails this too
                raise GatewayError(422, f"reward must be in [0, 1], got {reward!r}", "reward")
            return "reward", float(reward), None
        if thumbs is not None:
            if thumbs not in THUMBS:
                raise GatewayError(422, f"thumbs must be 'up' or 'down', got {thumbs!r}", "thumbs")
            return "thumbs", THUMBS[thumbs], thumbs
        if outcome not in self.cfg.outcomes:
            raise GatewayError(
                422,
                f"unknown outcome {outcome!r}. Configured outcomes (serve.outcomes): {', '.join(self.cfg.outcomes)}",
                "outcome",
            )
        return "outcome", float(self.cfg.outcomes[outcome]), outcome

    def feedback(self, item: FeedbackInput) -> dict:
        """Record one feedback event and wait for its commit (callers outside the event loop)."""
        future, feedback_id = self.submit_feedback(item)
        return self.feedback_result(item, feedback_id, future.result())

    async def feedback_async(self, item: FeedbackInput) -> dict:
        """The same, awaited on the event loop: no thread hop per event (feedback is the hot path)."""
        import asyncio

        future, feedback_id = self.submit_feedback(item)
        return self.feedback_result(item, feedback_id, await asyncio.wrap_future(future))

    def submit_feedback(self, item: FeedbackInput) -> tuple[Future, str]:
        feedback_id = item.feedback_id or f"fb-{uuid.uuid4().hex}"
        nano = store.to_nano(item.value)

        def record(conn: sa.Connection) -> dict:
            f = store.feedback
            seen = conn.execute(sa.select(f.c.seq).where(f.c.feedback_id == feedback_id)).scalar()
            if seen is not None:
                return {"error": 409, "seq": seen}
            row = conn.execute(
                sa.select(store.conversations.c.arm_id, store.conversations.c.context).where(
                    store.conversations.c.id == item.conversation_id
                )
            ).first()
            if row is None:
                return {"error": 404}
            seq = conn.execute(
                f.insert().values(
                    feedback_id=feedback_id,
                    conversation_id=item.conversation_id,
                    arm_id=row.arm_id,
                    context=row.context,
                    kind=item.kind,
                    name=item.name,
                    value_nano=nano,
                    created_at=store.now(),
                )
            ).inserted_primary_key[0]
            return {"seq": seq, "arm_id": row.arm_id, "context": row.context}

        def after(result: dict) -> None:
            if "error" not in result:
                total = self.portfolio.apply(result["arm_id"], result["context"], nano)
                self.evolver.on_feedback(total)

        return self.writer.submit(record, after), feedback_id

    def feedback_result(self, item: FeedbackInput, feedback_id: str, result: dict) -> dict:
        if result.get("error") == 409:
            raise GatewayError(
                409,
                f"feedback_id {feedback_id!r} was already recorded (seq {result['seq']}); nothing was stored",
                "feedback_id",
            )
        if result.get("error") == 404:
            raise GatewayError(
                404,
                f"unknown conversation_id {item.conversation_id!r}: use the `id` of a chat completion response",
                "conversation_id",
            )
        return {
            "feedback_id": feedback_id,
            "conversation_id": item.conversation_id,
            "arm_id": result["arm_id"],
            "context": result["context"],
            "kind": item.kind,
            "value": item.value,
            "seq": result["seq"],
        }


ANY_PART = "*"


def _inner(target: Target) -> Target:
    return getattr(target, "inner", target)


def screen_subset(task: Task, n: int, seed: int) -> list[Scenario]:
    """The fixed training scenarios mutants are screened on (same for parent and mutant)."""
    train = task.split("train")
    return random.Random(f"screen-{seed}").sample(train, min(n, len(train)))


def with_serve(run: RunConfig, **changes: Any) -> RunConfig:
    return replace(run, serve=replace(run.serve, **changes))
