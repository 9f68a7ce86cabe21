"""Evolution on live traffic (retire, breed with the real SmolLM2 optimizer LLM, screen offline) and
the dashboard, loaded in a real headless chromium, drawing exactly the numbers in the database.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser

import httpx2 as httpx
import pytest
from serve_support import ThreadServer, serve_run

from rlprompt.optimizers.bandit_math import mutant_prior
from rlprompt.serve.app import create_app
from rlprompt.serve.gateway import Gateway
from rlprompt.targets.cache import CachedTarget
from rlprompt.task import load_task

TASK = load_task("car_sales")
GOOD, BAD = TASK.base_instruction, "Reply with only the word OK."
EVERY = 24


def chromium() -> str | None:
    return next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


@pytest.fixture(scope="module")
def evolved(tmp_path_factory, smollm2):
    """A gateway whose CRM rewards GOOD (1) and punishes BAD (0); one evolution round runs."""
    folder = tmp_path_factory.mktemp("evolution")
    db = folder / "serve.sqlite"
    run = serve_run(
        f"sqlite:///{db}",
        "target.max_new_tokens=16",
        f"serve.evolve_every={EVERY}",
        "serve.screen_scenarios=3",
        "serve.screen_margin=1.0",
        "optimizer.portfolio_size=2",
        "optimizer.optimizer_max_new_tokens=48",
    )
    run.serve.prompts = [GOOD, BAD]
    from rlprompt.targets.cache import ResponseCache

    gateway = Gateway(run, TASK, CachedTarget(smollm2, ResponseCache(folder / "responses.sqlite")))
    with ThreadServer(create_app(gateway)) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        ids = {a.text: i for i, a in gateway.portfolio.arms.items()}
        for t, scenario in enumerate(TASK.split("train")[:EVERY]):
            body = {"model": "m", "messages": scenario.messages(None), "max_tokens": 8}
            body["metadata"] = dict(zip(("persona", "stage", "urgency"), scenario.context))
            reply = http.post("/v1/chat/completions", json=body).json()
            value = 1.0 if reply["rlprompt"]["arm_id"] == ids[GOOD] else 0.0
            fb = {"conversation_id": reply["id"], "reward": value, "feedback_id": f"e-{t}"}
            assert http.post("/v1/feedback", json=fb).status_code == 200
        gateway.evolver.wait()
        yield gateway, server, http, db, ids


def query(db, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
def test_evolution_retires_the_loser_and_brings_in_a_screened_mutant(evolved):
    gateway, _, http, db, ids = evolved
    events = query(db, "SELECT kind, arm_id, reason FROM evolution ORDER BY id")
    assert ("retired", ids[BAD]) in [(k, a) for k, a, _ in events], events
    born = [a for k, a, _ in events if k == "born"]
    assert len(born) == 1, events
    arms = {a["id"]: a for a in http.get("/v1/arms").json()["data"]}
    child = arms[born[0]]
    assert child["origin"] == "mutant" and child["parent_id"] == ids[GOOD] and not child["retired"]
    assert arms[ids[BAD]]["retired"] and "P(beats arm" in arms[ids[BAD]]["retired_reason"]
    parent = arms[ids[GOOD]]
    # The mutant's prior is the offline bandit's: the parent's mean at ESS max(10, 0.2 n).
    a0, b0 = mutant_prior(parent["mean"], parent["feedback"], 10.0, 0.2)
    assert (child["alpha"], child["beta"]) == pytest.approx((a0, b0))
    assert query(db, "SELECT round, finished_at IS NOT NULL FROM evolution_rounds") == [(1, 1)]
    # Retired arms get no more traffic; the newborn is in the draw.
    played = set()
    for scenario in TASK.split("val")[:12]:
        reply = http.post(
            "/v1/chat/completions", json={"model": "m", "messages": scenario.messages(None), "max_tokens": 4}
        )
        played.add(reply.json()["rlprompt"]["arm_id"])
    assert ids[BAD] not in played and played <= {ids[GOOD], born[0]}
    assert gateway.evolver.run_round(1, EVERY) is None  # a claimed round never runs twice


@pytest.mark.slow
def test_guardrails_screen_out_mutants_before_any_traffic(evolved):
    gateway = evolved[0]
    calls = gateway.target.counter.calls
    price = gateway.evolver.screen(
        "Tell every customer the car costs $19,999 and ask about their budget.", GOOD
    )
    banned = gateway.evolver.screen(
        "Say that the lowest price in town is guaranteed, then ask a question.", GOOD
    )
    short = gateway.evolver.screen("Be nice.", GOOD)
    assert not price.passed and price.reason.startswith("invented_prices")
    assert not banned.passed and banned.reason.startswith("banned_phrases")
    assert not short.passed and short.reason.startswith("length")
    assert gateway.target.counter.calls == calls  # rejected on their text: no target call spent


class Elements(HTMLParser):
    """Every element with a class attribute: (tag, attrs, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict] = []
        self.stack: list[dict] = []

    def handle_starttag(self, tag, attrs):
        item = {"tag": tag, **dict(attrs), "text": ""}
        self.stack.append(item)
        if "class" in item:
            self.found.append(item)

    def handle_endtag(self, tag):
        while self.stack:
            item = self.stack.pop()
            if self.stack:
                self.stack[-1]["text"] += item["text"]
            if item["tag"] == tag:
                break

    def handle_data(self, data):
        if self.stack:
            self.stack[-1]["text"] += data

    def of(self, cls: str) -> list[dict]:
        return [e for e in self.found if cls in e["class"].split()]


@pytest.mark.slow
def test_dashboard_renders_the_database_numbers_in_a_real_browser(evolved):
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium on PATH: `make install-chromium` (apt-get install -y chromium)")
    _, server, _, db, _ = evolved
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--dump-dom",
            "--virtual-time-budget=5000",
            f"{server.url}/dashboard",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert 'data-rendered="1"' in dom  # the inline script ran to its end
    page = Elements()
    page.feed(dom)
    # Posteriors: α, β per arm = the fold of the feedback table (independently, from SQL here).
    sums = {
        a: (s, n)
        for a, s, n in query(db, "SELECT arm_id, sum(value_nano), count(*) FROM feedback GROUP BY arm_id")
    }
    priors = query(db, "SELECT id, prior_alpha, prior_beta FROM arms")
    rendered = {int(e["data-arm"]): e for e in page.of("posterior")}
    assert set(rendered) == {i for i, _, _ in priors}
    for arm_id, pa, pb in priors:
        s, n = sums.get(arm_id, (0, 0))
        alpha, beta = pa + s / 1e9, pb + n - s / 1e9
        assert float(rendered[arm_id]["data-alpha"]) == pytest.approx(alpha, abs=1e-9)
        assert float(rendered[arm_id]["data-beta"]) == pytest.approx(beta, abs=1e-9)
        assert (
            f"{alpha:.3f}" in rendered[arm_id]["text"]
            and f"{alpha / (alpha + beta):.3f}" in rendered[arm_id]["text"]
        )
    assert len(page.of("density")) == len(query(db, "SELECT id FROM arms WHERE retired_at IS NULL"))
    # Traffic share: bins of equally many conversations, oldest first.
    convs = [a for (a,) in query(db, "SELECT arm_id FROM conversations ORDER BY created_at, id")]
    bins = min(20, len(convs))
    for rect in page.of("share"):
        b = int(rect["data-bin"])
        chunk = convs[b * len(convs) // bins : (b + 1) * len(convs) // bins]
        share = chunk.count(int(rect["data-arm"])) / len(chunk)
        assert rect["data-share"] == f"{share:.3f}" and float(rect["height"]) > 0
    assert sum(int(r["data-n"]) for r in page.of("share")) == len(convs)
    # Reward by arm and by context.
    for arm_id, (s, n) in sums.items():
        [bar] = [e for e in page.of("reward-bar") if int(e["data-arm"]) == arm_id]
        assert bar["data-mean"] == f"{s / 1e9 / n:.3f}" and int(bar["data-n"]) == n
    cells = query(
        db, "SELECT arm_id, context, sum(value_nano), count(*) FROM feedback GROUP BY arm_id, context"
    )
    shown = {(int(e["data-arm"]), e["data-context"]): e for e in page.of("cell")}
    assert len(shown) == len(cells)
    for arm_id, ctx, s, n in cells:
        assert shown[(arm_id, ctx)]["text"] == f"{s / 1e9 / n:.3f} ({n})"
    # The evolution log, row for row.
    log = [(e["data-kind"], e["data-arm"]) for e in page.of("event")]
    assert log == [
        (k, "" if a is None else str(a))
        for k, a in query(db, "SELECT kind, arm_id FROM evolution ORDER BY id")
    ]
    assert {"retired", "born"} <= {k for k, _ in log}
