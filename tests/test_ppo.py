"""rlprompt/ppo/losses.py against hand-computed numbers."""

import math

import pytest
import torch

from rlprompt.ppo import losses as ppo


def test_linear_shaping_maps_range_onto_zero_to_scale():
    r = torch.tensor([0.0, 0.5, 1.0])
    assert ppo.linear_shaping(r, 0.0, 1.0, 5.0).tolist() == [0.0, 2.5, 5.0]
    # a reward range of [-1, 3]: -1 → 0, 1 → 2.5, 3 → 5
    assert ppo.linear_shaping(torch.tensor([-1.0, 1.0, 3.0]), -1.0, 3.0, 5.0).tolist() == [0.0, 2.5, 5.0]


def test_zscore_per_group_matches_rlprompt_formula():
    reward = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 7.0])
    group = torch.tensor([0, 0, 0, 1, 1, 2])
    z = ppo.zscore_per_group(reward, group)
    # group 0: mean 2, population std sqrt(2/3) → (r - 2) / (0.8165 + 1e-4)
    std = math.sqrt(2 / 3)
    assert z[:3].tolist() == pytest.approx([-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4)], rel=1e-6)
    # group 1: identical rewards → std 0 → 0 / 1e-4 = 0 (no signal, no blow-up)
    assert z[3:5].tolist() == [0.0, 0.0]
    # group of one: no competing prompt, advantage 0
    assert z[5].item() == 0.0


def test_zscore_std_floor_keeps_near_ties_small():
    # group 0 barely differs (std 0.01), group 1 clearly (std 1.0); floor 0.5
    reward = torch.tensor([1.00, 1.02, 0.0, 2.0])
    group = torch.tensor([0, 0, 1, 1])
    plain = ppo.zscore_per_group(reward, group)
    floored = ppo.zscore_per_group(reward, group, min_std=0.5)
    assert plain[:2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-2)  # noise blown up to +-1
    assert floored[:2].tolist() == pytest.approx([-0.01 / 0.5, 0.01 / 0.5], rel=1e-3)
    assert floored[2:].tolist() == pytest.approx(plain[2:].tolist())  # above the floor: unchanged
    cfg = ppo.StabilizerConfig(shaping=False, zscore=True, reward_clip=0.0, zscore_min_std=0.5)
    assert ppo.stabilize(reward, group, 0.0, 2.0, cfg).tolist() == pytest.approx(floored.tolist())


def test_clip_rewards_and_switch_off():
    r = torch.tensor([-5.0, 0.5, 4.0])
    assert ppo.clip_rewards(r, 3.0).tolist() == [-3.0, 0.5, 3.0]
    assert ppo.clip_rewards(r, 0.0).tolist() == r.tolist()


def test_stabilize_stages_switch_off_independently():
    r = torch.tensor([0.2, 0.4, 0.9, 0.1])
    g = torch.tensor([0, 0, 1, 1])
    raw = ppo.stabilize(r, g, 0.0, 1.0, ppo.StabilizerConfig(shaping=False, zscore=False, reward_clip=0.0))
    assert raw.tolist() == pytest.approx(r.tolist())
    shaped = ppo.stabilize(r, g, 0.0, 1.0, ppo.StabilizerConfig(shaping=True, zscore=False, reward_clip=0.0))
    assert shaped.tolist() == pytest.approx([1.0, 2.0, 4.5, 0.5])
    full = ppo.stabilize(r, g, 0.0, 1.0, ppo.StabilizerConfig(shaping=True, zscore=True, reward_clip=0.5))
    # each group of two z-scores to ∓1 (population std), then clipped to ±0.5
    assert full.tolist() == pytest.approx([-0.5, 0.5, 0.5, -0.5], abs=1e-3)


def test_clipped_policy_loss_hand_computed():
    old = torch.log(torch.tensor([[0.5, 0.5]]))
    new = torch.log(torch.tensor([[0.75, 0.25]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, 1.0]])
    loss, diag = ppo.clipped_policy_loss(new, old, adv, clip_eps=0.2)
    # token 1: max(-1.5, -1.2) = -1.2 ; token 2: max(-0.5, -0.8) = -0.5 → mean -0.85
    assert loss.item() == pytest.approx(-0.85)
    assert diag["clipfrac"].item() == 1.0
    # approx KL (k3): mean((r - 1) - log r) = ((0.5 - ln 1.5) + (-0.5 - ln 0.5)) / 2
    expected = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2
    assert diag["approx_kl"].item() == pytest.approx(expected, rel=1e-5)
    # negative advantage: the pessimistic bound takes the unclipped 1.5 ratio
    loss_neg, _ = ppo.clipped_policy_loss(new, old, -adv, clip_eps=0.2)
    assert loss_neg.item() == pytest.approx((1.5 + 0.8) / 2)


def test_kl_to_reference_exact():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.4, 0.4, 0.2])
    expected = float((p * (p / q).log()).sum())
    got = ppo.kl_to_reference(p.log()[None, None], q.log()[None, None])
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert ppo.kl_to_reference(p.log()[None, None], p.log()[None, None]).item() == pytest.approx(
        0.0, abs=1e-7
    )


def test_ppo_loss_combines_terms_with_signs():
    total = ppo.ppo_loss(
        torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), kl_coef=0.1, entropy_coef=0.01
    )
    assert total.item() == pytest.approx(1.0 + 0.2 - 0.03)


def test_sequence_advantages_broadcast_over_tokens():
    adv = ppo.sequence_advantages(torch.tensor([1.0, -2.0]), 3)
    assert adv.tolist() == [[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]]


def test_masked_mean_ignores_masked_positions():
    x = torch.tensor([[1.0, 100.0], [3.0, 5.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    assert ppo.masked_mean(x, mask).item() == pytest.approx(3.0)


def test_warmup_lr_ramps_linearly_then_holds():
    assert [ppo.warmup_lr(1e-4, step, 4) for step in range(6)] == pytest.approx(
        [2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4]
    )
    assert ppo.warmup_lr(1e-4, 0, 0) == 1e-4  # 0 switches the ramp off
