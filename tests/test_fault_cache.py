"""Response-cache integrity: concurrent writers, and a corrupt file that is set aside.

The sqlite cache (WAL mode, busy timeout) is shared by accelerate ranks and parallel runs. Several
processes writing hundreds of entries at once must leave every entry readable and the file
intact. A cache file that is not a database, or whose pages are damaged, is renamed
`*.corrupt-*` and a fresh one started: a cache is an optimisation, never a reason to stop.
"""

from __future__ import annotations

import multiprocessing
import sqlite3

from rlprompt.targets.base import GenerationParams, Reply
from rlprompt.targets.cache import CachedTarget, CallCounter, ResponseCache

WRITERS, ENTRIES, BATCH = 3, 300, 7


def entry(writer: int, i: int) -> tuple[str, Reply]:
    return f"w{writer}-{i:04d}", Reply(
        text=f"reply {writer}/{i} " + "x" * (i % 50), prompt_tokens=i, completion_tokens=writer
    )


def write_many(path: str, writer: int, start, errors) -> None:
    try:
        cache = ResponseCache(path)
        start.wait(timeout=60)
        for first in range(0, ENTRIES, BATCH):
            items = [
                (k, f"t{writer}", r)
                for k, r in (entry(writer, i) for i in range(first, min(first + BATCH, ENTRIES)))
            ]
            cache.put_many(items)
            # read back a mix of own and other writers' keys while the others write
            cache.get_many([entry(w, first)[0] for w in range(WRITERS)])
    except BaseException as err:  # reported to the parent: a failure in a child must fail the test
        errors.put(f"writer {writer}: {type(err).__name__}: {err}")
        raise


def test_concurrent_writers_leave_every_entry_readable(tmp_path):
    path = tmp_path / "shared.sqlite"
    ResponseCache(path)  # created once, as the first rank would
    context = multiprocessing.get_context("fork")
    start, errors = context.Event(), context.Queue()
    workers = [context.Process(target=write_many, args=(str(path), w, start, errors)) for w in range(WRITERS)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=120)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert problems == [] and all(w.exitcode == 0 for w in workers), problems

    cache = ResponseCache(path)
    assert len(cache) == WRITERS * ENTRIES
    keys = [entry(w, i)[0] for w in range(WRITERS) for i in range(ENTRIES)]
    found = cache.get_many(keys)
    assert len(found) == len(keys)
    for w in range(WRITERS):
        for i in range(ENTRIES):
            key, reply = entry(w, i)
            got = found[key]
            assert (got.text, got.prompt_tokens, got.completion_tokens) == (
                reply.text,
                reply.prompt_tokens,
                reply.completion_tokens,
            )
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not list(tmp_path.glob("*.corrupt-*"))


class Echo:
    target_id = "echo"

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, conversations, params):
        self.calls += len(conversations)
        return [
            Reply(text=c[-1]["content"].upper(), prompt_tokens=1, completion_tokens=1) for c in conversations
        ]


def use(cache: ResponseCache) -> tuple[Echo, CachedTarget]:
    inner = Echo()
    return inner, CachedTarget(inner, cache, CallCounter())


def test_a_garbage_cache_file_is_set_aside_and_the_run_goes_on(tmp_path, caplog):
    path = tmp_path / "responses.sqlite"
    path.write_bytes(b"this is not a database\x00" * 500)
    cache = ResponseCache(path)
    aside = [p for p in tmp_path.glob("responses.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert "is corrupt" in caplog.text
    inner, target = use(cache)
    conversation = [{"role": "user", "content": "hello"}]
    assert target.generate([conversation], GenerationParams())[0].text == "HELLO"
    assert target.generate([conversation], GenerationParams())[0].cached
    assert inner.calls == 1 and len(cache) == 1


def test_damaged_pages_are_detected_and_set_aside(tmp_path):
    path = tmp_path / "responses.sqlite"
    cache = ResponseCache(path)
    cache.put_many([(f"k{i:05d}", "t", Reply("y" * 200, 1, 1)) for i in range(2000)])
    conn = cache._conn
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    assert len(data) > 40 * 4096
    data[8 * 4096 : 24 * 4096] = b"\xa5" * (16 * 4096)  # overwrite pages in the middle of the b-tree
    path.write_bytes(bytes(data))
    fresh = ResponseCache(path)
    aside = [p for p in tmp_path.glob("responses.sqlite.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].stat().st_size == len(data)  # kept for inspection
    assert len(fresh) == 0  # started fresh
    inner, target = use(fresh)
    target.generate([[{"role": "user", "content": "again"}]], GenerationParams())
    assert inner.calls == 1 and len(fresh) == 1
