"""What a run learned, step by step: the reward curve, the greedy prompt at checkpoints, and the
best-rewarded sampled prompts — the raw material for `learning_curve.png`, for the
"did the training reward rise" statistic and for picking the shipped prompt on `val`.

Kept apart from the PPO loop so the loop stays one screen long; checkpointed with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

NEAR_TIE = 0.02  # raw-reward std below which a group's prompts score alike (diagnostics only)


@dataclass
class Candidate:
    """A task-level prompt the run produced, with what training saw of it."""

    text: str
    action_ids: list[int]
    source: str  # "greedy@<step>", "sample@<step>", or "trimmed <source>" (selection)
    train_reward: float | None = None  # mean raw training reward of its conversations (samples)
    conversations: int = 0


@dataclass
class LearningLog:
    """Per-step training reward, greedy prompts at checkpoints, and the top sampled prompts."""

    keep_samples: int = 0
    steps: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)  # mean raw reward of each step's conversations
    diagnostics: list[dict[str, float]] = field(default_factory=list)  # per step (trainer.step_diagnostics)
    scenarios: list[list[str]] = field(default_factory=list)  # ids of each step's scenarios (all ranks)
    greedy: list[Candidate] = field(default_factory=list)
    samples: dict[str, Candidate] = field(default_factory=dict)  # text → best-known sample

    def record_step(
        self,
        step: int,
        mean_reward: float,
        diagnostics: dict[str, float] | None = None,
        scenario_ids: list[str] | None = None,
    ) -> None:
        self.steps.append(step)
        self.reward.append(mean_reward)
        self.diagnostics.append(diagnostics or {})
        self.scenarios.append(list(scenario_ids or []))

    def record_samples(
        self, step: int, prompts: list[str], ids: list[list[int]], rewards: list[float], n: list[int]
    ) -> None:
        """Pool each sampled prompt's conversations (a prompt sampled twice averages both draws)."""
        if self.keep_samples <= 0:
            return
        for text, action_ids, reward, count in zip(prompts, ids, rewards, n):
            known = self.samples.get(text)
            if known is None:
                self.samples[text] = Candidate(text, action_ids, f"sample@{step}", reward, count)
            else:
                total = known.conversations + count
                known.train_reward = (known.train_reward * known.conversations + reward * count) / total
                known.conversations = total
        if len(self.samples) > 50 * self.keep_samples:  # bounded memory over long runs
            best = sorted(self.samples.values(), key=lambda c: -c.train_reward)[: 10 * self.keep_samples]
            self.samples = {c.text: c for c in best}

    def record_greedy(self, step: int, text: str, action_ids: list[int]) -> None:
        self.greedy.append(Candidate(text, action_ids, f"greedy@{step}"))

    def greedy_rewards(self) -> list[float] | None:
        """The greedy prompt's reward per step on the step's scenarios (`optimizer.greedy_in_group`),
        or None when it did not compete at every step."""
        rewards = [d.get("greedy_reward") for d in self.diagnostics]
        return None if not rewards or None in rewards else rewards

    def candidates(self) -> list[Candidate]:
        """Distinct prompts to compare on val: every greedy checkpoint, then the top samples."""
        top = sorted(self.samples.values(), key=lambda c: -c.train_reward)[: self.keep_samples]
        seen: dict[str, Candidate] = {}
        for candidate in [*self.greedy, *top]:
            seen.setdefault(candidate.text, candidate)
        return list(seen.values())

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> LearningLog:
        log = cls(state["keep_samples"], state["steps"], state["reward"], state["diagnostics"])
        log.scenarios = state.get("scenarios") or [[] for _ in log.steps]  # older checkpoints: none
        log.greedy = [Candidate(**c) for c in state["greedy"]]
        log.samples = {k: Candidate(**c) for k, c in state["samples"].items()}
        return log


def step_diagnostics(prompts: list[str], group: torch.Tensor, raw_reward: torch.Tensor) -> dict[str, float]:
    """Why a step does or does not teach (docs/LEARNING.md): how many distinct prompts competed,
    how far apart their rewards were on one scenario, and how many groups were near-ties.

    prompts: (B,); group: (N,) z-score group of each conversation; raw_reward: (N,).
    """
    stds = [
        float(raw_reward[group == g].std(unbiased=False))
        for g in torch.unique(group)
        if int((group == g).sum()) > 1
    ]
    return {
        "distinct_prompts": float(len(set(prompts))),
        "prompts": float(len(prompts)),
        "group_reward_std": sum(stds) / len(stds) if stds else 0.0,
        "near_tie_groups": sum(s < NEAR_TIE for s in stds) / len(stds) if stds else 0.0,
    }


def reward_rise(
    reward: list[float],
    window: int = 20,
    n_boot: int = 2000,
    confidence: float = 0.95,
    scenarios: list[list[str]] | None = None,
) -> dict:
    """Mean of the last `window` steps minus the first `window`, with a bootstrap CI.

    Unpaired (steps resampled within each window) unless the run replayed its scenarios: when the
    two windows are the run's two halves and step t + window answered exactly the scenarios of step
    t (`optimizer.paired_halves`), the CI resamples the `window` paired differences instead, so the
    luck of a step's scenario draw cancels (common random numbers; the same paired design as the
    held-out test). The unpaired CI is reported alongside either way.
    """
    values = np.asarray(reward, dtype=float)
    window = min(window, len(values) // 2)
    if window < 2:
        return {"window": window, "first": None, "last": None, "mean": None, "ci_low": None, "ci_high": None}
    first, last = values[:window], values[-window:]
    rng = np.random.default_rng(0)
    alpha = (1 - confidence) / 2
    unpaired = rng.choice(last, (n_boot, window)).mean(1) - rng.choice(first, (n_boot, window)).mean(1)
    paired = replays_first_half(scenarios, window, len(values))
    if paired:
        differences = last - first  # step window + t replayed step t's scenarios
        draws = differences[rng.integers(0, window, (n_boot, window))].mean(1)
    else:
        draws = unpaired
    return {
        "window": window,
        "first": float(first.mean()),
        "last": float(last.mean()),
        "mean": float(last.mean() - first.mean()),
        "ci_low": float(np.quantile(draws, alpha)),
        "ci_high": float(np.quantile(draws, 1 - alpha)),
        "paired": paired,
        "unpaired_ci_low": float(np.quantile(unpaired, alpha)),
        "unpaired_ci_high": float(np.quantile(unpaired, 1 - alpha)),
    }


def variance_components(rewards: np.ndarray) -> tuple[float, float]:
    """(prompt SD, residual SD) of a prompts × scenarios reward table (every prompt on the same
    scenarios): the two-way random-effects ANOVA without replication, E[MS_prompt] = σ²_res +
    S·σ²_prompt and E[MS_residual] = σ²_res. The prompt SD is the spread PPO can learn to prefer;
    the residual is one reply's noise that the per-scenario z-score cannot remove
    (benchmarks/prompt_spread.py, docs/LEARNING.md §4k)."""
    n, s = rewards.shape
    if n < 2 or s < 2:
        raise ValueError(f"variance_components needs >= 2 prompts and >= 2 scenarios, got {n} x {s}")
    grand = rewards.mean()
    residual = rewards - rewards.mean(1, keepdims=True) - rewards.mean(0, keepdims=True) + grand
    ms_residual = float((residual**2).sum() / ((n - 1) * (s - 1)))
    ms_prompt = float(s * ((rewards.mean(1) - grand) ** 2).sum() / (n - 1))
    return max(0.0, (ms_prompt - ms_residual) / s) ** 0.5, ms_residual**0.5


def choose_within_se(
    val_rewards: list[np.ndarray], preference: list[float], within_se: float
) -> tuple[int, int]:
    """(the chosen candidate, the val-best): among the candidates whose val mean trails the
    val-best's by at most `within_se` standard errors of their paired difference, the one with the
    highest `preference` (ties: the higher val mean). `within_se=0` is the plain val-best.

    The one-standard-error rule of model selection (Breiman et al. 1984, CART §3.4.3; Hastie,
    Tibshirani & Friedman, The Elements of Statistical Learning §7.10), with the sentence's
    fluency under the frozen LM in place of simplicity: on 48 val scenarios candidates often differ
    by less than their noise, and then the val-best is a coin toss while a natural sentence is not.
    val_rewards: one (N,) array per candidate, on the same N scenarios.
    """
    means = [float(r.mean()) for r in val_rewards]
    best = max(range(len(means)), key=means.__getitem__)
    eligible = []
    for i, rewards in enumerate(val_rewards):
        gap = val_rewards[best] - rewards
        se = float(gap.std(ddof=1)) / len(gap) ** 0.5 if len(gap) > 1 else 0.0
        if gap.mean() <= within_se * se:
            eligible.append(i)
    return max(eligible, key=lambda i: (preference[i], means[i])), best


def replays_first_half(scenarios: list[list[str]] | None, window: int, n_steps: int) -> bool:
    """True when the windows are the two halves and every step of the second half answered exactly
    the scenarios of its partner in the first (checked on the recorded ids, not assumed)."""
    if not scenarios or len(scenarios) != n_steps or 2 * window != n_steps:
        return False
    return all(scenarios[t] and scenarios[t] == scenarios[t + window] for t in range(window))


def plot_learning_curve(
    path: Path,
    steps: list[int],
    reward: list[float],
    checkpoints: list[tuple[int, float]],
    base_val: float | None,
    greedy_reward: list[float] | None = None,
) -> None:
    """Training reward per step, its moving average, and the greedy prompt's val reward at
    checkpoints; with `optimizer.greedy_in_group`, also the greedy prompt's moving-average reward
    on the steps' own scenarios (what the shipped prompt earns while the samples compete with it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    ax.plot(steps, reward, color="#9bbbd9", linewidth=1, label="training reward (step mean)")
    if len(reward) >= 3:
        width = max(3, min(10, len(reward) // 5))
        smooth = np.convolve(reward, np.ones(width) / width, mode="valid")
        ax.plot(
            steps[width - 1 :],
            smooth,
            color="#1f5f99",
            linewidth=2.2,
            label=f"moving average ({width} steps)",
        )
    if greedy_reward and len(greedy_reward) == len(steps) and len(steps) >= 3:
        width = max(3, min(10, len(steps) // 5))
        smooth = np.convolve(greedy_reward, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1 :], smooth, color="#2e8b57", linewidth=1.6, linestyle="-.",
                label=f"greedy prompt on the steps' scenarios ({width}-step average)")  # fmt: skip
    if checkpoints:
        xs, ys = zip(*checkpoints)
        ax.plot(xs, ys, "o-", color="#d9661f", linewidth=1.5, label="greedy prompt on val")
    if base_val is not None:
        ax.axhline(base_val, color="#555555", linestyle="--", linewidth=1, label="base instruction on val")
    ax.set_xlabel("PPO step")
    ax.set_ylabel("reward")
    ax.set_title("rlprompt: training reward and held-out reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
