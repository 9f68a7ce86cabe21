"""The Bradley-Terry fit shared by the reward models fit on expert pairs.

P(a preferred to b) = sigmoid(r(a) - r(b)) with r linear in a reply's features (Bradley & Terry
1952; the loss of RLHF reward models, Ouyang et al. 2022, https://arxiv.org/abs/2203.02155).
Two users: `preference` (hand-made features whose direction an expert knows, so every weight is
kept >= 0) and the reader probe (hidden states whose directions nobody knows, so the weights are free).
"""

from __future__ import annotations

import torch


def fit_bradley_terry(
    chosen: torch.Tensor, rejected: torch.Tensor, l2: float, nonnegative: bool, iterations: int = 200
) -> torch.Tensor:
    """(F,) w minimising mean softplus(-(chosen - rejected) @ w) + l2 * |w|^2; chosen, rejected: (P, F).

    `nonnegative`: w = softplus(v), started at softplus(-2) ~ 0.13 per weight (the signs are in the
    features); otherwise w is free and starts at 0. Deterministic: full-batch L-BFGS in float64.
    """
    diff = (chosen - rejected).double()  # (P, F)
    start = -2.0 if nonnegative else 0.0
    v = torch.full((diff.shape[1],), start, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([v], max_iter=iterations, line_search_fn="strong_wolfe")

    def weights() -> torch.Tensor:
        return torch.nn.functional.softplus(v) if nonnegative else v

    def closure():
        optimizer.zero_grad()
        w = weights()
        margin = diff @ w  # (P,): r(chosen) - r(rejected)
        loss = torch.nn.functional.softplus(-margin).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights().detach().float()
