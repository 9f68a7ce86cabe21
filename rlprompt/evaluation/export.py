"""Export learned prompts as paste-ready text + a versioned JSON/YAML record, and load them back.

Why a separate format from prompts.json: prompts.json is the trainer's working file; an export
is what leaves the project (pasted into another product, sent to another team, evaluated on
other models), so it carries its provenance — schema version, config hash, evaluation reward
with its CI — and is validated before it is written. `load_exported` turns any export (or a
plain prompts.json) back into the `PromptSet` that every evaluator already reads, so its
lookup gives the same system prompt per scenario as the trained run's: the round trip is
bit-identical in reward (tests/test_export.py). The schema is in
docs/EXPORT_TRANSFER.md.

Layout written by `export(source, out)`:
  run folder    → out/{prompts.export.json, prompts.export.yaml, text/*.txt}
  report folder → out/<method>/{...the same...}   (one per prompts/<method>.json)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from rlprompt.env.prompting import check_prompt_text
from rlprompt.errors import ConfigError
from rlprompt.prompt_set import HEADER_KEYS, PromptEntry, PromptSet, split_context_key

if TYPE_CHECKING:
    from rlprompt.config import RunConfig
    from rlprompt.evaluation.evaluate import EvalResult
    from rlprompt.rewards.factory import RewardSetup
    from rlprompt.targets.base import Target

SCHEMA_VERSION = 1
KIND = "rlprompt.prompt_export"
EXPORT_JSON, EXPORT_YAML, TEXT_DIR = "prompts.export.json", "prompts.export.yaml", "text"
TASK_LEVEL_FILE = "task_level.txt"
# Key names whose values are credentials. `*_env` keys are exempt: they name a variable, and the
# variable's value is what must never be written (it is scrubbed by value below as well).
SECRET_KEY = re.compile(r"(?i)(^|_)(api_?key|secret|password|passwd|token|credentials?|authorization)$")
SECRET_ENV = re.compile(r"(?i)(key|token|secret|passw|credential|auth)")
MIN_SECRET_CHARS = 6  # shorter env values ("1", "true") would redact innocent config values


# ---------------------------------------------------------------- secrets + config hash


def _secret_values(config: Any) -> set[str]:
    """Values of env variables that look like credentials, plus those named by any `*_env` key."""
    names = {n for n in os.environ if SECRET_ENV.search(n)}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if str(key).endswith("_env") and isinstance(value, str):
                    names.add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    return {v for n in names if len(v := os.environ.get(n, "")) >= MIN_SECRET_CHARS}


def scrub_secrets(config: Any, secrets: set[str] | None = None) -> Any:
    """Drop credential-named keys and redact any string holding a secret env value.

    Keys only come from the environment in rlprompt, so this is a second line of defence: an
    export may be published, and a config hash over a secret would leak nothing but still
    change when the key rotates — neither belongs in a reproducibility fingerprint.
    """
    secrets = _secret_values(config) if secrets is None else secrets
    if isinstance(config, dict):
        return {
            k: scrub_secrets(v, secrets)
            for k, v in config.items()
            if not (SECRET_KEY.search(str(k)) and not str(k).endswith("_env"))
        }
    if isinstance(config, list):
        return [scrub_secrets(v, secrets) for v in config]
    if isinstance(config, str) and any(s in config for s in secrets):
        return "<redacted>"
    return config


def canonical_config(raw: dict) -> dict:
    """The resolved config with every default filled in (via RunConfig), so equal runs hash equal.

    A config that is not a RunConfig (e.g. a comparison report's) is hashed as resolved.
    """
    from rlprompt.config import validate_recorded

    try:
        return asdict(validate_recorded(raw))
    except Exception:
        return raw


def config_hash(config: dict | None) -> str | None:
    """sha256 of the canonical, secret-free config JSON (sorted keys, compact separators)."""
    if config is None:
        return None
    clean = scrub_secrets(canonical_config(config))
    payload = json.dumps(clean, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def read_config(folder: Path) -> dict | None:
    """The run's resolved config: .hydra/config.yaml, else summary.json's `config`, else None."""
    from omegaconf import OmegaConf

    hydra_file = folder / ".hydra" / "config.yaml"
    if hydra_file.is_file():
        loaded = OmegaConf.load(hydra_file)
        try:
            return OmegaConf.to_container(loaded, resolve=True)  # type: ignore[return-value]
        except Exception:  # an interpolation that needs Hydra at run time: hash it unresolved
            return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]
    summary = folder / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("config")
    return None


def evaluation_from_summary(summary: dict) -> dict:
    """Per split: the learned prompts' reward with CI, the base instruction's, and the paired gain."""
    confidence = summary.get("config", {}).get("eval", {}).get("confidence", 0.95)
    out = {}
    for split, entry in summary.get("splits", {}).items():
        out[split] = {
            "n": entry["learned"]["n"],
            "confidence": confidence,
            "reward": entry["learned"]["reward"],
            "base_instruction": entry.get("base_instruction", {}).get("reward"),
            "minus_base": entry.get("learned_minus_base"),
            "win_rate_vs_base": entry.get("win_rate_vs_base"),
        }
    return out


# ---------------------------------------------------------------- building the record


def safe_name(text: str) -> str:
    """A file-system-safe, readable stem: letters, digits, '-' and '_' only."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return stem[:80] or "prompt"


def context_file(key: str) -> str:
    return "__".join(safe_name(part) for part in key.split("|")) + ".txt"


def _check_entry(entry: PromptEntry, where: str) -> None:
    check_prompt_text(entry.text, where)
    check_prompt_text(entry.system_prompt, f"{where} (system prompt)")


def build_record(prompts: PromptSet, evaluation: dict | None = None, config: dict | None = None) -> dict:
    """A prompt set → the versioned export record (validated; raises ConfigError)."""
    method = prompts.method
    _check_entry(prompts.task_level, f"{method}: task-level prompt")
    header = prompts.to_dict()
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        **{k: header[k] for k in HEADER_KEYS},
        "config_hash": config_hash(config) if config is not None else prompts.config_hash,
        "evaluation": evaluation if evaluation is not None else prompts.evaluation,
        "task_level": {**prompts.task_level.to_dict(), "file": f"{TEXT_DIR}/{TASK_LEVEL_FILE}"},
        "per_context": {},
    }
    used = {TASK_LEVEL_FILE}
    for key, entry in prompts.per_context.items():
        parts = split_context_key(key)
        if len(parts) != 3:
            raise ConfigError(f"{method}: context key {key!r} must be 'persona|stage|urgency'")
        _check_entry(entry, f"{method}: prompt for context '{key}'")
        name, n = context_file(key), 2
        while name in used:  # two keys that differ only in unsafe characters
            name, n = context_file(key)[:-4] + f"-{n}.txt", n + 1
        used.add(name)
        record["per_context"][key] = {
            "persona": parts[0],
            "stage": parts[1],
            "urgency": parts[2],
            **entry.to_dict(),
            "file": f"{TEXT_DIR}/{name}",
        }
    return record


def write_record(record: dict, out: Path) -> list[Path]:
    """Write JSON, YAML (same content) and one paste-ready .txt per prompt; return the paths."""
    (out / TEXT_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out / TEXT_DIR).glob("*.txt"):  # a re-export must not leave old contexts behind
        stale.unlink()
    written = [out / EXPORT_JSON, out / EXPORT_YAML]
    written[0].write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    written[1].write_text(yaml.safe_dump(record, sort_keys=False, allow_unicode=True, width=100))
    for entry in (record["task_level"], *record["per_context"].values()):
        path = out / entry["file"]
        path.write_text(entry["system_prompt"] + "\n")
        written.append(path)
    return written


# ---------------------------------------------------------------- sources


@dataclass
class PromptSource:
    """One prompt set found in a source: `name` is its output subfolder ("" = the root)."""

    name: str
    prompts: PromptSet
    evaluation: dict | None = None
    config: dict | None = None


def prompt_sources(source: Path) -> list[PromptSource]:
    """Every prompt set in a prompts file, a run folder, or a comparison report folder.

    A report folder holds `prompts/<name>.json` (prompts.json shape, optional `evaluation`),
    or else the comparison's results.json (`methods.<label>.prompts.<seed>`).
    """
    if source.is_file():
        return [PromptSource("", load_exported(source))]
    if (source / "prompts.json").is_file():
        summary_file = source / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        evaluation = evaluation_from_summary(summary) if summary else None
        prompts = load_exported(source / "prompts.json")
        return [PromptSource("", prompts, evaluation, read_config(source))]
    config = read_config(source)
    files = sorted((source / "prompts").glob("*.json"))
    if files:
        return [PromptSource(f.stem, load_exported(f), None, config) for f in files]
    if (source / "results.json").is_file():
        return _from_results(json.loads((source / "results.json").read_text()), config)
    raise ConfigError(
        f"{source}: not a run folder (no prompts.json) and not a comparison report "
        "(no prompts/<method>.json, no results.json)"
    )


def _from_results(results: dict, config: dict | None) -> list[PromptSource]:
    """Prompt sets from a comparison results.json: one per (method, seed).

    Its per-split rewards pool all seeds of a method, so they are attached only when the method
    ran one seed (otherwise they would not describe the exported prompt).
    """
    out = []
    for label, method in results.get("methods", {}).items():
        seeds = method.get("prompts", {})
        evaluation = None
        if len(seeds) == 1:
            evaluation = {
                split: {
                    "n": e["n"],
                    "confidence": 0.95,
                    "reward": {k: e[k] for k in ("mean", "ci_low", "ci_high")},
                    "base_instruction": None,
                    "minus_base": e.get("diff_vs_manual"),
                    "win_rate_vs_base": e.get("win_rate_vs_manual"),
                }
                for split, e in method.get("splits", {}).items()
            }
        for seed, prompts in seeds.items():
            name = label if len(seeds) == 1 else f"{label}-seed{seed}"
            out.append(
                PromptSource(name, PromptSet.from_dict(prompts, f"results.json: {name}"), evaluation, config)
            )
    return out


def export(source: str | Path, out: str | Path | None = None) -> list[Path]:
    """Export every prompt set found in `source`; returns the export JSON paths written."""
    source = Path(source)
    root = Path(out) if out is not None else (source if source.is_dir() else source.parent) / "export"
    written = []
    for found in prompt_sources(source):
        record = build_record(found.prompts, found.evaluation, found.config)
        folder = root / safe_name(found.name) if found.name else root
        write_record(record, folder)
        written.append(folder / EXPORT_JSON)
    return written


# ---------------------------------------------------------------- loading back


def load_exported(path: str | Path) -> PromptSet:
    """An export (.json/.yaml), a prompts.json, or a folder holding either → its `PromptSet`.

    `evaluation` and `config_hash` ride along when present; everything the evaluators read is
    exactly what was exported, so scores reproduce bit for bit.
    """
    path = Path(path)
    if path.is_dir():
        candidates = [path / EXPORT_JSON, path / "prompts.json", path / EXPORT_YAML]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{path}: no {EXPORT_JSON}, prompts.json or {EXPORT_YAML} inside")
        path = found
    if not path.is_file():
        raise ConfigError(f"no such prompt file '{path}'")
    text = path.read_text()
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    version = data.get("schema_version")
    if version is not None and version > SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: schema_version {version} is newer than this rlprompt reads ({SCHEMA_VERSION})"
        )
    return PromptSet.from_dict(data, str(path))


def evaluate_exported(
    path: str | Path,
    run: RunConfig,
    split: str = "test",
    target: Target | None = None,
    reward: RewardSetup | None = None,
) -> EvalResult:
    """Score an exported prompt set exactly as ppo.run.evaluate_run scores the learned prompts.

    Same task, reward, generation params, split and `eval.max_scenarios` → the same rewards as
    summary.json. `target` / `reward` may be passed in to reuse loaded models.
    """
    from rlprompt.evaluation.evaluate import build_evaluator
    from rlprompt.task import load_task

    prompts = load_exported(path)
    task = load_task(run.task.name, run.task.path)
    if prompts.task != task.name:
        raise ConfigError(f"{path}: prompts are for task '{prompts.task}', config says '{task.name}'")
    return build_evaluator(run, task, target, reward).evaluate(split, prompts)


def verify_against_summary(export_path: str | Path, run_dir: str | Path) -> dict[str, tuple[float, float]]:
    """Re-score an export with its run's own config; split → (summary.json mean, re-scored mean).

    The two must be equal to the last bit: anything else means the export changed a prompt.
    """
    from rlprompt.config import validate_recorded

    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    run = validate_recorded(summary["config"])
    scored: dict[str, np.ndarray] = {}
    out = {}
    for split, entry in summary["splits"].items():
        # a pooled entry ("test+heldout_persona") is its parts' rewards concatenated, as the run did
        parts = split.split("+")
        for part in parts:
            if part not in scored:
                scored[part] = evaluate_exported(export_path, run, part).rewards
        out[split] = (
            entry["learned"]["reward"]["mean"],
            float(np.concatenate([scored[p] for p in parts]).mean()),
        )
    return out
