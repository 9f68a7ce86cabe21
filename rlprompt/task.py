"""Tasks are data: `tasks/<name>/domain.yaml` + `scenarios.jsonl` (format: docs/TASK_FORMAT.md).

Loading validates everything up front and names the file and the field of any mistake, so a
typo never surfaces as a KeyError in the middle of a training run.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import yaml

from rlprompt.errors import ConfigError

SPLITS = ("train", "val", "test", "heldout_persona")
MIN_SCENARIOS_PER_CONTEXT = 4  # docs/TASK_FORMAT.md
# UTF-8 whatever the locale; a leading byte-order mark (spreadsheet tools write one) is dropped.
TEXT_ENCODING = "utf-8-sig"
EXPECTS = {"question", "next_step", "value", "reassurance"}


def tasks_dir() -> Path:
    """The packaged task folders (installed as `rlprompt.tasks`)."""
    import rlprompt.tasks

    return Path(rlprompt.tasks.__file__).parent


@dataclass(frozen=True)
class Persona:
    name: str
    description: str
    needs: list[str]
    preferred_tone: str
    concern_keywords: list[str]


@dataclass(frozen=True)
class Stage:
    name: str
    goal: str
    expects: list[str]
    reference_replies: list[str]


@dataclass(frozen=True)
class UrgencyLevel:
    name: str
    description: str
    pressure_ok: bool


@dataclass(frozen=True)
class Component:
    name: str
    phrase: str


@dataclass(frozen=True)
class Rubric:
    next_step_keywords: list[str]
    pressure_phrases: list[str]
    price_patterns_allowed: bool = False
    min_words: int = 20
    max_words: int = 110
    politeness_keywords: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitSpec:
    heldout_personas: list[str]
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class Scenario:
    id: str
    persona: str
    stage: str
    urgency: str
    customer: str
    history: list[dict[str, str]] = field(default_factory=list)

    @property
    def context(self) -> tuple[str, str, str]:
        return (self.persona, self.stage, self.urgency)

    @classmethod
    def for_context(cls, context: tuple[str, str, str]) -> Scenario:
        """A placeholder scenario that carries only a context (for per-context prompt writers)."""
        persona, stage, urgency = context
        return cls(id="", persona=persona, stage=stage, urgency=urgency, customer="-")

    def context_text(self) -> str:
        """The string the context-conditioned policy reads."""
        return f"Customer type: {self.persona}. Stage: {self.stage}. Urgency: {self.urgency}."

    def messages(self, system_prompt: str | None) -> list[dict[str, str]]:
        """The conversation the target answers."""
        system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        return [*system, *self.history, {"role": "user", "content": self.customer}]


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    assistant_role: str
    product: str
    base_instruction: str
    seed_prompts: list[str]
    personas: list[Persona]
    stages: list[Stage]
    urgency_levels: list[UrgencyLevel]
    components: list[Component]
    preferred_components: dict[str, dict[str, list[str]]]
    max_components: int
    rubric: Rubric
    splits: SplitSpec
    scenarios: list[Scenario]
    folder: Path

    @cached_property
    def persona(self) -> dict[str, Persona]:
        return {p.name: p for p in self.personas}

    @cached_property
    def stage(self) -> dict[str, Stage]:
        return {s.name: s for s in self.stages}

    @cached_property
    def urgency(self) -> dict[str, UrgencyLevel]:
        return {u.name: u for u in self.urgency_levels}

    @property
    def contexts(self) -> list[tuple[str, str, str]]:
        return [
            (p.name, s.name, u.name) for p in self.personas for s in self.stages for u in self.urgency_levels
        ]

    def preferred_for(self, scenario: Scenario) -> list[str]:
        """Components the config prefers for this context, in bank order, capped at max_components."""
        wanted = set()
        for key, value in (
            ("persona", scenario.persona),
            ("stage", scenario.stage),
            ("urgency", scenario.urgency),
        ):
            wanted.update(self.preferred_components.get(key, {}).get(value, []))
        return [c.name for c in self.components if c.name in wanted][: self.max_components]

    @cached_property
    def split_ids(self) -> dict[str, list[str]]:
        return _split_ids(self)

    def split(self, name: str) -> list[Scenario]:
        if name not in SPLITS:
            raise ConfigError(f"unknown split '{name}'. Valid splits: {', '.join(SPLITS)}")
        by_id = {s.id: s for s in self.scenarios}
        scenarios = [by_id[i] for i in self.split_ids[name]]
        if not scenarios:
            raise ConfigError(
                f"split '{name}' of task '{self.name}' is empty ({self.folder / 'scenarios.jsonl'}): "
                "add scenarios or change splits in domain.yaml"
            )
        return scenarios

    def dataset(self):
        """The splits as a `datasets.DatasetDict` (columns: id, persona, stage, urgency, customer, history)."""
        from datasets import Dataset, DatasetDict

        by_id = {s.id: s for s in self.scenarios}
        rows = {
            name: [{**asdict(s), "history": json.dumps(s.history)} for s in (by_id[i] for i in ids)]
            for name, ids in self.split_ids.items()
        }
        return DatasetDict(
            {name: Dataset.from_list(r) if r else Dataset.from_dict({}) for name, r in rows.items()}
        )


def _split_ids(task: Task) -> dict[str, list[str]]:
    """Deterministic split, stratified by context so every split covers every context it can."""
    rng = random.Random(task.splits.seed)
    by_context: dict[tuple, list[str]] = defaultdict(list)
    for s in task.scenarios:
        by_context[s.context].append(s.id)
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    heldout = set(task.splits.heldout_personas)
    for context in sorted(by_context):
        ids = sorted(by_context[context])
        if context[0] in heldout:
            out["heldout_persona"].extend(ids)
            continue
        rng.shuffle(ids)
        n_val = round(len(ids) * task.splits.val_fraction)
        n_test = round(len(ids) * task.splits.test_fraction)
        out["val"].extend(ids[:n_val])
        out["test"].extend(ids[n_val : n_val + n_test])
        out["train"].extend(ids[n_val + n_test :])
    return out


# ---------------------------------------------------------------- loading + validation


def resolve_task_folder(name: str, path: str | None = None) -> Path:
    folder = Path(path) if path else tasks_dir() / name
    if not (folder / "domain.yaml").exists():
        available = sorted(p.name for p in tasks_dir().iterdir() if (p / "domain.yaml").exists())
        raise ConfigError(
            f"unknown task '{name}': no {folder / 'domain.yaml'}. Valid task names: {', '.join(available)} "
            "(or set task.path to your own task folder)"
        )
    return folder


def load_task(name: str, path: str | None = None) -> Task:
    """The validated task `name` (a packaged one, or the folder `path`); ConfigError names the file
    and the field of any mistake."""
    from rlprompt.task_validation import Fields, check_references, load_scenarios, read_text

    folder = resolve_task_folder(name, path)
    domain_file = folder / "domain.yaml"
    try:
        raw = yaml.safe_load(read_text(domain_file))
    except yaml.YAMLError as err:
        raise ConfigError(f"{domain_file}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{domain_file}: expected a mapping at the top level")
    d = Fields(raw, domain_file)
    personas = [
        Persona(
            **Fields(p, domain_file, f"personas[{i}]").take(
                name=str, description=str, needs=list, preferred_tone=str, concern_keywords=list
            )
        )
        for i, p in enumerate(d.require("personas", list))
    ]
    stages = [
        Stage(
            **Fields(s, domain_file, f"stages[{i}]").take(
                name=str, goal=str, expects=list, reference_replies=list
            )
        )
        for i, s in enumerate(d.require("stages", list))
    ]
    urgency = [
        UrgencyLevel(
            **Fields(u, domain_file, f"urgency_levels[{i}]").take(name=str, description=str, pressure_ok=bool)
        )
        for i, u in enumerate(d.require("urgency_levels", list))
    ]
    components = [
        Component(**Fields(c, domain_file, f"components[{i}]").take(name=str, phrase=str))
        for i, c in enumerate(d.require("components", list))
    ]
    rubric = Rubric(
        **Fields(d.require("rubric", dict), domain_file, "rubric").take(
            next_step_keywords=list,
            pressure_phrases=list,
            optional=dict(
                price_patterns_allowed=bool, min_words=int, max_words=int, politeness_keywords=list
            ),
        )
    )
    splits = SplitSpec(
        **Fields(d.require("splits", dict), domain_file, "splits").take(
            heldout_personas=list, optional=dict(val_fraction=float, test_fraction=float, seed=int)
        )
    )
    task = Task(
        name=d.require("name", str),
        description=d.require("description", str),
        assistant_role=d.require("assistant_role", str),
        product=d.require("product", str),
        base_instruction=d.require("base_instruction", str),
        seed_prompts=d.require("seed_prompts", list),
        personas=personas,
        stages=stages,
        urgency_levels=urgency,
        components=components,
        preferred_components=d.require("preferred_components", dict),
        max_components=d.require("max_components", int),
        rubric=rubric,
        splits=splits,
        scenarios=load_scenarios(folder / "scenarios.jsonl"),
        folder=folder,
    )
    d.reject_unknown()
    check_references(task, domain_file)
    return task
