"""The optimizer LLM: the model that writes new instructions (OPRO proposals, bandit mutations).

It is any registered target (`optimizer.optimizer_target`: hf | openai) with its own call counter
(role "optimizer_llm"), because the budget currency is calls to the *target*. Candidates are
sampled one request per seed: `CachedTarget` deduplicates identical requests inside one batch and
the HF target seeds a whole batch once, so a batch of 8 identical meta-prompts would yield one
reply. Distinct seeds make the 8 samples differ and cache each one under its own key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlprompt.build import TARGETS
from rlprompt.config import RunConfig, TargetConfig
from rlprompt.env.prompting import check_prompt_text
from rlprompt.errors import ConfigError
from rlprompt.optimizers.base import PromptSearchConfig
from rlprompt.targets.base import GenerationParams
from rlprompt.targets.cache import CachedTarget, CallCounter, ResponseCache

_INS = re.compile(r"<INS>(.*?)(?:</INS>|$)", re.DOTALL | re.IGNORECASE)
_BRACKETS = re.compile(r"\[([^\[\]]{10,})\]", re.DOTALL)


@dataclass
class LLMSearchConfig(PromptSearchConfig):
    """Settings of the methods whose candidates an LLM writes (OPRO, the bandit); docs/OPTIMIZERS.md."""

    steps: int = 80
    meta_temperature: float = 1.0
    max_prompt_chars: int = 500
    optimizer_model: str = "smollm2-135m-instruct"
    optimizer_target: str = "hf"  # target registry name of the optimizer LLM (hf | openai)
    optimizer_base_url: str | None = None  # OpenAI-compatible endpoint of the optimizer LLM
    optimizer_max_new_tokens: int = 96  # length of one optimizer-LLM reply (a new instruction)
    min_prompt_chars: int = 20  # length filter (with max_prompt_chars) for generated instructions


class OptimizerLLM:
    """Samples replies of the optimizer LLM at `optimizer.meta_temperature`, one seed per sample."""

    def __init__(self, run: RunConfig, cache: ResponseCache | None) -> None:
        cfg = run.optimizer
        target_cfg = TargetConfig(
            name=cfg.optimizer_target,
            model=cfg.optimizer_model,
            dtype=run.target.dtype,
            base_url=cfg.optimizer_base_url,
            api_key_env=run.target.api_key_env,
            batch_size=1,
        )
        self.counter = CallCounter(role="optimizer_llm")
        self.target = CachedTarget(
            TARGETS.get(target_cfg.name)(target_cfg, self.counter), cache, self.counter
        )
        self.max_new_tokens = cfg.optimizer_max_new_tokens
        self.temperature = cfg.meta_temperature

    def sample(self, prompt: str, seeds: list[int]) -> list[str]:
        """One sampled reply per seed to a single user message."""
        replies = []
        for seed in seeds:
            params = GenerationParams(
                max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=1.0, seed=seed
            )
            replies.append(self.target.generate([[{"role": "user", "content": prompt}]], params)[0].text)
        return replies


def extract_instruction(reply: str) -> str | None:
    """The text between <INS></INS> (OPRO's tags); a small model often forgets the closing tag.

    Fallbacks, in order: an unclosed <INS>, OPRO's square brackets, the first non-empty paragraph.
    """
    match = _INS.search(reply)
    if match and match.group(1).strip():
        text = match.group(1)
    else:
        bracket = _BRACKETS.search(reply)
        text = bracket.group(1) if bracket else reply.strip().split("\n\n")[0]
    text = re.sub(r"</?INS>", "", text, flags=re.IGNORECASE)
    text = " ".join(text.split()).strip().strip('"').strip()
    return text or None


def normalize(text: str) -> str:
    """Key for de-duplication: case and whitespace do not make an instruction new."""
    return " ".join(text.lower().split())


def filter_candidates(texts: list[str | None], seen: set[str], min_chars: int, max_chars: int) -> list[str]:
    """OPRO's post-processing: drop duplicates (of history or of each other) and bad lengths."""
    kept: list[str] = []
    for text in texts:
        if text is None or not (min_chars <= len(text) <= max_chars):
            continue
        try:
            check_prompt_text(text, "candidate instruction")
        except ConfigError:
            continue
        key = normalize(text)
        if key in seen:
            continue
        seen.add(key)
        kept.append(text)
    return kept
