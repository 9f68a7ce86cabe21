"""Rollouts of whole conversations: the target answers; optionally a simulated customer replies.

With `turns=0` a conversation is the scenario's history, the customer's turn and the target's
first reply. With `turns=N` a simulated customer (an LLM playing the scenario's persona and
urgency, see rewards/customer.py) answers and the target replies again, N times. All calls of
one round go out as one batch, through the response cache.
"""

from __future__ import annotations

from typing import Protocol

from rlprompt.rewards.base import Sample
from rlprompt.targets.base import GenerationParams, InputTooLong, Message, Target
from rlprompt.task import Scenario


class CustomerSimulator(Protocol):
    def reply(self, scenarios: list[Scenario], conversations: list[list[Message]]) -> list[str]: ...


def run_conversations(
    target: Target,
    scenarios: list[Scenario],
    system_prompts: list[str | None],
    params: GenerationParams,
    turns: int = 0,
    customer: CustomerSimulator | None = None,
) -> list[Sample]:
    """Play each scenario with its system prompt; return samples ready for the reward."""
    if len(scenarios) != len(system_prompts):
        raise ValueError(f"{len(scenarios)} scenarios but {len(system_prompts)} system prompts")
    if turns > 0 and customer is None:
        raise ValueError("turns > 0 needs a simulated customer (reward.customer_model)")
    conversations: list[list[Message]] = [
        [*s.history, {"role": "user", "content": s.customer}] for s in scenarios
    ]
    for turn in range(turns + 1):
        if turn > 0:
            customer_turns = customer.reply(scenarios, conversations)  # type: ignore[union-attr]
            for conversation, text in zip(conversations, customer_turns):
                conversation.append({"role": "user", "content": text})
        requests = [_with_system(p, c) for p, c in zip(system_prompts, conversations)]
        try:
            replies = target.generate(requests, params)
        except InputTooLong as err:
            raise _naming_scenario(err, requests, scenarios, turn) from err
        for conversation, reply in zip(conversations, replies):
            conversation.append({"role": "assistant", "content": reply.text})
    return [
        Sample(scenario=s, conversation=c, system_prompt=p)
        for s, c, p in zip(scenarios, conversations, system_prompts)
    ]


def _naming_scenario(
    err: InputTooLong, requests: list[list[Message]], scenarios: list[Scenario], turn: int
) -> InputTooLong:
    """The target names a request; the user knows scenarios (the target may see a deduplicated batch)."""
    index = next((i for i, r in enumerate(requests) if r == err.conversation), None)
    if index is None:
        return err
    where = f"scenario '{scenarios[index].id}'" + (f" (after {turn} simulated turns)" if turn else "")
    return InputTooLong(f"{where}: {err}", err.conversation)


def _with_system(system_prompt: str | None, conversation: list[Message]) -> list[Message]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + list(conversation)
