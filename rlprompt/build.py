"""Builders: turn a validated `RunConfig` into live objects. Scripts call these and nothing else.

Targets are looked up in the `TARGETS` registry, so adding a backend is one decorated function.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rlprompt.config import CacheConfig, RunConfig, TargetConfig
from rlprompt.models import cache_root
from rlprompt.registry import Registry
from rlprompt.targets.base import GenerationParams, Target
from rlprompt.targets.cache import CachedTarget, CallCounter, ResponseCache

TARGETS: Registry = Registry("target")


@TARGETS.register("hf")
def _hf_target(cfg: TargetConfig, retry_counter: CallCounter) -> Target:
    from rlprompt.targets.hf import HFTarget

    return HFTarget(
        model=cfg.model,
        dtype=cfg.dtype,
        format=cfg.format,
        batch_size=cfg.batch_size,
        max_input_tokens=cfg.max_input_tokens or None,
    )


@TARGETS.register("openai")
def _openai_target(cfg: TargetConfig, retry_counter: CallCounter) -> Target:
    from rlprompt.targets.openai_api import OpenAITarget

    return OpenAITarget(
        model=cfg.model,
        base_url=cfg.base_url or "",
        api_key_env=cfg.api_key_env,
        max_concurrency=cfg.max_concurrency,
        timeout_s=cfg.timeout_s,
        max_retries=cfg.max_retries,
        backoff_s=cfg.backoff_s,
        retry_counter=retry_counter,
    )


def check_run(run: RunConfig) -> None:
    """Cross-field checks `config.validate` cannot make (it checks each field's name and type).

    Cheap and model-free, so entry points call it right after `validate`: a combination that
    cannot work fails at start-up, not after models load or other methods have run.
    """
    from rlprompt.policy.action_spaces import check_policy

    check_policy(run.policy)


def build_cache(cfg: CacheConfig) -> ResponseCache | None:
    if not cfg.enabled:
        return None
    return ResponseCache(Path(cfg.path) if cfg.path else cache_root() / "responses.sqlite")


def build_target(
    cfg: TargetConfig, cache: ResponseCache | None, role: str = "target", budget: int | None = None
) -> CachedTarget:
    """A cached, counted target. `counter.retries` counts API retries for this role."""
    counter = CallCounter(role=role, budget=budget)
    return CachedTarget(TARGETS.get(cfg.name)(cfg, counter), cache, counter)


def generation_params(cfg: TargetConfig, seed: int = 0) -> GenerationParams:
    return GenerationParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed
    )


def set_threads(run: RunConfig) -> None:
    """Use every core (accelerate sets OMP_NUM_THREADS=1 on CPU, which halves speed here)."""
    threads = run.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
