"""Does a reward agree with a sales expert? Pairwise accuracy on expert preference pairs.

RewardBench (Lambert et al. 2024, https://github.com/allenai/reward-bench) scores a reward model by
the share of pairs where it rates the preferred reply strictly higher than the other one. Here a
pair is two replies to the same customer turn (`tasks/<task>/preferences.jsonl`), labelled with
the sales behaviour that separates them (asks about needs, proposes a next step, answers the
question, honest, calm, on topic, warm, concise). Each reward module and each composite is scored
on the same pairs, per category and overall; ties count as misses and are reported apart.

Every pair in `preferences.jsonl` belongs to a `dev` or a `heldout` half. Each later file was
written blind (by someone who never saw the reward code), served once as the never-tuned test of
the reward of its time, and is fit on since: `preferences_fresh.jsonl` (split `fresh`, the test of
stop 18), `preferences_audit.jsonl` (`audit`, the first test of stop 19), `preferences_audit2.jsonl`
(`audit2`, the test of stop 19), `preferences_audit3.jsonl` (`audit3`, the test of stop 20) and
`preferences_audit4.jsonl` (`audit4`, a second blind test of the round-3 reward, stop 21),
`preferences_audit5.jsonl` (`audit5`, the test of stop 21), `preferences_audit6.jsonl` (`audit6`,
the test of stop 22), `preferences_audit7.jsonl` (`audit7`, 256 pairs, half of them in a small
chatbot's clumsy voice: the test of round 6, stop 23). `preferences_audit8.jsonl` (`audit8`, 256
pairs, stop 23) is the test now: never fit or tuned on (`preference` refuses it as a fit split). Each
extra file is opened only when a caller asks for its split, so fitting cannot touch the test pairs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlprompt.errors import ConfigError
from rlprompt.rewards.base import RewardFunction, Sample
from rlprompt.task import Scenario, Task
from rlprompt.task_validation import check_history

PREFERENCES_FILE = "preferences.jsonl"
# Which splits each file may hold, in the order the files were written: an audit pair filed in
# another file (or the reverse) would silently leak the final test into the fit, so it is an
# error, not a warning. A new blind set is one line here (and, once read, one in FIT_SPLITS).
FILE_SPLITS = {
    PREFERENCES_FILE: ("dev", "heldout"),
    "preferences_fresh.jsonl": ("fresh",),
    "preferences_audit.jsonl": ("audit",),
    "preferences_audit2.jsonl": ("audit2",),
    "preferences_audit3.jsonl": ("audit3",),
    "preferences_audit4.jsonl": ("audit4",),
    "preferences_audit5.jsonl": ("audit5",),
    "preferences_audit6.jsonl": ("audit6",),
    "preferences_audit7.jsonl": ("audit7",),
    "preferences_audit8.jsonl": ("audit8",),
}
SPLITS = tuple(split for splits in FILE_SPLITS.values() for split in splits)
TEST_SPLITS = ("audit8",)
# The sales behaviours the pairs test (issue 15). A label outside them (a blind set once wrote
# "next" for "next_step") would report a category of its own and hide the pairs from the one it means.
CATEGORIES = (
    "needs",
    "next_step",
    "answers",
    "honest",
    "calm",
    "on_topic",
    "warm",
    "concise",
)  # never fit or tuned on: the reward's final test


@dataclass
class PreferencePair:
    id: str
    split: str  # one of SPLITS
    category: str
    hard: bool
    scenario: Scenario
    chosen: str
    rejected: str


@dataclass
class PairScores:
    """Scores of the chosen and rejected reply of every pair, per module and in total."""

    pairs: list[PreferencePair]
    chosen: dict[str, np.ndarray]  # module or composite → (P,)
    rejected: dict[str, np.ndarray]  # module or composite → (P,)

    def accuracy(self, name: str, keep: np.ndarray | None = None) -> tuple[float, float]:
        """(share strictly preferring the chosen reply, share of ties) over the kept pairs."""
        keep = np.ones(len(self.pairs), dtype=bool) if keep is None else keep
        margin = self.chosen[name][keep] - self.rejected[name][keep]
        if margin.size == 0:
            return float("nan"), float("nan")
        return float((margin > 1e-9).mean()), float((np.abs(margin) <= 1e-9).mean())


@dataclass
class AccuracyTable:
    """rows: reward name → {category | "overall" → accuracy}, plus the tie shares."""

    split: str
    n: dict[str, int]
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    ties: dict[str, dict[str, float]] = field(default_factory=dict)

    def markdown(self) -> str:
        columns = [*[c for c in self.n if c != "overall"], "overall"]
        head = "| reward | " + " | ".join(f"{c} (n={self.n[c]})" for c in columns) + " |"
        lines = [head, "|" + "---|" * (len(columns) + 1)]
        for name, row in self.accuracy.items():
            cells = [f"{100 * row[c]:.0f}%" for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)


def load_pairs(
    task: Task, path: Path | None = None, splits: tuple[str, ...] | list[str] = SPLITS
) -> list[PreferencePair]:
    """The task's preference pairs; every field is checked against the task's personas and stages.

    Without `path`: `preferences.jsonl` (dev, heldout) and each later file of `FILE_SPLITS` that
    exists and whose split is in `splits`. A file whose split is not asked for is never
    opened, so fitting the reward cannot touch the test pairs. With `path`: that one file.
    """
    if path is not None:  # a file named like one of the task's files holds that file's splits
        return _read_pairs(task, path, FILE_SPLITS.get(path.name, SPLITS))
    pairs = _read_pairs(task, Path(task.folder) / PREFERENCES_FILE, FILE_SPLITS[PREFERENCES_FILE])
    for name in list(FILE_SPLITS)[1:]:  # every later file, in the order they were written
        extra = Path(task.folder) / name
        if not set(FILE_SPLITS[name]) & set(splits) or not extra.is_file():
            continue
        seen = {p.id for p in pairs}
        added = _read_pairs(task, extra, FILE_SPLITS[name])
        duplicated = sum(p.id in seen for p in added)
        if duplicated:
            raise ConfigError(
                f"{extra}: {duplicated} pair id(s) also used in another preference file; rename them"
            )
        pairs += added
    return pairs


def _read_pairs(task: Task, file: Path, valid_splits: tuple[str, ...]) -> list[PreferencePair]:
    if not file.is_file():
        raise ConfigError(f"no preference pairs at {file}: write {file.name} (docs/REWARDS.md)")
    pairs = []
    for number, line in enumerate(file.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            scenario = Scenario(
                id=raw["id"],
                persona=raw["persona"],
                stage=raw["stage"],
                urgency=raw["urgency"],
                customer=raw["customer"],
                history=raw.get("history", []),
            )
            pair = PreferencePair(
                raw["id"],
                raw["split"],
                raw["category"],
                bool(raw["hard"]),
                scenario,
                raw["chosen"],
                raw["rejected"],
            )
        except json.JSONDecodeError as err:
            raise ConfigError(f"{file}:{number}: not valid JSON ({err}); one pair per line") from err
        except KeyError as err:
            raise ConfigError(
                f"{file}:{number}: missing field {err}; a pair needs id, split, category, hard, persona, "
                "stage, urgency, customer, chosen, rejected"
            ) from err
        except TypeError as err:
            raise ConfigError(
                f"{file}:{number}: not a preference pair ({err}); one JSON object per line"
            ) from err
        check_history(scenario.history, f"{file}:{number}")
        if pair.split not in valid_splits:
            raise ConfigError(
                f"{file}:{number}: split '{pair.split}'; valid: {', '.join(valid_splits)} in {file.name}"
            )
        for kind, value, valid in (
            ("persona", scenario.persona, task.persona),
            ("stage", scenario.stage, task.stage),
            ("urgency", scenario.urgency, task.urgency),
            ("category", pair.category, CATEGORIES),
        ):
            if value not in valid:
                raise ConfigError(f"{file}:{number}: {kind} '{value}'; valid: {', '.join(valid)}")
        for name, value in (
            ("customer", scenario.customer),
            ("chosen", pair.chosen),
            ("rejected", pair.rejected),
        ):
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{file}:{number}: field '{name}' is empty or not text; write the text")
        pairs.append(pair)
    return pairs


def stratified_folds(pairs: list[PreferencePair], k: int = 4, seed: int = 0) -> np.ndarray:
    """Fold index per pair, each category dealt round-robin over k folds after a seeded shuffle,
    so every fold holds about 1/k of every category (a fold without `answers` would hide it)."""
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(pairs), dtype=int)
    categories = np.array([p.category for p in pairs])
    for category in dict.fromkeys(categories):
        members = rng.permutation(np.flatnonzero(categories == category))
        folds[members] = np.arange(len(members)) % k
    return folds


def _sample(pair: PreferencePair, reply: str) -> Sample:
    conversation = [*pair.scenario.history, {"role": "user", "content": pair.scenario.customer}]
    return Sample(pair.scenario, [*conversation, {"role": "assistant", "content": reply}])


def score_pairs(
    pairs: list[PreferencePair], reward: RewardFunction, composites: dict[str, dict[str, float]]
) -> PairScores:
    """Score both replies of every pair with every module once; composites reuse the module scores."""
    chosen_batch = reward.score([_sample(p, p.chosen) for p in pairs])
    rejected_batch = reward.score([_sample(p, p.rejected) for p in pairs])
    chosen = {k: v.numpy() for k, v in chosen_batch.parts.items()}
    rejected = {k: v.numpy() for k, v in rejected_batch.parts.items()}
    for name, weights in composites.items():
        missing = set(weights) - set(chosen)
        if missing:
            raise ConfigError(f"composite '{name}' uses {sorted(missing)}, which the reward does not score")
        chosen[name] = sum(w * chosen[m] for m, w in weights.items())
        rejected[name] = sum(w * rejected[m] for m, w in weights.items())
    return PairScores(pairs, chosen, rejected)


def accuracy_table(scores: PairScores, split: str) -> AccuracyTable:
    """Accuracy per category (in file order) and overall, for every module and composite, on one half."""
    in_split = np.array([p.split == split or split == "all" for p in scores.pairs])
    categories = list(dict.fromkeys(p.category for p in scores.pairs))
    masks = {c: in_split & np.array([p.category == c for p in scores.pairs]) for c in categories}
    masks["overall"] = in_split
    table = AccuracyTable(split, {c: int(m.sum()) for c, m in masks.items()})
    for name in scores.chosen:
        results = {c: scores.accuracy(name, m) for c, m in masks.items()}
        table.accuracy[name] = {c: r[0] for c, r in results.items()}
        table.ties[name] = {c: r[1] for c, r in results.items()}
    return table
