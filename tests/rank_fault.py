"""Test plugin, loaded through `reward.plugins=[tests/rank_fault.py]` with `target.name=rank_echo`.

An instant target (it replies with the conversation's system prompt, so runs need no target model)
that can fail on one rank: `RLPROMPT_TEST_FAULT="<rank>:<call>:<kind>"` makes that rank's
generate call number <call> (1-based) fail —
  budget: the rank's call counter runs out of budget, so `CachedTarget` raises a real
          `BudgetExhausted` before the call (the budget is set to the calls spent so far);
  target: the call raises `TargetError` (an API that failed for good).
The rank is accelerate's RANK environment variable (0 in a single process).
"""

from __future__ import annotations

import os

from rlprompt.build import TARGETS
from rlprompt.errors import TargetError
from rlprompt.targets.base import Reply


class RankEcho:
    target_id = "rank_echo"

    def __init__(self, counter) -> None:
        self.counter, self.calls = counter, 0
        self.rank = int(os.environ.get("RANK", "0"))
        spec = os.environ.get("RLPROMPT_TEST_FAULT", "")
        rank, call, kind = spec.split(":") if spec else ("-1", "0", "")
        self.fault = (int(rank), int(call), kind)
        if self.fault[0] == self.rank and kind == "budget" and self.fault[1] == 1:
            counter.budget = 0

    def generate(self, conversations, params):
        self.calls += 1
        rank, call, kind = self.fault
        if rank == self.rank and kind == "target" and call == self.calls:
            raise TargetError(f"rank_echo: injected failure on rank {rank}, call {call}")
        if rank == self.rank and kind == "budget" and call == self.calls + 1:
            self.counter.budget = self.counter.calls  # the next call finds the budget spent
        return [
            Reply(
                text=c[0]["content"] if c[0]["role"] == "system" else "-",
                prompt_tokens=0,
                completion_tokens=1,
            )
            for c in conversations
        ]


if "rank_echo" not in TARGETS:
    TARGETS.register("rank_echo")(lambda cfg, retry_counter: RankEcho(retry_counter))
