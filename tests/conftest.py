"""Fixtures shared by the whole suite.

Real models only: the packaged GGUF models are converted once into the real rlprompt cache
(`~/.cache/rlprompt`, or `RLPROMPT_CACHE`) and reused, because a conversion costs about a minute
per model. Response caches, on the other hand, are always fresh tmp files (`tmp_cache` per
test; `build_cache`'s default per session), so a test never reads a reply from older code.
Torch runs one thread per process unless RLPROMPT_TEST_THREADS says otherwise (see below).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rlprompt.models import model_dir
from rlprompt.targets.cache import ResponseCache

SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"
API_KEY_ENV = "RLPROMPT_TEST_API_KEY"  # the OpenAI client needs a key; `transformers serve` ignores it
SERVER_START_TIMEOUT_S = 120.0
# Torch threads for the test process and the API server. Tests check correctness, not speed, and
# on a shared 2-core machine two OpenMP threads per process oversubscribe the cores: SmolLM2
# greedy 32 tokens took 14-18 s with 2 threads against 2.2 s with 1 while other jobs ran.
TEST_THREADS = int(os.environ.get("RLPROMPT_TEST_THREADS", "1"))


def pytest_configure(config):
    import torch

    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope="session")
def smollm2():
    """One HFTarget for SmolLM2-135M-Instruct (chat format), loaded once per session."""
    from rlprompt.targets.hf import HFTarget

    return HFTarget(SMOLLM2, dtype="float32", batch_size=8)


@pytest.fixture(scope="session")
def gemma3():
    """One HFTarget for Gemma-3-270M (base model: completion format), loaded on first use."""
    from rlprompt.targets.hf import HFTarget

    return HFTarget(GEMMA3, dtype="float32", batch_size=8)


@pytest.fixture(scope="session", autouse=True)
def _default_response_cache_in_tmp(tmp_path_factory):
    """`build_cache` defaults to <cache root>/responses.sqlite; in tests that is a per-session tmp file.

    Only the response cache moves: converted models stay in the real cache root.
    """
    folder = tmp_path_factory.mktemp("response_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rlprompt.build.cache_root", lambda: folder)
        yield folder


@pytest.fixture
def tmp_cache(tmp_path) -> ResponseCache:
    """A fresh sqlite response cache for one test."""
    return ResponseCache(tmp_path / "responses.sqlite")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _chat_ready(base_url: str, model: str) -> bool:
    """One tiny chat completion: the endpoint the tests use (GET /v1/models answers 500 here)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1})
    request = urllib.request.Request(
        f"{base_url}/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sentinel"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


@pytest.fixture(scope="session")
def openai_server(tmp_path_factory):
    """A real OpenAI-compatible server: `transformers serve <converted SmolLM2 folder>` on CPU.

    Yields (base_url, model_name). The server is pinned to the folder it was started with and
    rejects (400) any other model name, so requests must name the folder path exactly.
    A server that does not come up fails the tests that need it, with its log tail.
    """
    folder = str(model_dir(SMOLLM2))
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    log_path = tmp_path_factory.mktemp("openai_server") / "server.log"
    cli = Path(sys.executable).with_name("transformers")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "transformers.cli.transformers"]
    command += ["serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(TEST_THREADS),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    previous_key = os.environ.get(API_KEY_ENV)
    os.environ[API_KEY_ENV] = "sentinel-not-a-real-key"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not _chat_ready(base_url, folder):
            if process.poll() is not None:
                pytest.fail(
                    f"transformers serve exited with code {process.returncode} before it was ready.\n"
                    f"command: {' '.join(command)}\n--- server log tail ---\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    f"transformers serve did not answer POST {base_url}/chat/completions within "
                    f"{SERVER_START_TIMEOUT_S:.0f}s.\ncommand: {' '.join(command)}\n"
                    f"--- server log tail ---\n{_tail(log_path)}"
                )
            time.sleep(1.0)
        yield base_url, folder
    finally:
        if previous_key is None:
            os.environ.pop(API_KEY_ENV, None)
        else:
            os.environ[API_KEY_ENV] = previous_key
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
