"""One on-disk response cache (sqlite) and one call counter for every LLM the project calls.

Key = sha256(target id + messages + generation params). WAL mode and a busy timeout let
several processes (accelerate ranks, parallel tests) share one file. A corrupt file is set
aside (renamed) and a fresh one started: a cache is an optimisation, never a reason to stop.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlprompt.errors import TargetError
from rlprompt.targets.base import Conversation, GenerationParams, PartialGenerationError, Reply, Target

log = logging.getLogger(__name__)


class BudgetExhausted(Exception):
    """Raised before a call that would spend more target calls than the budget allows."""


@dataclass
class CallCounter:
    """Counts what an LLM role cost: real calls (the budget currency), cache hits, retries."""

    role: str = "target"
    budget: int | None = None  # max real calls; None = unlimited
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.calls

    @property
    def hit_rate(self) -> float:
        total = self.calls + self.cache_hits
        return self.cache_hits / total if total else 0.0

    def reserve(self, n: int) -> None:
        """Spend `n` calls, or raise `BudgetExhausted` without spending any."""
        with self._lock:
            if self.budget is not None and self.calls + n > self.budget:
                raise BudgetExhausted(f"{self.role}: {n} more calls would exceed the budget of {self.budget}")
            self.calls += n

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("calls", "cache_hits", "retries", "completion_tokens")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class ResponseCache:
    """sqlite key → reply store shared by processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._open_checked()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, target_id TEXT, reply TEXT, created REAL)"
        )
        return conn

    def _open_checked(self) -> None:
        conn = None
        try:
            conn = self._connect()
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
        except sqlite3.DatabaseError as err:
            if conn is not None:
                conn.close()  # before its files move aside
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}-{os.getpid()}")
            log.warning(
                "response cache %s is corrupt (%s); moved to %s and starting fresh", self.path, err, aside
            )
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    os.replace(src, Path(str(aside) + suffix))
            conn = self._connect()
        self._local.conn = conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @staticmethod
    def key(target_id: str, conversation: Conversation, params: GenerationParams) -> str:
        payload = json.dumps([target_id, conversation, params.key()], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, Reply]:
        found: dict[str, Reply] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._conn.execute(
                f"SELECT key, reply FROM responses WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            for key, reply in rows:
                found[key] = Reply(**json.loads(reply), cached=True)
        return found

    def put_many(self, items: list[tuple[str, str, Reply]]) -> None:
        rows = [
            (
                key,
                target_id,
                json.dumps(
                    {
                        "text": r.text,
                        "prompt_tokens": r.prompt_tokens,
                        "completion_tokens": r.completion_tokens,
                    }
                ),
                time.time(),
            )
            for key, target_id, r in items
        ]
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]


class CachedTarget:
    """Wraps a target: cache lookups first, the budget checked, misses generated in one batch.

    Duplicates inside one batch are generated once. Each logical call counts once, however many
    retries the inner target needed.
    """

    def __init__(
        self, inner: Target, cache: ResponseCache | None, counter: CallCounter | None = None
    ) -> None:
        self.inner = inner
        self.cache = cache
        self.counter = counter or CallCounter()
        self.target_id = inner.target_id

    def with_counter(self, counter: CallCounter) -> CachedTarget:
        """The same model and cache, counted on `counter` (evaluation next to a budgeted optimization:
        its calls are never charged to the budget). API retries stay on the inner target's counter."""
        return CachedTarget(self.inner, self.cache, counter)

    def generate(self, conversations: list[Conversation], params: GenerationParams) -> list[Reply]:
        keys = [ResponseCache.key(self.target_id, c, params) for c in conversations]
        found = self.cache.get_many(keys) if self.cache is not None else {}
        missing: dict[str, Conversation] = {}
        for key, conversation in zip(keys, conversations):
            if key not in found and key not in missing:
                missing[key] = conversation
        self.counter.reserve(len(missing))
        with self.counter._lock:
            self.counter.cache_hits += len(conversations) - len(missing)
        if missing:
            missing_keys = list(missing)
            try:
                replies = self.inner.generate(list(missing.values()), params)
            except PartialGenerationError as err:
                self._store({missing_keys[i]: r for i, r in err.completed.items()})
                self._refund(len(missing) - len(err.completed))
                raise TargetError(
                    f"{self.target_id}: {len(missing) - len(err.completed)} of {len(missing)} calls failed "
                    f"after retries ({err}); the {len(err.completed)} completed replies are cached"
                ) from err
            except BaseException:
                self._refund(len(missing))  # nothing was delivered
                raise
            found.update(self._store(dict(zip(missing_keys, replies))))
        return [found[k] for k in keys]

    def _refund(self, n: int) -> None:
        with self.counter._lock:
            self.counter.calls -= n

    def _store(self, fresh: dict[str, Reply]) -> dict[str, Reply]:
        with self.counter._lock:
            self.counter.completion_tokens += sum(r.completion_tokens for r in fresh.values())
        if self.cache is not None and fresh:
            self.cache.put_many([(k, self.target_id, r) for k, r in fresh.items()])
        return fresh
