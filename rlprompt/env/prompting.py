"""Prompt assembly: how a learned prompt joins the base instruction in the target's system message.

`prompt.template` (default "{learned}") makes the learned sentence the whole system message,
as in RLPrompt's classification setting: after the task's hand-written base instruction a learned
line barely changes what SmolLM2 writes (docs/LEARNING.md 4i). "{base}\\n{learned}" places it
after the base instruction instead; `prompt.use_base_instruction=false` drops {base} from any
template.
"""

from __future__ import annotations

from rlprompt.config import PromptConfig
from rlprompt.errors import ConfigError


def assemble_system_prompt(base: str, learned: str, cfg: PromptConfig) -> str:
    if "{learned}" not in cfg.template:
        raise ConfigError(f"prompt.template must contain {{learned}}, got {cfg.template!r}")
    text = cfg.template.format(base=base if cfg.use_base_instruction else "", learned=learned)
    return text.strip()


def check_prompt_text(text: str, where: str) -> str:
    """Refuse prompts that decode to nothing or hold control characters (they break APIs and exports)."""
    if not text.strip():
        raise ConfigError(f"{where}: the prompt decodes to an empty string; use policy.allowed_tokens=words")
    bad = [c for c in text if not c.isprintable() and c not in "\n\t"]
    if bad:
        raise ConfigError(
            f"{where}: the prompt holds control characters {', '.join(sorted(set(map(repr, bad))))}; "
            "use policy.allowed_tokens=printable or words"
        )
    return text
