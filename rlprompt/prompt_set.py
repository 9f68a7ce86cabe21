"""The one type for a method's final prompts: the shape of prompts.json, of an optimizer's result and
of an export once loaded back.

Why one type: the trainer, every optimizer, the comparison, the export, the transfer matrix and
the serving gateway all hand prompt sets to each other. With a dataclass the shape is written
once, a missing field fails where the set is read (naming the field), and the scenario → system
prompt lookup and the "persona|stage|urgency" key have one spelling each.

JSON shape (key order is part of the format: files written before this type are byte-identical):
  task, method, source_model, target_model, action_space, conditioning, prompt_template,
  base_instruction, task_level: {text, action_ids, system_prompt},
  per_context: {"persona|stage|urgency": {text, action_ids, system_prompt}},
  [evaluation], [config_hash]   (only an export carries these)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rlprompt.errors import ConfigError
from rlprompt.task import Scenario

CONTEXT_SEP = "|"
# The header fields every writer fills and every reader needs, in file order.
HEADER_KEYS = (
    "task",
    "method",
    "source_model",
    "target_model",
    "action_space",
    "conditioning",
    "prompt_template",
    "base_instruction",
)
ENTRY_KEYS = ("text", "action_ids", "system_prompt")
OPTIONAL_KEYS = ("evaluation", "config_hash")


def context_key(context: Sequence[str]) -> str:
    """The per-context key: "persona|stage|urgency"."""
    return CONTEXT_SEP.join(context)


def split_context_key(key: str) -> list[str]:
    """A per-context key back into its parts (a well-formed key has three)."""
    return key.split(CONTEXT_SEP)


@dataclass(frozen=True)
class PromptEntry:
    """One prompt: what the method chose (`text`, with its action ids) and the full system prompt."""

    text: str
    system_prompt: str
    action_ids: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "action_ids": list(self.action_ids), "system_prompt": self.system_prompt}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "prompt") -> PromptEntry:
        missing = [k for k in ENTRY_KEYS if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing field '{missing[0]}' (need {', '.join(ENTRY_KEYS)})")
        return cls(
            text=data["text"], system_prompt=data["system_prompt"], action_ids=list(data["action_ids"])
        )


@dataclass
class PromptSet:
    """A task-level prompt plus optional per-context prompts, with their provenance."""

    task: str
    method: str
    source_model: str
    target_model: str
    action_space: str
    conditioning: str
    prompt_template: str
    base_instruction: str
    task_level: PromptEntry
    per_context: dict[str, PromptEntry] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    config_hash: str | None = None

    def entry_for(self, scenario: Scenario) -> PromptEntry:
        """The scenario's context prompt if the set has one, else the task-level prompt."""
        return self.per_context.get(context_key(scenario.context), self.task_level)

    def system_prompt_for(self, scenario: Scenario) -> str:
        return self.entry_for(scenario).system_prompt

    @property
    def entries(self) -> list[PromptEntry]:
        """The prompts a method really plays: the per-context ones if any, else the task-level one."""
        return list(self.per_context.values()) or [self.task_level]

    def with_method(self, method: str) -> PromptSet:
        return replace(self, method=method)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in HEADER_KEYS}
        out["task_level"] = self.task_level.to_dict()
        out["per_context"] = {k: e.to_dict() for k, e in self.per_context.items()}
        for key in OPTIONAL_KEYS:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "prompt set") -> PromptSet:
        """Read the prompts.json shape (extra keys, e.g. an export's file names, are ignored)."""
        missing = [k for k in (*HEADER_KEYS, "task_level", "per_context") if k not in data]
        if missing:
            raise ConfigError(f"{where}: missing field '{missing[0]}' (not a prompts.json or export)")
        return cls(
            **{k: data[k] for k in HEADER_KEYS},
            task_level=PromptEntry.from_dict(data["task_level"], f"{where}: task-level prompt"),
            per_context={
                key: PromptEntry.from_dict(e, f"{where}: prompt for context '{key}'")
                for key, e in data["per_context"].items()
            },
            **{k: data[k] for k in OPTIONAL_KEYS if data.get(k) is not None},
        )


def write_prompts(run_dir: Path, prompts: PromptSet) -> None:
    """A run folder's prompts.json and prompt.txt (the task-level system prompt, ready to paste)."""
    from rlprompt.ppo.checkpoint import write_json

    write_json(run_dir / "prompts.json", prompts.to_dict())
    (run_dir / "prompt.txt").write_text(prompts.task_level.system_prompt + "\n")
