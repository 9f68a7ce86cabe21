"""The gateway's cost on loopback, 16 concurrent clients: added latency and feedback throughput.

    python benchmarks/serve.py                      # ~1 min; --requests 800 --feedback 8000 for tighter figures
    python benchmarks/serve.py --no-postgres        # SQLite only

1. Added latency: the same chat completion sent straight to an upstream OpenAI-compatible server
   and through the gateway (`scripts/serve.py target=openai`, SQLite log), p50 and p99 of each and
   their difference. The upstream is a stub that answers after a fixed `--upstream-ms` (a model's
   time is the same either way, so a stub isolates what the gateway adds: arm draw, the upstream
   client, the conversation + turn commit). Goal: p50 ≤ 5 ms.
2. Feedback events per second into SQLite and into PostgreSQL (a throwaway cluster, as in the
   tests), each acknowledged only after its commit (group commit). Goal: ≥ 1,000/s on SQLite.
Gateway, upstream and clients are separate processes; on 2 shared cores every figure includes
their contention for the CPU, so the load average before and after is recorded with the figures.
The clients are one kept-alive raw HTTP/1.1 connection each (`Connection`), the same for the
direct and the gateway path: httpx cost ~2 ms of client CPU per request here, which made the
client, not the gateway, the bottleneck (docs/SERVE.md has the before/after figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2 as httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))  # serve_support: the throwaway PostgreSQL cluster

STUB = """
import asyncio, sys, time
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
import uvicorn
DELAY = float(sys.argv[2]) / 1000
async def chat(request):
    body = await request.json()
    await asyncio.sleep(DELAY)
    return JSONResponse({"id": "stub", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant",
        "content": "Happy to help! What matters most to you in a car? We can book a test drive."}}],
        "usage": {"prompt_tokens": 50, "completion_tokens": 16, "total_tokens": 66}})
async def ok(request):
    return JSONResponse({"ok": True})
app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/healthz", ok)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""
HELLO = [{"role": "user", "content": "Hi, I need a reliable car for my commute."}]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    raise SystemExit(f"{url} did not start:\n{log.read_text()[-2000:] if log.exists() else ''}")


def start_gateway(folder: Path, database: str, upstream: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, str(ROOT / "scripts" / "serve.py"), f"serve.port={port}", f"serve.database='{database}'",
        "target=openai", f"target.base_url={upstream}/v1", "target.model=stub", "target.max_concurrency=32",
        "target.max_retries=0", "serve.evolve_every=0", "serve.refresh_s=0", "threads=1",
        f"hydra.run.dir={folder / 'gateway'}",
    ]  # fmt: skip
    log = folder / f"gateway-{port}.log"
    env = {**os.environ, "OPENAI_API_KEY": "bench", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, process, log)
    return process, url


class Connection:
    """A minimal kept-alive HTTP/1.1 client connection (JSON POST, Content-Length answers).

    Why not httpx: on this 2-core machine `httpx.AsyncClient` costs ~2 ms of client CPU per request
    at 16 concurrent workers, more than the gateway itself, so the client, not the gateway, set
    the figures. Both paths (direct and through the gateway) use this same client.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = json.dumps(body).encode()
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        length = next(int(h.split(":", 1)[1]) for h in head if h.lower().startswith("content-length:"))
        return int(head[0].split(" ")[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, bodies: list[tuple[str, dict]], clients: int) -> tuple[list[float], float]:
    """Send every (path, body) with `clients` concurrent clients; per-request seconds, wall time."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in bodies:
        queue.put_nowait(item)
    latencies: list[float] = []

    async def worker() -> None:
        http = Connection(url)
        try:
            while not queue.empty():
                path, body = queue.get_nowait()
                started = time.perf_counter()
                status, content = await http.post(path, body)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise SystemExit(f"{path}: {status} {content[:300]!r}")
        finally:
            http.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies, time.perf_counter() - started


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def feedback_rate(url: str, n: int, clients: int, tag: str) -> float:
    chats = [("/v1/chat/completions", {"model": "m", "messages": HELLO}) for _ in range(32)]
    ids = [httpx.post(f"{url}{p}", json=b, timeout=60).json()["id"] for p, b in chats]
    bodies = [
        (
            "/v1/feedback",
            {"conversation_id": ids[i % len(ids)], "reward": (i % 100) / 100, "feedback_id": f"{tag}-{i}"},
        )
        for i in range(n)
    ]
    asyncio.run(load(url, bodies[: clients * 4], clients))  # warm-up (connections, caches)
    _, wall = asyncio.run(load(url, bodies[clients * 4 :], clients))
    return (n - clients * 4) / wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--requests", type=int, default=400, help="chat completions per path (direct, gateway)"
    )
    parser.add_argument("--feedback", type=int, default=4000, help="feedback events per database")
    parser.add_argument("--upstream-ms", type=float, default=20.0)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="rlprompt-bench-serve-"))
    port = free_port()
    (folder / "stub.py").write_text(STUB)
    stub = subprocess.Popen([sys.executable, str(folder / "stub.py"), str(port), str(args.upstream_ms)])
    upstream = f"http://127.0.0.1:{port}"
    processes = [stub]
    figures: dict = {"clients": args.clients, "upstream_ms": args.upstream_ms}
    figures["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    cluster = None
    try:
        wait_ready(upstream, stub, folder / "none")
        gateway, url = start_gateway(folder, f"sqlite:///{folder / 'serve.sqlite'}", upstream)
        processes.append(gateway)
        body = {"model": "stub", "messages": HELLO, "max_tokens": 16}
        asyncio.run(load(upstream, [("/v1/chat/completions", body)] * 64, args.clients))  # warm-up
        asyncio.run(load(url, [("/v1/chat/completions", body)] * 64, args.clients))
        direct, _ = asyncio.run(
            load(upstream, [("/v1/chat/completions", body)] * args.requests, args.clients)
        )
        via, _ = asyncio.run(load(url, [("/v1/chat/completions", body)] * args.requests, args.clients))
        for q in (50, 99):
            figures[f"direct_p{q}_ms"], figures[f"gateway_p{q}_ms"] = pct(direct, q), pct(via, q)
            figures[f"added_p{q}_ms"] = pct(via, q) - pct(direct, q)
        print(
            f"chat completions, {args.clients} concurrent clients, upstream answers in {args.upstream_ms:.0f} ms:"
        )
        for q in (50, 99):
            print(
                f"  p{q}: direct {figures[f'direct_p{q}_ms']:.1f} ms, through the gateway "
                f"{figures[f'gateway_p{q}_ms']:.1f} ms → added {figures[f'added_p{q}_ms']:.1f} ms"
            )
        figures["feedback_per_s_sqlite"] = feedback_rate(url, args.feedback, args.clients, "s")
        print(f"feedback events/s into SQLite: {figures['feedback_per_s_sqlite']:.0f} (goal ≥ 1,000)")
        gateway.terminate()
        gateway.wait(30)
        if not args.no_postgres:
            from serve_support import PostgresCluster, postgres_available

            reason = postgres_available()
            if reason:
                print(f"PostgreSQL skipped: {reason}")
            else:
                cluster = PostgresCluster()
                pg, pg_url = start_gateway(folder, cluster.start(), upstream)
                processes.append(pg)
                figures["feedback_per_s_postgres"] = feedback_rate(pg_url, args.feedback, args.clients, "p")
                print(f"feedback events/s into PostgreSQL: {figures['feedback_per_s_postgres']:.0f}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
        if cluster is not None:
            cluster.stop()
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    from common import write_result

    write_result("serve", figures)


if __name__ == "__main__":
    main()
