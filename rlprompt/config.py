"""Typed configuration: one dataclass per Hydra config group.

`validate(cfg)` merges the composed Hydra config into these dataclasses in struct mode, so a
typo (`optimizer.lrr=1`) or a wrong type fails at start-up with the key and the valid fields,
before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlprompt.errors import ConfigError


@dataclass
class TaskConfig:
    name: str = "car_sales"
    path: str | None = None  # a task folder outside the package


@dataclass
class TargetConfig:
    name: str = "hf"  # registry: hf | openai
    model: str = "smollm2-135m-instruct"  # packaged name, HF id, local folder, or the API's model name
    dtype: str = "float32"
    format: str = "auto"  # auto | chat | completion (plain transcript for base models)
    batch_size: int = 16
    max_new_tokens: int = 48
    # Longest conversation (system prompt + history + turns, in tokens) a local hf target accepts;
    # longer ones fail before any call, naming the scenario. Capped by the model's context window
    # less max_new_tokens; 0 = that cap. Task scenarios are ~100-200 tokens.
    max_input_tokens: int = 2048
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    base_url: str | None = None  # OpenAI-compatible endpoint
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    max_concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0


@dataclass
class PolicyConfig:
    backbone: str = "smollm2-135m-instruct"  # frozen LM the head sits on
    dtype: str = "float32"
    action_space: str = "tokens"  # tokens | components
    conditioning: str = "context_conditioned"  # context_conditioned | task_level
    head: str = "residual_mlp"  # residual_mlp (zero-init: starts at the frozen LM) | mlp (RLPrompt) | lora
    hidden_size: int = 2048
    prompt_length: int = 5  # K tokens (tokens action space) or component slots (components)
    top_k: int = 256  # training-time sampling; inference is greedy
    allowed_tokens: str = "words"  # all | printable | words (printable, word-initial, no specials)
    lora_r: int = 8
    lora_alpha: int = 16
    # What the backbone reads before writing the prompt; {role}, {product}, {context} are filled in.
    prefix_template: str = "Write a short instruction for a {role} answering this customer. {context}"
    prefix_chat: bool = True  # wrap the prefix in the backbone's chat template (instruct backbones)
    answer_start: str = "Instruction:"  # begins the backbone's answer, so prompt words follow naturally
    # Words that open every learned prompt: fed to the backbone after `answer_start` and kept in the
    # decoded prompt, e.g. "Always" makes the K tokens finish an imperative rule ("Always ask ...").
    prompt_lead: str = ""
    # tokens: the policy may end its rule with a period (from the 4th token on); the positions after
    # it are forced to the period (log-prob 0: no gradient, no KL), so a prompt is a finished sentence.
    end_with_period: bool = False


@dataclass
class PromptConfig:
    """How the learned prompt joins the base instruction in the target's system message."""

    template: str = "{base}\n{learned}"  # fields: {base} (task base instruction), {learned}
    use_base_instruction: bool = True


@dataclass
class RewardConfig:
    name: str = "sales_default"
    modules: dict[str, float] = field(default_factory=dict)  # module → weight; set by configs/reward/*.yaml
    options: dict[str, Any] = field(default_factory=dict)  # module → its keyword options
    turns: int = 0  # simulated-customer turns after the first reply (0 = score the first reply alone)
    customer_model: str = "smollm2-135m-instruct"
    judge_model: str = "smollm2-135m-instruct"
    plugins: list[str] = field(default_factory=list)  # Python files that @register_reward their own modules


@dataclass
class OptimizerConfig:
    """What every optimizer has; each optimizer registers a subclass with its own settings beside
    its code (`register_optimizer(name, config=...)`), so a key of another method is an error
    that lists this method's keys. `optimizer.name` picks the subclass in `validate`."""

    name: str = "ppo"  # registry: ppo | components | opro | bandit | random | manual | template
    budget: int | None = None  # max target calls (None: the method runs its own `steps`)
    private_cache: bool = True  # optimization replies cached in the run folder only (no free calls)


@dataclass
class EvalConfig:
    splits: list[str] = field(default_factory=lambda: ["val", "test", "heldout_persona"])
    max_scenarios: int | None = None  # per split; None = all
    bootstrap: int = 2000
    confidence: float = 0.95
    # Pick the shipped task-level prompt on `val` among the policy's greedy prompts at these many
    # checkpoints and its best-rewarded training samples (RLPrompt reports the best-on-val prompt).
    # 0 = ship the final greedy prompt as it is.
    select_checkpoints: int = 0
    select_samples: int = 0
    # Selection passes over a candidate whose sentence the frozen LM would not have ended where it
    # ends (its period forced at the last position, or closing a phrase mid-way), unless all are.
    min_end_probability: float = 0.0
    # Ship the most fluent candidate (under the frozen LM) among those within this many standard
    # errors of the val-best (the one-SE rule); 0 = the val-best.
    fluent_within_se: float = 0.0


@dataclass
class CacheConfig:
    enabled: bool = True
    path: str | None = None  # default: $RLPROMPT_CACHE/responses.sqlite


@dataclass
class ServeConfig:
    """The serving gateway (`rlprompt serve`, rlprompt/serve/). Bandit settings it shares with the
    offline bandit (retire_threshold, portfolio_size, prior_ess_*, the optimizer LLM) are read
    from `optimizer.*`, so the two run the same method with the same knobs."""

    host: str = "127.0.0.1"
    port: int = 8000
    database: str = "sqlite:///serve.sqlite"  # SQLAlchemy URL; postgresql+psycopg://... for replicas
    # Arms: export folders/files (task-level prompt + per-context prompt sets), prompts.json files,
    # or .txt files (one hand-written prompt each); plus hand-written prompt texts in `prompts`.
    # Both empty: the task's base instruction and seed prompts.
    portfolio: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    contextual: bool = True  # a posterior per (arm, context), shrunk towards the arm's global one
    context_strength: float = 20.0  # pseudo-observations the global posterior lends a context
    evolve_every: int = 200  # feedback events between evolution rounds; 0 = never evolve
    screen_scenarios: int = 8  # task scenarios (train split) a mutant is played on before going live
    screen_margin: float = 0.05  # a mutant may score at most this much (raw reward) under its parent
    guardrails: list[str] = field(default_factory=lambda: ["length", "banned_phrases", "invented_prices"])
    banned_phrases: list[str] = field(
        default_factory=lambda: ["as an ai", "guaranteed", "lowest price", "act now", "limited time"]
    )
    max_reply_words: int = 150  # guardrail `length` on screened replies (prompts: optimizer.max_prompt_chars)
    outcomes: dict[str, float] = field(
        default_factory=lambda: {
            "test_drive_booked": 1.0,
            "purchase": 1.0,
            "follow_up_booked": 0.7,
            "replied": 0.3,
            "no_response": 0.0,
            "unsubscribed": 0.0,
        }
    )
    auto_reward: bool = False  # score every reply with the reward modules (stored apart from feedback)
    api_keys_env: str = "RLPROMPT_SERVE_API_KEYS"  # comma-separated keys; unset = no auth
    protect_reads: bool = False  # also require a key for GET /v1/arms and /dashboard
    max_body_bytes: int = 262144
    max_tokens: int = 512  # cap on a request's max_tokens
    retry_after_s: int = 5  # Retry-After on 502/503 when the target is down
    refresh_s: float = 2.0  # reload posteriors from the database this often (replicas); 0 = never
    access_log: bool = False


@dataclass
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: optimizer_config_class("ppo")())
    eval: EvalConfig = field(default_factory=EvalConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    seed: int = 0
    threads: int = 0  # torch threads; 0 = all cores
    log_every: int = 1
    checkpoint_every: int = 10
    resume: str | None = None  # a run folder to continue exactly
    run_dir: str | None = None  # set by the script (Hydra's output dir)
    debug: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, for scripts (compare, transfer)


def config_dir() -> Path:
    """The Hydra config folder: `rlprompt/configs` in an installed package (`configs/` ships as
    package data), the repository's `configs/` in a checkout (editable installs included)."""
    package = Path(__file__).resolve().parent
    installed = package / "configs"
    return installed if (installed / "config.yaml").is_file() else package.parent / "configs"


def optimizer_config_class(name: str) -> type[OptimizerConfig]:
    """The config dataclass the optimizer `name` registered (unknown name: ConfigError listing them)."""
    from rlprompt.optimizers.base import OPTIMIZER_CONFIGS

    return OPTIMIZER_CONFIGS.get(name)


def every_optimizer_field() -> list[str]:
    """The union of every registered optimizer's fields, in first-seen order."""
    import dataclasses

    from rlprompt.optimizers.base import OPTIMIZER_CONFIGS

    names = [f.name for n in OPTIMIZER_CONFIGS.names() for f in dataclasses.fields(OPTIMIZER_CONFIGS.get(n))]
    return list(dict.fromkeys(names))


def optimizer_name(cfg: DictConfig | dict) -> str:
    """`optimizer.name` of a composed or partial config ("ppo" when it names none)."""
    section = cfg.get("optimizer") if hasattr(cfg, "get") else None
    name = section.get("name") if hasattr(section, "get") else None
    return str(name) if name is not None else OptimizerConfig.name


def validate(cfg: DictConfig | dict) -> RunConfig:
    """Merge a composed config into `RunConfig`; raise `ConfigError` naming the bad key.

    The optimizer section is checked against the dataclass of the optimizer it names.
    """
    optimizer = optimizer_name(cfg)
    schema = OmegaConf.structured(RunConfig(optimizer=optimizer_config_class(optimizer)()))
    try:
        merged = OmegaConf.merge(schema, cfg)
        run: RunConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        detail = str(getattr(err, "msg", None) or err).strip().splitlines()[0]
        section, _, name = key.rpartition(".")
        valid = section_fields(section, optimizer)
        if valid is not None and name not in valid:  # an unknown key: list the known ones
            where = f"'{section}'" if section else "the top level"
            detail = f"{where} has no field '{name}'. Valid fields: {', '.join(valid)}"
        raise ConfigError(f"invalid config key '{key}': {detail}") from err
    return run


def validate_recorded(cfg: DictConfig | dict) -> RunConfig:
    """`validate` for a config a run recorded (summary.json, .hydra/config.yaml, latest.json).

    Runs from before the per-optimizer configs recorded one flat optimizer section holding every
    method's settings; the keys the named method does not have never affected it and are dropped.
    A key the method has is validated as always.
    """
    import dataclasses

    data = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    section = data.get("optimizer")
    if isinstance(section, dict):
        keys = {f.name for f in dataclasses.fields(optimizer_config_class(optimizer_name(data)))}
        data["optimizer"] = {k: v for k, v in section.items() if k in keys}
    return validate(data)


def section_fields(path: str, optimizer: str = OptimizerConfig.name) -> list[str] | None:
    """Field names of the config section at dotted `path` ("" = top level), or None when it is
    not a dataclass section (a free-form dict such as `reward.modules`, a list, a value).
    `optimizer` names the optimizer whose dataclass the `optimizer` section is ("*": the fields
    of every optimizer)."""
    import dataclasses
    import typing

    cls: Any = RunConfig
    for part in [p for p in path.split(".") if p]:
        if not dataclasses.is_dataclass(cls):
            return None
        hints = typing.get_type_hints(cls)
        if part not in hints:
            return None
        if cls is RunConfig and part == "optimizer" and optimizer == "*":
            return every_optimizer_field() if path == part else None
        cls = optimizer_config_class(optimizer) if cls is RunConfig and part == "optimizer" else hints[part]
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else None
