"""Brand and safety guardrails on generated prompts and on the replies they produce.

A mutant written by the optimizer LLM gets no live traffic until it passes every configured
guardrail (`serve.guardrails`), on its own text and on the replies it produces on the task's
scenarios. Each guardrail is a registered function `(text, kind, limits) -> reason | None`, so a
new brand rule is one decorated function and config picks it by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from rlprompt.registry import Registry
from rlprompt.rewards.expert import INVENTED  # prices, percentages, discounts, stock counts

PROMPT, REPLY = "prompt", "reply"
PRICE = re.compile(r"[$€£¥]\s?\d|\b\d[\d,.]*\s?(dollars|usd|eur|euros?|pounds?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Limits:
    """What the guardrails check against (from serve.* and optimizer.*)."""

    banned_phrases: tuple[str, ...]
    min_prompt_chars: int
    max_prompt_chars: int
    max_reply_words: int


Guardrail = Callable[[str, str, Limits], "str | None"]
GUARDRAILS: Registry[Guardrail] = Registry("guardrail")


@GUARDRAILS.register("length")
def length(text: str, kind: str, limits: Limits) -> str | None:
    if kind == PROMPT and not (limits.min_prompt_chars <= len(text) <= limits.max_prompt_chars):
        return (
            f"length: the prompt has {len(text)} characters, outside "
            f"[{limits.min_prompt_chars}, {limits.max_prompt_chars}] (optimizer.min/max_prompt_chars)"
        )
    words = len(text.split())
    if kind == REPLY and words > limits.max_reply_words:
        return f"length: a reply has {words} words, over serve.max_reply_words={limits.max_reply_words}"
    return None


@GUARDRAILS.register("banned_phrases")
def banned_phrases(text: str, kind: str, limits: Limits) -> str | None:
    lowered = " ".join(text.lower().split())
    for phrase in limits.banned_phrases:
        if phrase.lower() in lowered:
            return f"banned_phrases: the {kind} says {phrase!r} (serve.banned_phrases)"
    return None


@GUARDRAILS.register("invented_prices")
def invented_prices(text: str, kind: str, limits: Limits) -> str | None:
    """No prices, discounts or percentages the business never gave (the expert reward's patterns)."""
    match = PRICE.search(text) or INVENTED.search(text)
    if match:
        return f"invented_prices: the {kind} states {match.group(0).strip()!r}"
    return None


def check(text: str, kind: str, names: list[str], limits: Limits) -> str | None:
    """The first guardrail `text` fails, as a reason naming it; None when it passes them all."""
    for name in names:
        reason = GUARDRAILS.get(name)(text, kind, limits)
        if reason is not None:
            return reason
    return None
