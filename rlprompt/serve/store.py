"""The gateway's event log: SQLAlchemy tables, alembic migrations, and a group-commit writer.

Why an event log: posteriors are a fold over feedback rows, so a restart, a `kill -9`, a second
replica and an SQLite-vs-PostgreSQL comparison all check against the same thing. Rewards are
stored as integers (`value_nano` = round(r × 1e9)): integer sums are exact in any order and in
any database, so every fold of the same events gives bit-identical α and β.

Why a writer thread: SQLite allows one writer, and a commit costs a sync. The writer takes
whatever operations are queued, runs them in one transaction, commits once and then acknowledges
each (group commit): an acknowledged operation is durable, and throughput grows with concurrency.
An operation that fails is retried alone, so one bad event never sinks its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from importlib import resources
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)
NANO = 1_000_000_000  # rewards are stored as integer billionths (exact sums)
MAX_BATCH = 512

metadata = sa.MetaData()
arms = sa.Table(
    "arms",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(64), nullable=False, unique=True),  # sha256(context + normalized text)
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("context", sa.String(200), nullable=True),  # None: every context
    sa.Column("origin", sa.String(16), nullable=False),  # task | export | manual | mutant
    sa.Column("parent_id", sa.Integer, nullable=True),
    sa.Column("prior_alpha", sa.Float, nullable=False),
    sa.Column("prior_beta", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("retired_at", sa.Float, nullable=True),
    sa.Column("retired_reason", sa.Text, nullable=True),
)
conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("arm_id", sa.Integer, sa.ForeignKey("arms.id"), nullable=False, index=True),
    sa.Column("context", sa.String(200), nullable=False),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
)
turns = sa.Table(
    "turns",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True
    ),
    sa.Column("messages", sa.Text, nullable=False),  # JSON: what the target read (system prompt included)
    sa.Column("reply", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("target_ms", sa.Float, nullable=False),
    sa.Column("stream", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("feedback_id", sa.String(128), nullable=False, unique=True),
    sa.Column(
        "conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True
    ),
    sa.Column("arm_id", sa.Integer, nullable=False, index=True),
    sa.Column("context", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # reward | thumbs | outcome
    sa.Column("name", sa.String(128), nullable=True),  # thumbs up/down, the outcome's name
    sa.Column("value_nano", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
auto_scores = sa.Table(
    "auto_scores",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "conversation_id", sa.String(64), sa.ForeignKey("conversations.id"), nullable=False, index=True
    ),
    sa.Column("arm_id", sa.Integer, nullable=False),
    sa.Column("context", sa.String(200), nullable=False),
    sa.Column("total", sa.Float, nullable=False),
    sa.Column("normalized", sa.Float, nullable=False),
    sa.Column("parts", sa.Text, nullable=False),  # JSON {module: score}
    sa.Column("created_at", sa.Float, nullable=False),
)
evolution = sa.Table(
    "evolution",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("round", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # retired | born | screened_out
    sa.Column("arm_id", sa.Integer, nullable=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("p_beats_best", sa.Float, nullable=True),
    sa.Column("screen_reward", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
evolution_rounds = sa.Table(  # one row per round: the replica whose insert wins runs it
    "evolution_rounds",
    metadata,
    sa.Column("round", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("feedback_count", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
)


def to_nano(value: float) -> int:
    return round(value * NANO)


CHECKPOINT_S = 0.5  # the writer's checkpointer folds the WAL into the database this often
AUTOCHECKPOINT_PAGES = 16384  # backstop only: a commit checkpoints itself past 64 MiB of WAL


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL: readers never block the writer; NORMAL sync: a committed transaction survives a crash
    of the process (kill -9), only an OS crash may lose the last ones; busy_timeout: replicas wait.
    Checkpoints run in the writer's own checkpointer thread (Writer), not inside a commit: with
    SQLite's default (every 1,000 pages) one commit in ~100 paid the checkpoint's copy and
    fsync, and every chat waiting on that commit stalled with it (the benchmark's p99)."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for `serve.database`; SQLite gets its pragmas, PostgreSQL a pool for the threads."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """`alembic upgrade head` with the migrations shipped in the package (a wheel can migrate).

    On PostgreSQL an advisory lock makes replicas that start together migrate one at a time.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("rlprompt.serve") / "migrations"))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(7719342)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Writer:
    """Group commit: ops queued from any thread run in one transaction per batch (see module doc).

    An op is `fn(conn) -> result`, or a grouped op `group(conn, payloads) -> results` that runs
    every consecutive queued payload of the same `group` in one statement per step (feedback: one
    duplicate check, one conversation lookup, one multi-row INSERT ... RETURNING per batch instead
    of three statements per event). `submit` returns a concurrent Future and `submit_async` an
    asyncio one; both resolve only after the commit, and an `after(result)` hook runs in the
    writer thread after the commit (in-memory posteriors follow exactly what is durable). The
    asyncio futures of one batch are resolved with one wake-up of their loop, not one each. An op
    that raises fails only its own future: a failing batch is retried op by op.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="rlprompt-writer", daemon=True)
        self.stopped = False
        self.thread.start()
        self.halt = threading.Event()
        if engine.dialect.name == "sqlite":
            threading.Thread(target=self._checkpoints, name="rlprompt-checkpoint", daemon=True).start()

    def _checkpoints(self) -> None:
        """PASSIVE checkpoints beside the writer: they never block a commit (WAL allows both)."""
        while not self.halt.wait(CHECKPOINT_S):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # a busy or closing database: the next round (or the backstop) does it
                log.debug("WAL checkpoint skipped", exc_info=True)

    def submit(self, fn: Callable[[Connection], Any], after: Callable[[Any], None] | None = None) -> Future:
        future: Future = Future()
        self._put(_Op(fn, None, None, after, future, None))
        return future

    def submit_async(
        self,
        fn: Callable[[Connection], Any] | None,
        after: Callable[[Any], None] | None = None,
        group: Callable[[Connection, list], list] | None = None,
        payload: Any = None,
    ) -> asyncio.Future:
        """Queue `fn` (or `payload` for `group`) from the event loop; await the result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put(_Op(fn, group, payload, after, future, loop))
        return future

    def submit_group(
        self,
        group: Callable[[Connection, list], list],
        payload: Any,
        after: Callable[[Any], None] | None = None,
    ) -> Future:
        future: Future = Future()
        self._put(_Op(None, group, payload, after, future, None))
        return future

    def call(self, fn: Callable[[Connection], Any], after: Callable[[Any], None] | None = None) -> Any:
        """Submit and wait (for callers outside the event loop)."""
        return self.submit(fn, after).result()

    def _put(self, op: _Op) -> None:
        if self.stopped:
            _resolve([(op, RuntimeError("the writer is stopped"), True)])
            return
        self.queue.put(op)

    def stop(self) -> None:
        self.stopped = True
        self.halt.set()
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
            self._run(batch)

    @staticmethod
    def _execute(conn: Connection, batch: list[_Op]) -> list:
        results: list = []
        i = 0
        while i < len(batch):
            op = batch[i]
            if op.group is None:
                results.append(op.fn(conn))
                i += 1
                continue
            j = i
            while j < len(batch) and batch[j].group is op.group:
                j += 1
            out = op.group(conn, [o.payload for o in batch[i:j]])
            if len(out) != j - i:
                raise RuntimeError("a grouped op returned the wrong number of results")
            results.extend(out)
            i = j
        return results

    def _run(self, batch: list[_Op]) -> None:
        try:
            with self.engine.begin() as conn:
                results = self._execute(conn, batch)
        except Exception as err:
            if len(batch) > 1:  # isolate the failing op: each alone, in its own transaction
                for op in batch:
                    self._run([op])
                return
            _resolve([(batch[0], err, True)])
            return
        for op, result in zip(batch, results):
            if op.after is not None:
                try:
                    op.after(result)
                except Exception:  # bookkeeping must not lose the acknowledgement
                    log.exception("after-commit hook failed")
        _resolve([(op, result, False) for op, result in zip(batch, results)])


class _Op(NamedTuple):
    fn: Callable[[Connection], Any] | None
    group: Callable[[Connection, list], list] | None
    payload: Any
    after: Callable[[Any], None] | None
    future: Any  # concurrent.futures.Future, or asyncio.Future of `loop`
    loop: asyncio.AbstractEventLoop | None


def _resolve(items: list[tuple[_Op, Any, bool]]) -> None:
    """Set each future; asyncio ones in one call on their loop (a wake-up costs a syscall)."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for op, value, failed in items:
        if op.loop is None:
            op.future.set_exception(value) if failed else op.future.set_result(value)
        else:
            by_loop.setdefault(op.loop, []).append((op.future, value, failed))
    for loop, done in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_set_all, done)


def _set_all(done: list) -> None:
    for future, value, failed in done:
        if not future.done():
            future.set_exception(value) if failed else future.set_result(value)


def now() -> float:
    return time.time()
