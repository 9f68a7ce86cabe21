"""accelerate glue: one Accelerator for CPU and GPU runs, and one run folder for all ranks.

Hydra makes an output dir per process (timestamps differ); rank 0's is broadcast so every rank
checkpoints into the same folder. On CPU, two real ranks need `--multi_gpu --num_processes 2`
with `Accelerator(cpu=True)` (gloo); `--cpu --num_processes 2` silently starts one process.
"""

from __future__ import annotations

from pathlib import Path

import torch


def make_accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def shared_run_dir(local: Path, accelerator) -> Path:
    if accelerator is None or accelerator.num_processes == 1:
        return local
    from accelerate.utils import broadcast_object_list

    holder = [str(local)]
    broadcast_object_list(holder, from_process=0)
    return Path(holder[0])


def agree_on_stop(failure: BaseException | None, accelerator=None) -> BaseException | None:
    """Every rank learns whether any rank's rollout failed this step, so all stop at the same step.

    Call it on every rank once per step, after collecting and before the update's first collective:
    a rank that stopped alone would checkpoint and wait while the others sat in the gradient
    all-reduce. `failure` is this rank's `BudgetExhausted` / `TargetError` (or None). Returns None
    when no rank failed, else what this rank acts on: its own failure, or the failing rank's
    (message included). A `TargetError` anywhere wins over a `BudgetExhausted`: it must be reported.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return failure
    import torch.distributed as dist

    from rlprompt.errors import TargetError
    from rlprompt.targets.cache import BudgetExhausted

    kinds = {1: BudgetExhausted, 2: TargetError}
    code = next((c for c, kind in kinds.items() if isinstance(failure, kind)), 0)
    flag = torch.tensor([code], device=accelerator.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    worst = int(flag.item())
    if worst == 0:
        return None
    reports: list = [None] * accelerator.num_processes
    dist.all_gather_object(reports, (code, "" if failure is None else str(failure)))
    if code == worst:
        return failure
    rank, message = next((r, m) for r, (c, m) in enumerate(reports) if c == worst)
    return kinds[worst](f"rank {rank}: {message}")
