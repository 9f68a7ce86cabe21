"""Prompt optimizers behind one protocol and one budget (docs/OPTIMIZERS.md).

Importing this package registers the built-ins: ppo, components, opro, bandit, manual, template,
random. `run_optimizer(run, run_dir)` runs the one named by `optimizer.name`.
"""

from rlprompt.optimizers import bandit, baselines, opro, ppo  # noqa: F401  (registers them)
from rlprompt.optimizers.base import (
    OPTIMIZERS,
    Optimizer,
    OptimizerContext,
    OptimizerResult,
    register_optimizer,
    run_optimizer,
)

__all__ = [
    "OPTIMIZERS",
    "Optimizer",
    "OptimizerContext",
    "OptimizerResult",
    "register_optimizer",
    "run_optimizer",
]
