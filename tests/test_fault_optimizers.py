"""Kill and resume for the prompt-search optimizers (OPRO, Thompson-sampling bandit).

Each runs in a subprocess through `run_optimizer` with fake, slightly slow targets (an echo target
and a scripted optimizer LLM, as in tests/test_optimizers.py), is killed with SIGKILL after it has
paid for replies beyond its last saved state, and resumes with `resume=<run dir>`. It must pick
the same prompt and reach the same rewards as an uninterrupted run, and the replies the killed
process paid for come from the run's private cache: exactly that many fewer calls.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from rlprompt.build import TARGETS
    from rlprompt.config import validate
    from rlprompt.optimizers import run_optimizer
    from rlprompt.targets.base import Reply

    class SlowEcho:
        target_id = "slow-echo"
        def generate(self, conversations, params):
            time.sleep(0.05)
            return [Reply((c[0]["content"] if c[0]["role"] == "system" else "") + " " + c[-1]["content"], 0, 0)
                    for c in conversations]

    class SlowScripted:
        target_id = "slow-scripted"
        def generate(self, conversations, params):
            time.sleep(0.05)
            return [Reply(f"<INS>Greet the customer, ask one question, offer a test drive (v{params.seed % 5}).</INS>", 0, 0)
                    for _ in conversations]

    TARGETS.register("slow_echo")(lambda cfg, retry_counter: SlowEcho())
    TARGETS.register("slow_scripted")(lambda cfg, retry_counter: SlowScripted())
    name, run_dir, steps, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    config = {
        "target": {"name": "slow_echo"},
        "reward": {"modules": {"rubric": 1.0, "length": 0.5}},
        "optimizer": {"name": name, "steps": steps, "score_subset": 3, "optimizer_target": "slow_scripted",
                      **({"retire_every": 6, "portfolio_size": 8} if name == "bandit" else {})},
        "cache": {"path": str(Path(run_dir).parent / (Path(run_dir).name + "-shared.sqlite"))},
        "threads": 1,
    }
    if resume:
        config["resume"] = run_dir
    result = run_optimizer(validate(config), Path(run_dir))
    print("RESULT " + json.dumps(result.to_dict()))
    """
)
STATE = {"opro": "opro_state.json", "bandit": "bandit_state.json"}
STEPS = {"opro": 3, "bandit": 30}


def start(name: str, run_dir: Path, resume: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, name, str(run_dir), str(STEPS[name]), "1" if resume else "0"],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def result_of(process: subprocess.Popen) -> dict:
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-3000:]
    [line] = [line for line in out.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :])


def paid_in_state(state: dict) -> int:
    return sum(state[k]["calls"] for k in ("target_counter", "llm_counter") if k in state)


def progress(state: dict) -> int:
    return max(int(state.get(k) or 0) for k in ("step", "t", "round"))


def rows(cache: Path) -> int:
    if not cache.exists():
        return 0
    conn = sqlite3.connect(cache, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def read_state(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None  # written atomically


@pytest.mark.parametrize("name", ["opro", "bandit"])
def test_optimizer_killed_mid_step_resumes_to_the_same_result(tmp_path, name):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full = start(name, full_dir)
    killed = start(name, split_dir)
    state_file, cache = split_dir / STATE[name], split_dir / "responses.sqlite"  # the private cache
    deadline = time.monotonic() + 120
    while True:
        assert killed.poll() is None, f"{name} ended before the kill point: {killed.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "no kill point reached"
        state = read_state(state_file)
        if state and progress(state) >= 1 and rows(cache) > paid_in_state(state):
            os.killpg(killed.pid, signal.SIGKILL)
            killed.communicate()
            break
        time.sleep(0.01)
    state = read_state(state_file)
    paid_after_state = rows(cache) - paid_in_state(state)
    assert paid_after_state > 0

    resumed = result_of(start(name, split_dir, resume=True))
    expected = result_of(full)
    assert resumed["prompts"] == expected["prompts"]
    assert [r for _, r in resumed["curve"]] == [r for _, r in expected["curve"]]
    assert {k: v for k, v in resumed["extra"].items() if "call" not in k} == {
        k: v for k, v in expected["extra"].items() if "call" not in k
    }
    spent = resumed["target_calls"] + resumed["optimizer_llm_calls"]
    assert spent == expected["target_calls"] + expected["optimizer_llm_calls"] - paid_after_state
