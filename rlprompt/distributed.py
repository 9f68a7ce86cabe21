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
