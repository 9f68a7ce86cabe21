"""The Thompson-sampling-with-evolution core, as pure functions over Beta(α, β) parameters.

Why a module of its own: the offline bandit optimizer (rlprompt/optimizers/bandit.py) and the
serving gateway (rlprompt/serve/) run the same method and differ only in where rewards come
from (simulated scoring vs live feedback). Both call these functions, so a posterior on live
traffic moves exactly as it does offline, and a fix here fixes both.

- Update: a reward r in [0, 1] is a fractional Bernoulli observation, α += r, β += 1 − r
  (Agrawal & Goyal 2012 draw Bernoulli(r) instead; same mean, less noise).
- Draw: one sample from each arm's posterior, play the argmax (Thompson 1933; Chapelle & Li 2011).
- Retirement: arm i retires when P(X_i > X_best) < threshold, computed exactly as
  ∫ f_i(x) F_best(x) dx by quadrature.
- Mutant prior: the best arm's posterior mean at effective sample size
  max(ess_min, ess_frac × n_best) (the seed document's design).
- Context shrinkage (serving only): a context's posterior borrows the global posterior's mean at
  a capped effective sample size, so a context with little data plays like the global arm and a
  context with much data follows its own evidence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import integrate, stats

TAIL = 1e-12  # quadrature runs over f_i's central 1 - 2e-12 mass: a peaked Beta is never missed


def beta_update(alpha: float, beta: float, reward: float) -> tuple[float, float]:
    """One fractional Bernoulli observation of `reward` ∈ [0, 1]."""
    return alpha + reward, beta + 1.0 - reward


def beta_update_many(alpha: float, beta: float, reward_sum: float, n: int) -> tuple[float, float]:
    """`n` observations at once, given their sum: the fold the gateway computes from its event log
    (equal to n calls of `beta_update` up to float rounding, which an integer sum avoids)."""
    return alpha + reward_sum, beta + (n - reward_sum)


def posterior_mean(alpha: float, beta: float) -> float:
    return alpha / (alpha + beta)


def thompson_choice(rng: np.random.Generator, params: Sequence[tuple[float, float]]) -> int:
    """Index of the argmax of one posterior draw per arm (draws in order: a seeded rng replays)."""
    draws = [rng.beta(a, b) for a, b in params]
    return int(np.argmax(draws))


def retire_probability(a_i: float, b_i: float, a_best: float, b_best: float) -> float:
    """P(X_i > X_best) for independent X_i ~ Beta(a_i, b_i), X_best ~ Beta(a_best, b_best).

    = ∫₀¹ f_i(x) F_best(x) dx (condition on X_i = x; X_best is below it with probability F_best(x)),
    by adaptive quadrature over the region where f_i has mass.
    """
    arm, best = stats.beta(a_i, b_i), stats.beta(a_best, b_best)
    low, high = float(arm.ppf(TAIL)), float(arm.ppf(1 - TAIL))
    value, _ = integrate.quad(lambda x: arm.pdf(x) * best.cdf(x), low, high, limit=200, epsabs=1e-10)
    return min(1.0, max(0.0, float(value)))


def best_index(means: Sequence[float], plays: Sequence[float]) -> int:
    """The arm with the highest posterior mean; ties go to the arm with more evidence."""
    return max(range(len(means)), key=lambda i: (means[i], plays[i]))


def retirements(
    params: Sequence[tuple[float, float]], best: int, threshold: float
) -> list[tuple[int, float]]:
    """(index, P(beats best)) of every arm other than `best` whose probability is under `threshold`."""
    a_best, b_best = params[best]
    out = []
    for i, (a, b) in enumerate(params):
        if i == best:
            continue
        p = retire_probability(a, b, a_best, b_best)
        if p < threshold:
            out.append((i, p))
    return out


def mutant_prior(best_mean: float, n_best: float, ess_min: float, ess_frac: float) -> tuple[float, float]:
    """Beta(α, β) with mean `best_mean` and effective sample size max(ess_min, ess_frac × n_best)."""
    ess = max(ess_min, ess_frac * n_best)
    mean = min(max(best_mean, 1e-6), 1 - 1e-6)
    return mean * ess, (1 - mean) * ess


def shrunk_posterior(
    global_alpha: float,
    global_beta: float,
    context_successes: float,
    context_failures: float,
    strength: float,
) -> tuple[float, float]:
    """A context's posterior: the global posterior's mean as a prior of effective sample size
    min(strength, global evidence), updated with the context's own observations.

    The global posterior already holds this context's observations; capping the borrowed mass at
    `strength` pseudo-observations keeps that double count small and lets a context with more
    than `strength` observations of its own override the global mean (empirical-Bayes shrinkage).
    """
    mean = posterior_mean(global_alpha, global_beta)
    ess = min(strength, global_alpha + global_beta)
    return mean * ess + context_successes, (1 - mean) * ess + context_failures
