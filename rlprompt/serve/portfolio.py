"""The contextual portfolio: arms, their posteriors as a fold over the feedback log, and the draw.

Arms come from `scripts/export.py` output (the task-level prompt, and each per-context prompt as
an arm that only its context may play), from prompts.json files, from hand-written prompts
(`.txt` files or `serve.prompts`), or, with none of these, from the task's base instruction and
seed prompts. Posteriors use the offline bandit's math (rlprompt/optimizers/bandit_math.py): a feedback
event of value r is one fractional Bernoulli observation. With `serve.contextual`, the draw for a
request that names its context uses that context's posterior, shrunk towards the arm's global
one (`bandit_math.shrunk_posterior`), so a new context plays like the global portfolio.

State is held as integers (`value_nano` sums and counts per (arm, context)), so the in-memory
posteriors, a fresh fold from the database (`load`) and /v1/arms always agree to the bit.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from rlprompt.errors import ConfigError
from rlprompt.evaluation.export import load_exported
from rlprompt.optimizers.bandit_math import (
    beta_update_many,
    posterior_mean,
    shrunk_posterior,
    thompson_choice,
)
from rlprompt.optimizers.llm import normalize
from rlprompt.prompt_set import context_key as joined_key
from rlprompt.serve import store
from rlprompt.task import Task

ANY = "*"
GLOBAL = None  # context key of an arm any context may play


@dataclass(frozen=True)
class ArmSpec:
    """An arm to seed the portfolio with (hand-off from the portfolio loaders to the store)."""

    text: str
    source: str
    origin: str  # task | export | manual | mutant
    context: str | None = None
    parent_id: int | None = None
    prior_alpha: float = 1.0
    prior_beta: float = 1.0

    @property
    def key(self) -> str:
        return hashlib.sha256(f"{self.context or ANY}\n{normalize(self.text)}".encode()).hexdigest()


@dataclass
class Arm:
    id: int
    text: str
    source: str
    context: str | None
    origin: str
    parent_id: int | None
    prior_alpha: float
    prior_beta: float
    created_at: float
    retired_at: float | None = None
    retired_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.retired_at is None


@dataclass
class Counts:
    """Σ value_nano and the number of feedback events: the sufficient statistics of a posterior."""

    nano: int = 0
    n: int = 0

    def add(self, nano: int, n: int = 1) -> None:
        self.nano += nano
        self.n += n

    def posterior(self, prior_alpha: float, prior_beta: float) -> tuple[float, float]:
        """α = prior α + Σr, β = prior β + Σ(1 − r): n fractional updates at once (bandit_math)."""
        return beta_update_many(prior_alpha, prior_beta, self.nano / store.NANO, self.n)


def context_key(persona: str | None, stage: str | None, urgency: str | None) -> str:
    """ "persona|stage|urgency" (the export's per-context key), "*" for a part the request left out."""
    return joined_key(part or ANY for part in (persona, stage, urgency))


def task_arms(task: Task) -> list[ArmSpec]:
    texts = [task.base_instruction, *task.seed_prompts]
    return [
        ArmSpec(t, "task:base_instruction" if i == 0 else f"task:seed_prompts[{i - 1}]", "task")
        for i, t in enumerate(texts)
    ]


def portfolio_arms(paths: list[str], prompts: list[str], task: Task) -> list[ArmSpec]:
    """Arms from `serve.portfolio` and `serve.prompts`; the task's prompts when both are empty."""
    specs: list[ArmSpec] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.suffix == ".txt":
            if not path.is_file():
                raise ConfigError(f"serve.portfolio: no such prompt file '{raw}'")
            specs.append(ArmSpec(path.read_text().strip(), f"file:{path}", "manual"))
            continue
        data = load_exported(path)  # ConfigError names the file and the missing field
        if data.task != task.name:
            raise ConfigError(
                f"serve.portfolio: '{raw}' holds prompts for task '{data.task}', not '{task.name}'"
            )
        specs.append(ArmSpec(data.task_level.system_prompt, f"export:{path}:task_level", "export"))
        for key, entry in data.per_context.items():
            specs.append(ArmSpec(entry.system_prompt, f"export:{path}:{key}", "export", context=key))
    specs += [ArmSpec(t, f"serve.prompts[{i}]", "manual") for i, t in enumerate(prompts)]
    if not paths and not prompts:
        specs = task_arms(task)
    for spec in specs:
        if not spec.text.strip():
            raise ConfigError(f"serve.portfolio: the prompt from {spec.source} is empty")
    unique = {s.key: s for s in reversed(specs)}  # the first of equal prompts wins
    return [s for s in specs if unique[s.key] is s]


def insert_arms(conn: Connection, specs: list[ArmSpec]) -> None:
    """Add the arms the database does not hold yet (restarts and replicas seed idempotently)."""
    have = {k for (k,) in conn.execute(sa.select(store.arms.c.key))}
    for spec in specs:
        if spec.key in have:
            continue
        conn.execute(
            store.arms.insert().values(
                key=spec.key,
                text=spec.text,
                source=spec.source,
                context=spec.context,
                origin=spec.origin,
                parent_id=spec.parent_id,
                prior_alpha=spec.prior_alpha,
                prior_beta=spec.prior_beta,
                created_at=store.now(),
            )
        )
        have.add(spec.key)


@dataclass
class Snapshot:
    """Everything the fold reads: arms and the feedback sums per (arm, context)."""

    arms: dict[int, Arm]
    counts: dict[tuple[int, str], Counts]
    conversations: dict[int, int] = field(default_factory=dict)


def read_snapshot(conn: Connection) -> Snapshot:
    """The fold over the event log, done by the database: integer sums per (arm, context)."""
    rows = conn.execute(sa.select(store.arms).order_by(store.arms.c.id)).mappings()
    arms = {r["id"]: Arm(**{k: r[k] for k in Arm.__dataclass_fields__}) for r in rows}
    f = store.feedback
    counts = {
        (arm_id, ctx): Counts(int(total), int(n))
        for arm_id, ctx, total, n in conn.execute(
            sa.select(f.c.arm_id, f.c.context, sa.func.sum(f.c.value_nano), sa.func.count()).group_by(
                f.c.arm_id, f.c.context
            )
        )
    }
    c = store.conversations
    conversations = {
        arm_id: int(n)
        for arm_id, n in conn.execute(sa.select(c.c.arm_id, sa.func.count()).group_by(c.c.arm_id))
    }
    return Snapshot(arms, counts, conversations)


class Portfolio:
    """The live bandit: in-memory posteriors that follow every committed feedback event."""

    def __init__(self, contextual: bool, strength: float, seed: int | list[int]) -> None:
        self.contextual, self.strength = contextual, strength
        self.lock = threading.Lock()
        self.rng = np.random.default_rng(seed)
        self.arms: dict[int, Arm] = {}
        self.by_context: dict[tuple[int, str], Counts] = {}
        self.global_counts: dict[int, Counts] = {}
        self.feedback_total = 0

    def load(self, snapshot: Snapshot) -> None:
        """Replace the state with a fold from the database (start-up, restart, replica refresh)."""
        global_counts: dict[int, Counts] = {i: Counts() for i in snapshot.arms}
        for (arm_id, _), c in snapshot.counts.items():
            global_counts.setdefault(arm_id, Counts()).add(c.nano, c.n)
        with self.lock:
            self.arms = dict(snapshot.arms)
            self.by_context = {k: Counts(c.nano, c.n) for k, c in snapshot.counts.items()}
            self.global_counts = global_counts
            self.feedback_total = sum(c.n for c in snapshot.counts.values())

    def apply(self, arm_id: int, context: str, nano: int) -> int:
        """One committed feedback event; returns the running total of feedback events."""
        with self.lock:
            self.by_context.setdefault((arm_id, context), Counts()).add(nano)
            self.global_counts.setdefault(arm_id, Counts()).add(nano)
            self.feedback_total += 1
            return self.feedback_total

    # ------------------------------------------------------------------ posteriors

    def global_posterior(self, arm_id: int) -> tuple[float, float]:
        arm = self.arms[arm_id]
        return self.global_counts.get(arm_id, Counts()).posterior(arm.prior_alpha, arm.prior_beta)

    def context_posterior(self, arm_id: int, context: str) -> tuple[float, float]:
        """The arm's posterior for `context`: its own evidence, plus the global mean lent at
        `context_strength` pseudo-observations (bandit_math.shrunk_posterior)."""
        alpha, beta = self.global_posterior(arm_id)
        if not self.contextual or context == context_key(None, None, None):
            return alpha, beta
        own = self.by_context.get((arm_id, context), Counts())
        success = own.nano / store.NANO
        return shrunk_posterior(alpha, beta, success, own.n - success, self.strength)

    def eligible(self, context: str) -> list[int]:
        """Active arms this context may play: the global ones and those exported for it."""
        return [i for i, a in self.arms.items() if a.active and a.context in (GLOBAL, context)]

    def choose(self, context: str) -> int:
        """Thompson draw over the eligible arms (raises ConfigError when none is active)."""
        with self.lock:
            ids = self.eligible(context)
            if not ids:
                raise ConfigError(
                    "the portfolio has no active arm for this context; add prompts (serve.prompts)"
                )
            params = [self.context_posterior(i, context) for i in ids]
            return ids[thompson_choice(self.rng, params)]

    def means(self) -> dict[int, float]:
        with self.lock:
            return {i: posterior_mean(*self.global_posterior(i)) for i in self.arms}


def arm_states(snapshot: Snapshot) -> list[dict]:
    """/v1/arms: each arm's state, from a database snapshot alone (no in-memory state)."""
    global_counts: dict[int, Counts] = {i: Counts() for i in snapshot.arms}
    contexts: dict[int, dict[str, Counts]] = {i: {} for i in snapshot.arms}
    for (arm_id, ctx), c in sorted(snapshot.counts.items()):
        global_counts.setdefault(arm_id, Counts()).add(c.nano, c.n)
        contexts.setdefault(arm_id, {})[ctx] = c
    out = []
    for arm_id, arm in snapshot.arms.items():
        alpha, beta = global_counts[arm_id].posterior(arm.prior_alpha, arm.prior_beta)
        out.append(
            {
                "id": arm_id,
                "text": arm.text,
                "source": arm.source,
                "origin": arm.origin,
                "parent_id": arm.parent_id,
                "context": arm.context,
                "alpha": alpha,
                "beta": beta,
                "mean": posterior_mean(alpha, beta),
                "conversations": snapshot.conversations.get(arm_id, 0),
                "feedback": global_counts[arm_id].n,
                "retired": arm.retired_at is not None,
                "retired_reason": arm.retired_reason,
                "contexts": {
                    ctx: {"feedback": c.n, "reward_sum": c.nano / store.NANO}
                    for ctx, c in contexts[arm_id].items()
                },
            }
        )
    return out
