"""The checks behind `load_task`: typed fields that name the file and the key of any mistake,
the scenarios file, and the cross-references between a task's sections.

Apart from rlprompt/task.py so that the task's types read on their own; `load_task` is the
only caller.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlprompt.errors import ConfigError
from rlprompt.task import EXPECTS, MIN_SCENARIOS_PER_CONTEXT, TEXT_ENCODING, Scenario

if TYPE_CHECKING:
    from rlprompt.task import Task


class Fields:
    """Typed access to a YAML mapping that names the file and the field path in every error."""

    def __init__(self, raw: Any, file: Path, where: str = "") -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{file}: field '{where}' must be a mapping, got {type(raw).__name__}")
        self.raw, self.file, self.where, self.seen = raw, file, where, set()

    def _path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def require(self, key: str, kind: type) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            raise ConfigError(f"{self.file}: missing required field '{self._path(key)}'")
        return self._typed(key, kind)

    def _typed(self, key: str, kind: type) -> Any:
        value = self.raw[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{self.file}: field '{self._path(key)}' must be {kind.__name__}, got {type(value).__name__} ({value!r})"
            )
        return value

    def take(self, optional: dict[str, type] | None = None, **required: type) -> dict[str, Any]:
        out = {key: self.require(key, kind) for key, kind in required.items()}
        for key, kind in (optional or {}).items():
            self.seen.add(key)
            if key in self.raw:
                out[key] = self._typed(key, kind)
        self.reject_unknown()
        return out

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.raw) - self.seen)
        if unknown:
            raise ConfigError(
                f"{self.file}: unknown field '{self._path(unknown[0])}'. Valid fields here: {', '.join(sorted(self.seen))}"
            )


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding=TEXT_ENCODING)
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err}); save it as UTF-8") from err


def load_scenarios(path: Path) -> list[Scenario]:
    if not path.exists():
        raise ConfigError(
            f"{path}: scenario file is missing (one JSON object per line, see docs/TASK_FORMAT.md)"
        )
    scenarios = []
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err
        fields = Fields(row, path, f"line {line_no}")
        values = fields.take(
            id=str, persona=str, stage=str, urgency=str, customer=str, optional=dict(history=list)
        )
        check_history(values.get("history", []), f"{path}:{line_no}")
        if not values["customer"].strip():
            raise ConfigError(f"{path}:{line_no}: field 'customer' is empty")
        scenarios.append(Scenario(**values))
    return scenarios


def check_references(task: Task, file: Path) -> None:
    """Names used anywhere must be defined; every context needs scenarios."""

    def unique(kind: str, names: list[str]) -> set[str]:
        dupes = [n for n, c in Counter(names).items() if c > 1]
        if dupes:
            raise ConfigError(f"{file}: {kind} name '{dupes[0]}' is defined twice")
        return set(names)

    personas = unique("persona", [p.name for p in task.personas])
    stages = unique("stage", [s.name for s in task.stages])
    urgency = unique("urgency level", [u.name for u in task.urgency_levels])
    components = unique("component", [c.name for c in task.components])
    for s in task.stages:
        bad = set(s.expects) - EXPECTS
        if bad:
            raise ConfigError(
                f"{file}: stages[{s.name}].expects has '{sorted(bad)[0]}'. Valid: {', '.join(sorted(EXPECTS))}"
            )
        if not s.reference_replies:
            raise ConfigError(f"{file}: stages[{s.name}].reference_replies is empty: add 3-5 good replies")
    allowed = {"persona": personas, "stage": stages, "urgency": urgency}
    for key, table in task.preferred_components.items():
        if key not in allowed:
            raise ConfigError(
                f"{file}: preferred_components.{key} is unknown. Valid keys: persona, stage, urgency"
            )
        for value, names in table.items():
            if value not in allowed[key]:
                raise ConfigError(
                    f"{file}: preferred_components.{key}.{value}: no {key} named '{value}'. "
                    f"Valid: {', '.join(sorted(allowed[key]))}"
                )
            for name in names:
                if name not in components:
                    raise ConfigError(
                        f"{file}: preferred_components.{key}.{value} names component '{name}'. "
                        f"Valid components: {', '.join(sorted(components))}"
                    )
    for name in task.splits.heldout_personas:
        if name not in personas:
            raise ConfigError(
                f"{file}: splits.heldout_personas names '{name}'. Valid personas: {', '.join(sorted(personas))}"
            )
    scenario_file = task.folder / "scenarios.jsonl"
    ids = Counter(s.id for s in task.scenarios)
    dupes = [i for i, c in ids.items() if c > 1]
    if dupes:
        raise ConfigError(f"{scenario_file}: scenario id '{dupes[0]}' appears twice")
    for s in task.scenarios:
        for key, value, valid in (
            ("persona", s.persona, personas),
            ("stage", s.stage, stages),
            ("urgency", s.urgency, urgency),
        ):
            if value not in valid:
                raise ConfigError(
                    f"{scenario_file}: scenario '{s.id}' field '{key}' is '{value}'. Valid: {', '.join(sorted(valid))}"
                )
    per_context = Counter(s.context for s in task.scenarios)
    for persona, stage, level in task.contexts:
        n = per_context[(persona, stage, level)]
        if n < MIN_SCENARIOS_PER_CONTEXT:
            raise ConfigError(
                f"{scenario_file}: context persona='{persona}' stage='{stage}' urgency='{level}' has {n} "
                f"scenarios; every context needs at least {MIN_SCENARIOS_PER_CONTEXT}"
            )


def check_history(history: list, where: str) -> None:
    """Earlier turns must be {role: user|assistant, content: str}: a chat template (and every reward
    module, which reads the customer's turns as role 'user') silently mishandles any other role."""
    for turn in history:
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ("user", "assistant") or not isinstance(turn.get("content"), str):
            raise ConfigError(
                f"{where}: field 'history' has a turn with role {role!r}; each turn is "
                "{role: user|assistant, content: str} (the customer is 'user')"
            )
