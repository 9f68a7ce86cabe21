"""Experiments over many runs: the optimizer comparison, its report, the transfer matrix."""
