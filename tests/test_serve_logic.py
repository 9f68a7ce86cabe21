"""Logic of the serving gateway without models: shared bandit math, the contextual portfolio, arm
sources (export folders, .txt files, the task), config checks, and the group-commit writer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from rlprompt.cli import check_overrides
from rlprompt.config import config_dir
from rlprompt.errors import ConfigError
from rlprompt.evaluation.export import build_record, write_record
from rlprompt.optimizers.bandit_math import beta_update, beta_update_many, posterior_mean, shrunk_posterior
from rlprompt.prompt_set import PromptSet
from rlprompt.serve import store
from rlprompt.serve.portfolio import Arm, Counts, Portfolio, Snapshot, context_key, portfolio_arms
from rlprompt.task import load_task

TASK = load_task("car_sales")


def test_many_updates_at_once_equal_one_at_a_time():
    alpha, beta = 1.0, 1.0
    for r in (0.25, 0.5, 1.0, 0.0, 0.75):
        alpha, beta = beta_update(alpha, beta, r)
    assert beta_update_many(1.0, 1.0, 2.5, 5) == (alpha, beta) == (3.5, 3.5)
    assert Counts(store.to_nano(2.5), 5).posterior(1.0, 1.0) == (3.5, 3.5)


def test_a_context_without_data_plays_like_the_global_arm_and_data_takes_over():
    alpha, beta = 31.0, 11.0  # global mean 0.738
    a, b = shrunk_posterior(alpha, beta, 0.0, 0.0, strength=20.0)
    assert posterior_mean(a, b) == pytest.approx(posterior_mean(alpha, beta)) and a + b == pytest.approx(20.0)
    a, b = shrunk_posterior(2.0, 1.0, 0.0, 0.0, strength=20.0)  # little global evidence: lend only that
    assert a + b == pytest.approx(3.0)
    a, b = shrunk_posterior(alpha, beta, 5.0, 195.0, strength=20.0)  # 200 context observations at 0.025
    assert posterior_mean(a, b) < 0.1


def _portfolio(arms: list[Arm], counts: dict) -> Portfolio:
    p = Portfolio(contextual=True, strength=5.0, seed=0)
    p.load(Snapshot({a.id: a for a in arms}, counts))
    return p


def _arm(i: int, context: str | None = None, retired: bool = False) -> Arm:
    return Arm(i, f"prompt {i}", "test", context, "manual", None, 1.0, 1.0, 0.0, 1.0 if retired else None)


def test_the_draw_follows_the_context_posterior_and_skips_retired_and_foreign_arms():
    ctx, other = "Newbie|Introduction|low", "Expert|Closing|high"
    counts = {
        (1, ctx): Counts(store.to_nano(1.0), 40),  # arm 1 fails in ctx ...
        (1, other): Counts(store.to_nano(40.0), 40),  # ... and wins elsewhere
        (2, ctx): Counts(store.to_nano(30.0), 40),
        (2, other): Counts(store.to_nano(10.0), 40),
    }
    p = _portfolio([_arm(1), _arm(2), _arm(3, retired=True), _arm(4, context=other)], counts)
    picks = [p.choose(ctx) for _ in range(200)]
    assert picks.count(2) > 180 and 3 not in picks and 4 not in picks
    assert {p.choose(other) for _ in range(200)} <= {1, 2, 4}
    assert p.apply(2, ctx, store.to_nano(0.5)) == 161


def test_context_keys_mark_what_the_request_left_out():
    assert context_key("Newbie", None, "low") == "Newbie|*|low"
    assert context_key(None, None, None) == "*|*|*"


def test_portfolio_arms_from_exports_text_files_and_the_task(tmp_path):
    entry = {"text": "x", "action_ids": [], "system_prompt": "Task-level prompt, learned."}
    prompts = {
        "task": "car_sales", "method": "ppo", "source_model": "s", "target_model": "t", "action_space": "tokens",
        "conditioning": "context_conditioned", "prompt_template": "{learned}", "base_instruction": "b",
        "task_level": entry,
        "per_context": {"Newbie|Introduction|low": {**entry, "system_prompt": "For newbies, gently."}},
    }  # fmt: skip
    write_record(build_record(PromptSet.from_dict(prompts)), tmp_path / "export")
    (tmp_path / "mine.txt").write_text("A hand-written prompt.\n")
    specs = portfolio_arms([str(tmp_path / "export"), str(tmp_path / "mine.txt")], ["Inline prompt."], TASK)
    assert [(s.text, s.context, s.origin) for s in specs] == [
        ("Task-level prompt, learned.", None, "export"),
        ("For newbies, gently.", "Newbie|Introduction|low", "export"),
        ("A hand-written prompt.", None, "manual"),
        ("Inline prompt.", None, "manual"),
    ]
    assert [s.text for s in portfolio_arms([], [], TASK)] == [TASK.base_instruction, *TASK.seed_prompts]
    other = json.loads((tmp_path / "export" / "prompts.export.json").read_text()) | {"task": "saas_renewal"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ConfigError, match="saas_renewal"):
        portfolio_arms([str(tmp_path / "other.json")], [], TASK)


def test_a_typo_in_serve_fails_at_start_up_listing_the_valid_keys():
    with pytest.raises(
        ConfigError, match=r"'serve' has no field 'prot'.*Did you mean 'serve.port'.*database"
    ):
        check_overrides(["serve.prot=8000"], [config_dir()])
    check_overrides(["serve.port=8001", "serve.database=sqlite:///x.sqlite"], [config_dir()])


def test_the_writer_acknowledges_after_commit_and_isolates_a_failing_op(tmp_path):
    engine = store.make_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    store.migrate(engine)
    store.migrate(engine)  # idempotent: a restart migrates nothing
    writer = store.Writer(engine)
    seen: list[int] = []

    def insert(i: int):
        def op(conn):
            if i == 3:
                raise ValueError("bad op")
            conn.execute(
                store.evolution.insert().values(round=i, kind="born", text="t", reason="r", created_at=0.0)
            )
            return i

        return op

    futures = [writer.submit(insert(i), after=seen.append) for i in range(8)]
    results = []
    for f in futures:
        try:
            results.append(f.result(timeout=30))
        except ValueError:
            results.append("failed")
    writer.stop()
    assert results == [0, 1, 2, "failed", 4, 5, 6, 7] and sorted(seen) == [0, 1, 2, 4, 5, 6, 7]
    with engine.connect() as conn:
        rounds = sorted(r for (r,) in conn.execute(sa.select(store.evolution.c.round)))
    assert rounds == [0, 1, 2, 4, 5, 6, 7]
    assert np.all(np.diff(rounds) > 0)


def test_migrations_ship_inside_the_package():
    from importlib import resources

    folder = resources.files("rlprompt.serve") / "migrations"
    assert (folder / "env.py").is_file() and (folder / "script.py.mako").is_file()
    assert any(p.name.startswith("0001") for p in (folder / "versions").iterdir())
