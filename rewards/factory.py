"""`reward_from_config`: a `RewardConfig` in, a ready `RewardSetup` out.

Shared resources (the embedder, the judge, the customer LLM) are built lazily: only those that a
configured module asks for by parameter name, plus the customer simulator when `turns > 0`.
One loaded HF model per (name, dtype) per process serves the customer simulator, the customer's
yes/no scorer and, when it is the same model, the judge.

Where a reward LLM runs is set per module with the reserved option `endpoint`, e.g.
`reward.options.judge.endpoint: {name: openai, base_url: http://127.0.0.1:8000/v1}`
(default `{name: hf}`: local, on CPU).
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlprompt.config import RewardConfig
from rlprompt.errors import ConfigError
from rlprompt.registry import Registry
from rlprompt.rewards.base import REWARDS, RewardFunction, build_reward
from rlprompt.rewards.customer import AGREE_CHOICES, LLMCustomer
from rlprompt.rewards.judge import JUDGE_CHOICES
from rlprompt.rewards.llm import Choices, HFChoiceScorer, OpenAIChoiceScorer
from rlprompt.targets.base import Target
from rlprompt.targets.cache import CachedTarget, CallCounter, ResponseCache
from rlprompt.task import Task

if TYPE_CHECKING:  # rlprompt.env.conversation imports rlprompt.rewards.base: no import cycle at run time
    from rlprompt.env.conversation import CustomerSimulator

ROLES = ("judge", "customer")


@dataclass
class RewardSetup:
    reward: RewardFunction
    customer: CustomerSimulator | None  # for run_conversations(turns=N); None when nothing needs it
    counters: dict[str, CallCounter] = field(default_factory=dict)  # "judge" / "customer" → its calls


@dataclass
class Endpoint:
    """Where a reward LLM runs (`reward.options.<module>.endpoint`)."""

    name: str = "hf"  # hf | openai
    dtype: str = "float32"
    batch_size: int = 8
    base_url: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    max_concurrency: int = 8
    max_retries: int = 5
    backoff_s: float = 1.0

    @classmethod
    def parse(cls, raw: dict[str, Any] | None, module: str) -> Endpoint:
        valid = {f.name for f in fields(cls)}
        unknown = set(raw or {}) - valid
        if unknown:
            raise ConfigError(
                f"reward.options.{module}.endpoint has unknown field '{sorted(unknown)[0]}'. "
                f"Valid fields: {', '.join(sorted(valid))}"
            )
        return cls(**(raw or {}))


@lru_cache(maxsize=4)
def shared_hf_model(name: str, dtype: str) -> tuple:
    """(model, tokenizer), loaded once per process and shared by every reward role."""
    from rlprompt.models import load_model

    return load_model(name, dtype)


BACKENDS: Registry = Registry("reward LLM backend")


@BACKENDS.register("hf")
class _HFBackend:
    def __init__(self, model: str, endpoint: Endpoint, counter: CallCounter, role: str) -> None:
        self.model, self.endpoint = model, endpoint

    def generator(self) -> Target:
        from rlprompt.targets.hf import HFTarget

        e = self.endpoint
        return HFTarget(
            model=self.model,
            dtype=e.dtype,
            batch_size=e.batch_size,
            loaded=shared_hf_model(self.model, e.dtype),
        )

    def scorer(self, choices: Choices) -> Target:
        e = self.endpoint
        return HFChoiceScorer(
            choices, f"{self.model}:{e.dtype}", shared_hf_model(self.model, e.dtype), e.batch_size
        )


@BACKENDS.register("openai")
class _OpenAIBackend:
    """Both the customer's replies and the choice scorers go through one client path
    (`OpenAIChat`); their retries count on the role's counter, next to its calls."""

    def __init__(self, model: str, endpoint: Endpoint, counter: CallCounter, role: str) -> None:
        e = endpoint
        self.model, self.endpoint = model, endpoint
        self.options = dict(
            api_key_env=e.api_key_env,
            timeout_s=e.timeout_s,
            max_concurrency=e.max_concurrency,
            max_retries=e.max_retries,
            backoff_s=e.backoff_s,
            retry_counter=counter,
            where=f"reward.options.{role}.endpoint",
        )

    def generator(self) -> Target:
        from rlprompt.targets.openai_api import OpenAITarget

        return OpenAITarget(self.model, self.endpoint.base_url, **self.options)

    def scorer(self, choices: Choices) -> Target:
        return OpenAIChoiceScorer(choices, self.model, self.endpoint.base_url, **self.options)


class Resources:
    """Lazily built shared resources, by the parameter name modules ask for."""

    def __init__(self, cfg: RewardConfig, task: Task, cache: ResponseCache | None) -> None:
        self.cfg, self.task, self.cache = cfg, task, cache
        self.counters = {role: CallCounter(role=role) for role in ROLES}
        self._built: dict[str, Any] = {}
        self.builders: dict[str, Callable[[], Any]] = {
            "embedder": self._embedder,
            "judge_scorer": lambda: self._cached("judge", self._backend("judge").scorer(JUDGE_CHOICES)),
            "customer_scorer": lambda: self._cached(
                "customer", self._backend("customer").scorer(AGREE_CHOICES)
            ),
            "customer_target": lambda: self._cached("customer", self._backend("customer").generator()),
            "customer_simulator": lambda: LLMCustomer(self.task, self.get("customer_target")),
            "response_cache": lambda: self.cache,
        }

    def get(self, name: str) -> Any:
        if name not in self._built:
            self._built[name] = self.builders[name]()
        return self._built[name]

    def wanted_by(self, factory: Any) -> dict[str, Any]:
        params = inspect.signature(factory).parameters
        return {name: self.get(name) for name in self.builders if name in params}

    def _backend(self, role: str):
        endpoint = Endpoint.parse(self.cfg.options.get(role, {}).get("endpoint"), role)
        model = getattr(self.cfg, f"{role}_model")  # reward.judge_model / reward.customer_model
        return BACKENDS.get(endpoint.name)(model, endpoint, self.counters[role], role)

    def _cached(self, role: str, inner: Target) -> CachedTarget:
        return CachedTarget(inner, self.cache, self.counters[role])

    @staticmethod
    def _embedder():
        from rlprompt.rewards.similarity import load_embedder

        return load_embedder()


def reward_from_config(cfg: RewardConfig, task: Task, cache: ResponseCache | None) -> RewardSetup:
    """Build the weighted reward, the simulated customer (if needed) and the judge/customer counters."""
    load_plugins(cfg.plugins)
    if cfg.turns < 0:
        raise ConfigError(f"reward.turns must be >= 0, got {cfg.turns}")
    resources = Resources(cfg, task, cache)
    shared: dict[str, Any] = {}
    for name in cfg.modules:
        shared.update(resources.wanted_by(REWARDS.get(name)))
    # `endpoint` is read by the resources above, not by the modules; an options entry that held
    # only an endpoint (e.g. for the customer simulator with turns > 0) is then dropped.
    options = {m: {k: v for k, v in dict(o).items() if k != "endpoint"} for m, o in cfg.options.items()}
    options = {m: o for m, o in options.items() if o or m in cfg.modules}
    reward = build_reward(task, dict(cfg.modules), options, **shared)
    customer = (
        resources.get("customer_simulator") if cfg.turns > 0 or "customer_simulator" in shared else None
    )
    return RewardSetup(reward=reward, customer=customer, counters=resources.counters)


_PLUGINS: dict[Path, Any] = {}


def load_plugins(paths: list[str]) -> None:
    """Import user reward files (`reward.plugins`); their `@register_reward` calls register them.

    Each file is imported once per process, so building the reward twice does not re-register.
    """
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path in _PLUGINS:
            continue
        if not path.is_file():
            raise ConfigError(f"reward.plugins: no such file '{raw}' (resolved to {path})")
        name = f"rlprompt_reward_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        except Exception:
            del sys.modules[name]
            raise
        _PLUGINS[path] = module
