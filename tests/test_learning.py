"""The learning log behind learning_curve.png, prompt selection and the reward-rise statistic."""

from __future__ import annotations

import numpy as np
import pytest

from rlprompt.ppo.learning import (
    LearningLog,
    choose_within_se,
    plot_learning_curve,
    reward_rise,
    variance_components,
)
from rlprompt.ppo.run import verdict_line


def test_samples_pool_repeated_draws_and_candidates_put_greedy_first():
    log = LearningLog(keep_samples=2)
    log.record_samples(1, ["ask", "pitch", "ask"], [[1], [2], [1]], [0.8, 0.1, 0.4], [3, 3, 1])
    log.record_samples(2, ["greet"], [[3]], [0.5], [3])
    assert log.samples["ask"].train_reward == pytest.approx((0.8 * 3 + 0.4 * 1) / 4)
    assert log.samples["ask"].conversations == 4
    log.record_greedy(5, "greet", [3])
    texts = [c.text for c in log.candidates()]
    assert texts == ["greet", "ask"]  # greedy first; the top-2 samples (ask 0.7, greet 0.5) deduplicated
    assert log.candidates()[0].source == "greedy@5"
    restored = LearningLog.from_state(log.state_dict())
    assert [c.text for c in restored.candidates()] == texts
    assert restored.samples["ask"].train_reward == log.samples["ask"].train_reward
    off = LearningLog(keep_samples=0)
    off.record_samples(1, ["x"], [[1]], [1.0], [1])
    assert off.samples == {}


def test_reward_rise_compares_last_and_first_windows():
    flat = reward_rise([0.5] * 40)
    assert flat["mean"] == 0.0 and flat["ci_low"] == 0.0 == flat["ci_high"]
    rng = np.random.default_rng(1)
    rising = list(0.3 + rng.normal(0, 0.02, 20)) + list(0.5 + rng.normal(0, 0.02, 20))
    rise = reward_rise(rising)
    assert rise["window"] == 20 and rise["mean"] == pytest.approx(0.2, abs=0.02)
    assert 0.15 < rise["ci_low"] < rise["mean"] < rise["ci_high"] < 0.25
    short = reward_rise([0.1, 0.2, 0.3])
    assert short["mean"] is None  # too few steps for two windows


def test_learning_curve_png_is_written(tmp_path):
    path = tmp_path / "learning_curve.png"
    plot_learning_curve(
        path, list(range(1, 31)), [0.1 + 0.01 * i for i in range(30)], [(10, 0.2), (30, 0.4)], 0.25
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with_greedy = tmp_path / "with_greedy.png"  # optimizer.greedy_in_group: the greedy prompt's line
    plot_learning_curve(
        with_greedy, list(range(1, 31)), [0.1 + 0.01 * i for i in range(30)], [(10, 0.2)], 0.25, [0.5] * 30
    )
    plot_learning_curve(path, list(range(1, 31)), [0.1 + 0.01 * i for i in range(30)], [(10, 0.2)], 0.25)
    assert with_greedy.read_bytes() != path.read_bytes()


def test_verdict_line_states_the_paired_result():
    def summary(low, mean, high):
        entry = {"learned_minus_base": {"mean": mean, "ci_low": low, "ci_high": high}, "learned": {"n": 168}}
        return {"splits": {"test": entry, "test+heldout_persona": entry}}

    assert verdict_line(summary(0.01, 0.04, 0.07)).startswith(
        "The learned prompt BEATS the base instruction on test+heldout_persona: +0.040 [+0.010, +0.070]"
    )
    assert "WORSE" in verdict_line(summary(-0.07, -0.04, -0.01))
    assert verdict_line(summary(-0.02, 0.01, 0.04)).startswith("No detectable difference")


def test_step_diagnostics_count_distinct_prompts_and_near_ties():
    import torch

    from rlprompt.ppo.learning import step_diagnostics

    group = torch.tensor([0, 0, 1, 1, 2])  # group 2 has one member: no spread to measure
    reward = torch.tensor([0.50, 0.51, 0.0, 1.0, 0.3])
    d = step_diagnostics(["a", "b", "a"], group, reward)
    assert d["distinct_prompts"] == 2.0 and d["prompts"] == 3.0
    assert d["group_reward_std"] == pytest.approx((0.005 + 0.5) / 2)
    assert d["near_tie_groups"] == 0.5  # group 0 (std 0.005) is a near-tie, group 1 is not


def test_reward_rise_is_paired_when_the_second_half_replays_the_first():
    """A small real rise under a large scenario effect: the paired CI (step t + h replays step t's
    scenarios) clears 0 where the unpaired one cannot; unmatched scenario ids fall back to unpaired."""
    rng = np.random.default_rng(3)
    scenario_effect = rng.normal(0, 0.15, 18)  # the luck of each step's draw, replayed in the 2nd half
    first = 0.40 + scenario_effect + rng.normal(0, 0.01, 18)
    last = 0.43 + scenario_effect + rng.normal(0, 0.01, 18)
    ids = [[f"s{t}-{c}" for c in range(6)] for t in range(18)]
    rise = reward_rise([*first, *last], scenarios=[*ids, *ids])
    assert rise["paired"] and rise["window"] == 18 and rise["mean"] == pytest.approx(0.03, abs=0.01)
    assert 0 < rise["ci_low"] < rise["mean"] < rise["ci_high"]
    assert rise["unpaired_ci_low"] < 0 < rise["unpaired_ci_high"]
    other = [[f"t{t}-{c}" for c in range(6)] for t in range(18)]
    unpaired = reward_rise([*first, *last], scenarios=[*ids, *other])
    assert not unpaired["paired"] and unpaired["ci_low"] == rise["unpaired_ci_low"]


def test_variance_components_recover_the_prompt_spread_under_reply_noise():
    """A table built from known parts: prompt effects of SD 0.05, scenario effects of SD 0.2 (which
    must not leak into either figure) and reply noise of SD 0.1."""
    rng = np.random.default_rng(0)
    table = rng.normal(0, 0.05, (200, 1)) + rng.normal(0.4, 0.2, (1, 400)) + rng.normal(0, 0.1, (200, 400))
    prompt_sd, residual_sd = variance_components(table)
    assert prompt_sd == pytest.approx(0.05, rel=0.1)
    assert residual_sd == pytest.approx(0.1, rel=0.02)
    # prompts that differ by nothing but noise: the spread estimate is ~0, not the noise's SD/sqrt(S)
    noise_only = rng.normal(0.4, 0.2, (1, 48)) + rng.normal(0, 0.16, (12, 48))
    assert variance_components(noise_only)[0] < 0.02
    with pytest.raises(ValueError, match="2 prompts"):
        variance_components(table[:1])


def test_choose_within_se_ships_the_most_fluent_near_tie_not_a_clearly_worse_one():
    rng = np.random.default_rng(0)
    val_best = 0.45 + rng.normal(0, 0.15, 48)

    def behind(gap: float) -> np.ndarray:  # per-scenario differences of SD 0.1 around `gap`
        jitter = rng.normal(0, 0.1, 48)
        return val_best - gap - (jitter - jitter.mean())

    rewards = [val_best, behind(0.01), behind(0.15)]  # SE of either gap: ~0.014
    assert choose_within_se(rewards, [-3.0, -2.0, -1.0], 1.0) == (1, 0)  # the fluent near-tie
    assert choose_within_se(rewards, [-3.0, -2.0, -1.0], 0.0) == (0, 0)  # 0 SE: the val-best
    assert choose_within_se(rewards, [-1.0, -2.0, -1.0], 1.0) == (0, 0)  # the val-best is the most fluent
