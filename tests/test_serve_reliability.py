"""Reliability of the gateway's event log: kill -9 under load, SQLite vs PostgreSQL, replicas.

The server under `kill -9` is the real command (`scripts/serve.py`, SmolLM2 target, SQLite file);
PostgreSQL is a throwaway cluster (tests/serve_support.py).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest
from serve_support import free_port, fresh_database, postgres_url, serve_run  # noqa: F401 (fixture)

from rlprompt.optimizers.bandit_math import beta_update
from rlprompt.serve.gateway import ChatInput, FeedbackInput, Gateway
from rlprompt.targets.cache import CachedTarget
from rlprompt.task import load_task

ROOT = Path(__file__).resolve().parents[1]
TASK = load_task("car_sales")


def start_server(tmp_path: Path, db: Path, port: int, log_name: str) -> subprocess.Popen:
    command = [
        sys.executable, str(ROOT / "scripts" / "serve.py"), f"serve.port={port}", f"serve.database=sqlite:///{db}",
        "target.max_new_tokens=4", "target.dtype=float32", "threads=1", "serve.evolve_every=0",
        f"hydra.run.dir={tmp_path / log_name}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = open(tmp_path / f"{log_name}.log", "wb")  # noqa: SIM115 (kept open for the child)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError((tmp_path / f"{log_name}.log").read_text()[-3000:])
        time.sleep(0.3)


def replay(db: Path) -> dict[int, tuple[float, float, int]]:
    """An independent replay of the event log: beta_update per feedback row, in log order."""
    with sqlite3.connect(db) as conn:
        state = {i: [a, b, 0] for i, a, b in conn.execute("SELECT id, prior_alpha, prior_beta FROM arms")}
        for arm_id, nano in conn.execute("SELECT arm_id, value_nano FROM feedback ORDER BY seq"):
            s = state[arm_id]
            s[0], s[1] = beta_update(s[0], s[1], nano / 1e9)
            s[2] += 1
    return {i: tuple(s) for i, s in state.items()}


@pytest.mark.slow
def test_kill_9_under_load_loses_no_acknowledged_feedback(tmp_path):
    db, port = tmp_path / "serve.sqlite", free_port()
    server = start_server(tmp_path, db, port, "first")
    url = f"http://127.0.0.1:{port}"
    hello = [{"role": "user", "content": "Hi, I need a car."}]
    conversations = [
        httpx.post(f"{url}/v1/chat/completions", json={"model": "m", "messages": hello}, timeout=60).json()[
            "id"
        ]
        for _ in range(6)
    ]
    acked: list[str] = []
    lock, stop = threading.Lock(), threading.Event()

    def hammer(worker: int) -> None:
        rng, i = random.Random(worker), 0
        with httpx.Client(base_url=url, timeout=5) as http:
            while not stop.is_set():
                fid = f"k-{worker}-{i}"
                body = {
                    "conversation_id": rng.choice(conversations),
                    "reward": rng.random(),
                    "feedback_id": fid,
                }
                i += 1
                try:
                    if http.post("/v1/feedback", json=body).status_code == 200:
                        with lock:
                            acked.append(fid)
                except httpx.HTTPError:
                    return  # the server is gone

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    os.kill(server.pid, signal.SIGKILL)  # mid-load: requests in flight
    server.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert len(acked) > 100, "the load did not get going"

    server = start_server(tmp_path, db, port, "second")
    try:
        arms = httpx.get(f"{url}/v1/arms").json()["data"]
        health = httpx.get(f"{url}/healthz").json()
        late = httpx.post(f"{url}/v1/feedback", json={"conversation_id": conversations[0], "thumbs": "up"})
        assert late.status_code == 200  # conversations from before the crash take feedback
    finally:
        server.terminate()
        server.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        stored = {f for (f,) in conn.execute("SELECT feedback_id FROM feedback")}
        total = conn.execute("SELECT count(*) FROM feedback").fetchone()[0]
    assert set(acked) <= stored  # every acknowledged feedback survived kill -9
    assert health["feedback"] == total - 1 == len(stored) - 1  # restart resumed the posteriors
    expected = replay(db)
    for arm in arms:
        alpha, beta, n = expected[arm["id"]]
        bump = 1 if arm["id"] == late.json()["arm_id"] else 0  # the late thumbs-up came after /v1/arms
        assert arm["feedback"] == n - bump
        assert arm["alpha"] == pytest.approx(alpha - bump, abs=1e-9) and arm["beta"] == pytest.approx(
            beta, abs=1e-9
        )


def drive(url: str, target) -> tuple[list[dict], list[int], dict]:
    """The same stream of events into a gateway on `url`: chats with contexts, delayed feedback of
    every kind; returns /v1/arms, the arms played, and the in-memory context posteriors."""
    run = serve_run(url, "target.max_new_tokens=4", "serve.evolve_every=0", "seed=3")
    gateway = Gateway(run, TASK, target)
    rng, pool = random.Random(7), TASK.split("train")[:10]
    conversations, played = [], []
    try:
        for t in range(60):
            scenario = rng.choice(pool)
            context = dict(zip(("persona", "stage", "urgency"), scenario.context))
            result = gateway.chat(ChatInput(scenario.messages(None), max_tokens=4, context=context))
            conversations.append(result.conversation_id)
            played.append(result.arm_id)
            if t % 3 == 2:
                for cid in rng.sample(conversations, 2):
                    kind = rng.choice(["reward", "thumbs", "outcome"])
                    value = {"reward": rng.random(), "thumbs": 1.0, "outcome": 0.7}[kind]
                    gateway.feedback(FeedbackInput(cid, kind, value, feedback_id=f"f-{t}-{cid[-6:]}"))
        arms = gateway.arms()
        posteriors = {
            (i, ctx): gateway.portfolio.context_posterior(i, ctx)
            for i in gateway.portfolio.arms
            for ctx in {"|".join(s.context) for s in pool}
        }
    finally:
        gateway.close()
    return arms, played, posteriors


@pytest.mark.slow
def test_sqlite_and_postgresql_give_identical_posteriors(tmp_path, postgres_url, smollm2, tmp_cache):  # noqa: F811
    target = CachedTarget(smollm2, tmp_cache)
    on_sqlite = drive(f"sqlite:///{tmp_path / 'a.sqlite'}", target)
    on_postgres = drive(fresh_database(postgres_url, "identical"), target)
    assert on_sqlite[1] == on_postgres[1]  # the same arms were played
    assert on_sqlite[0] == on_postgres[0]  # /v1/arms, bit for bit
    assert on_sqlite[2] == on_postgres[2]  # per-context posteriors, bit for bit
    assert sum(a["feedback"] for a in on_sqlite[0]) == 40


@pytest.mark.slow
def test_replicas_share_state_through_postgresql(postgres_url, smollm2, tmp_cache):  # noqa: F811
    url = fresh_database(postgres_url, "replicas")
    target = CachedTarget(smollm2, tmp_cache)
    a = Gateway(serve_run(url, "target.max_new_tokens=4"), TASK, target)
    b = Gateway(serve_run(url, "target.max_new_tokens=4"), TASK, target)
    try:
        assert sorted(a.portfolio.arms) == sorted(b.portfolio.arms)  # seeded once, not twice
        messages = [{"role": "user", "content": "Hello, what SUVs do you have?"}]
        chats = [a.chat(ChatInput(messages, max_tokens=4)) for _ in range(4)]
        for i, chat in enumerate(chats):  # feedback reaches the other replica
            b.feedback(FeedbackInput(chat.conversation_id, "reward", 0.25 * i, feedback_id=f"r-{i}"))
        with pytest.raises(Exception, match="already recorded"):
            a.feedback(FeedbackInput(chats[0].conversation_id, "reward", 1.0, feedback_id="r-0"))
        a.refresh()
        for arm_id in a.portfolio.arms:
            assert a.portfolio.global_posterior(arm_id) == b.portfolio.global_posterior(arm_id)
        assert a.arms() == b.arms() and sum(x["feedback"] for x in a.arms()) == 4
    finally:
        a.close()
        b.close()
