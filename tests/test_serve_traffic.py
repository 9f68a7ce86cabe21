"""A simulated traffic run: 1,000 conversations drawn from the task's scenarios, through the
gateway over HTTP, replies from the real SmolLM2 target, scored by the real reward modules, with
feedback arriving late and out of order. Traffic must shift to the best arm; the run prints the
final share and the regret against always playing the best arm.

Affordable on 2 cores: greedy decoding and the response cache. Every (arm, scenario) reply is
generated once, batched, through the very `CachedTarget` the gateway uses (same cache key), so the
1,000 conversations replay real target replies instead of regenerating them.
"""

from __future__ import annotations

import collections
import random

import httpx2 as httpx
import numpy as np
import pytest
from serve_support import ThreadServer, serve_run

from rlprompt.rewards.base import Sample
from rlprompt.rewards.factory import reward_from_config
from rlprompt.serve.app import create_app
from rlprompt.serve.gateway import Gateway
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.cache import CachedTarget
from rlprompt.task import load_task

TASK = load_task("car_sales")
CONVERSATIONS, POOL, MAX_TOKENS, MAX_DELAY = 1000, 12, 32, 40
ARMS = [
    TASK.base_instruction,
    TASK.seed_prompts[4],
    "Reply with only the word OK.",
    "Begin every reply with: 'As an AI language model, I am unable to help with buying a car.' Then stop.",
]


@pytest.mark.slow
def test_traffic_shifts_to_the_best_arm_under_delayed_feedback(tmp_path, smollm2, tmp_cache, capsys):
    db = tmp_path / "traffic.sqlite"
    run = serve_run(f"sqlite:///{db}", f"target.max_new_tokens={MAX_TOKENS}", "serve.evolve_every=0")
    run.serve.prompts = list(ARMS)
    target = CachedTarget(smollm2, tmp_cache)
    pool = random.Random(0).sample(TASK.split("train"), POOL)
    params = GenerationParams(max_new_tokens=MAX_TOKENS)
    reward = reward_from_config(run.reward, TASK, None).reward
    low, high = reward.bounds()

    def score(scenario, reply: str) -> float:
        convo = [
            *scenario.history,
            {"role": "user", "content": scenario.customer},
            {"role": "assistant", "content": reply},
        ]
        return (float(reward.score([Sample(scenario, convo)]).total[0]) - low) / (high - low)

    # The expected reward of each arm over the scenario pool (real replies, generated once).
    true_mean = {}
    for text in ARMS:
        replies = target.generate([s.messages(text) for s in pool], params)
        true_mean[text] = float(np.mean([score(s, r.text) for s, r in zip(pool, replies)]))
    best_text = max(true_mean, key=true_mean.get)
    calls_before = target.counter.calls

    gateway = Gateway(run, TASK, target)
    arm_text = {i: a.text for i, a in gateway.portfolio.arms.items()}
    rng = random.Random(1)
    played: list[str] = []
    pending: list[tuple[int, int, str, float]] = []  # (due at conversation t, order, conversation id, reward)
    scored: dict[tuple[str, str], float] = {}
    sent_order: list[int] = []
    with ThreadServer(create_app(gateway)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        for t in range(CONVERSATIONS):
            scenario = rng.choice(pool)
            body = {
                "model": "sim",
                "messages": scenario.messages(None),
                "max_tokens": MAX_TOKENS,
                "metadata": dict(zip(("persona", "stage", "urgency"), scenario.context)),
            }
            reply = http.post("/v1/chat/completions", json=body).json()
            text = arm_text[reply["rlprompt"]["arm_id"]]
            played.append(text)
            content = reply["choices"][0]["message"]["content"]
            key = (scenario.id, content)
            if key not in scored:
                scored[key] = score(scenario, content)
            pending.append((t + rng.randint(1, MAX_DELAY), t, reply["id"], scored[key]))
            due = sorted(p for p in pending if p[0] <= t)
            pending = [p for p in pending if p[0] > t]
            for _, order, cid, value in due:
                fb = http.post(
                    "/v1/feedback",
                    json={"conversation_id": cid, "reward": value, "feedback_id": f"sim-{order}"},
                )
                assert fb.status_code == 200, fb.text
                sent_order.append(order)
        for _, order, cid, value in sorted(pending):
            assert (
                http.post(
                    "/v1/feedback",
                    json={"conversation_id": cid, "reward": value, "feedback_id": f"sim-{order}"},
                ).status_code
                == 200
            )
            sent_order.append(order)
        arms = http.get("/v1/arms").json()["data"]
    gateway.close()

    assert target.counter.calls == calls_before  # every live reply was a real, cached target reply
    assert sum(a["feedback"] for a in arms) == CONVERSATIONS
    assert sum(a["conversations"] for a in arms) == CONVERSATIONS
    assert sent_order != sorted(sent_order)  # feedback arrived out of order, after later conversations
    first, last = played[:250], played[-250:]
    share_first, share_last = first.count(best_text) / 250, last.count(best_text) / 250
    best = max(true_mean.values())
    regret = sum(best - true_mean[text] for text in played)
    uniform_regret = CONVERSATIONS * float(np.mean([best - m for m in true_mean.values()]))
    shares = collections.Counter(played)
    with capsys.disabled():
        print("\ntraffic run: expected normalized reward per arm, share of all 1,000 conversations")
        for text in ARMS:
            print(f"  {true_mean[text]:.3f}  {shares[text] / CONVERSATIONS:6.1%}  {text[:70]!r}")
        print(
            f"  best arm share: first 250 {share_first:.1%} → last 250 {share_last:.1%}; "
            f"regret {regret:.1f} vs {uniform_regret:.1f} for uniform play ({regret / uniform_regret:.2f}x)"
        )
    assert share_last > 1 / len(ARMS) and share_last > share_first
    assert regret < 0.75 * uniform_regret
