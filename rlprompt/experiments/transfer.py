"""Transfer matrix: prompt sets learned on one model, scored on other models.

RLPrompt (Deng et al. 2022) found that learned prompts, ungrammatical as they are, transfer
across LMs, and that small→large transfers better than large→small. This module measures that
for our prompts: rows are prompt sets (method @ source model), columns are targets (local HF
chat models, local base models in the completion format, OpenAI-compatible endpoints), cells
are the mean reward with its 95 % bootstrap CI and — the number that matters — the paired gain
over the task's hand-written base instruction *on that same target*, with a paired-bootstrap
CI. A raw mean is not comparable across targets (a stronger model scores higher whatever the
prompt); the gain over the target's own baseline is.

Every cell is scored with rlprompt.evaluation.evaluate.evaluate on the same split, scenarios, reward and
generation settings as training's held-out evaluation, through the shared response cache.
"""

from __future__ import annotations

import json
import logging
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlprompt.config import RunConfig, TargetConfig, config_dir
from rlprompt.errors import ConfigError
from rlprompt.evaluation.evaluate import Evaluator, paired_difference, win_rate
from rlprompt.evaluation.export import EXPORT_JSON, EXPORT_YAML, load_exported, prompt_sources
from rlprompt.prompt_set import PromptSet

log = logging.getLogger(__name__)
DIRECT_FILES = (EXPORT_JSON, "prompts.json", EXPORT_YAML)
TARGET_CONFIGS = config_dir() / "target"


@dataclass
class PromptRow:
    """One row: a prompt set and its display label."""

    label: str
    prompts: PromptSet
    source: str


@dataclass
class TargetSpec:
    """One column: a validated TargetConfig and its display label."""

    label: str
    cfg: TargetConfig


@dataclass
class Matrix:
    task: str
    split: str
    reward: str
    n: int
    confidence: float
    rows: list[str]
    columns: list[str]
    targets: dict[str, dict]  # column → target description (name, model, format, target_id)
    baseline: dict[str, dict]  # column → base instruction reward {mean, ci_low, ci_high}
    cells: dict[str, dict[str, dict]]  # row → column → {reward, gain, win_rate_vs_base}
    sources: dict[str, str] = field(default_factory=dict)  # row → file it came from

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- inputs


def load_prompt_sets(paths: list[str | Path]) -> list[PromptRow]:
    """Exports, prompts.json files, run folders or comparison reports → labelled rows.

    Labels are "method @ source model" (in a comparison report, the report's method label, with
    "-seed<n>" when a method ran several seeds: ablation variants all say method "ppo"); two sets
    that would share a label (e.g. the same method trained against different targets) get the
    training target appended, then a counter.
    """
    found: list[tuple[PromptSet, str, str]] = []  # (prompts, source file, method label)
    for raw in paths:
        path = Path(raw)
        if path.is_dir() and not any((path / name).is_file() for name in DIRECT_FILES):
            exports = sorted(path.glob(f"*/{EXPORT_JSON}"))  # an export of a comparison report
            for export in exports:
                prompts = load_exported(export)
                found.append((prompts, str(export), export.parent.name))  # the report's label
            if not exports:  # a comparison report: prompts/<method>.json or results.json
                for src in prompt_sources(path):
                    file = path / "prompts" / f"{src.name}.json"
                    source = file if file.is_file() else path / "results.json"
                    found.append((src.prompts, str(source), src.name or src.prompts.method))
        else:
            prompts = load_exported(path)
            found.append((prompts, str(path), prompts.method))
    if not found:
        raise ConfigError("transfer needs at least one prompt set (+prompts=[...])")
    labels = [f"{name} @ {p.source_model}" for p, _, name in found]
    dupes = {x for x in labels if labels.count(x) > 1}
    labels = [
        f"{x} (trained on {p.target_model})" if x in dupes else x for x, (p, _, _) in zip(labels, found)
    ]
    seen: dict[str, int] = {}
    rows = []
    for label, (prompts, source, _) in zip(labels, found):
        seen[label] = seen.get(label, 0) + 1
        final = label if seen[label] == 1 else f"{label} #{seen[label]}"
        rows.append(PromptRow(final, prompts, source))
    tasks = {r.prompts.task for r in rows}
    if len(tasks) > 1:
        raise ConfigError(
            f"prompt sets are for different tasks ({', '.join(sorted(tasks))}): one task per matrix"
        )
    return rows


def target_spec(raw: str | dict, configs: Path = TARGET_CONFIGS) -> TargetSpec:
    """A target from a config-group name ("gemma3") or an inline dict.

    An inline dict starts from `config: <name>` if given (else from the TargetConfig defaults)
    and overrides its fields; `label` names the column. Typos fail here, naming the field.
    """
    entry = {"config": raw} if isinstance(raw, str) else dict(raw)
    base_name = entry.pop("config", None)
    label = entry.pop("label", None)
    base: dict[str, Any] = {}
    if base_name is not None:
        file = configs / f"{base_name}.yaml"
        if not file.is_file():
            valid = ", ".join(sorted(p.stem for p in configs.glob("*.yaml")))
            raise ConfigError(f"unknown target config '{base_name}'. Valid names: {valid}")
        base = yaml.safe_load(file.read_text()) or {}
    try:
        merged = OmegaConf.merge(OmegaConf.structured(TargetConfig), base, entry)
        cfg: TargetConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"target {raw!r}: invalid field '{key}': {err}") from err
    if label is None:
        label = base_name if base_name is not None and not entry else f"{cfg.name}:{Path(cfg.model).name}"
    return TargetSpec(str(label), cfg)


def target_specs(raw: list[str | dict], overrides: dict | None = None) -> list[TargetSpec]:
    """Targets with `overrides` (e.g. {max_new_tokens: 16}) applied to each; labels must be unique."""
    specs = []
    for entry in raw:
        item = {"config": entry, "label": entry} if isinstance(entry, str) else dict(entry)
        specs.append(target_spec({**item, **(overrides or {})}))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"target labels must be unique, got {labels}: set `label` on inline targets")
    if not specs:
        raise ConfigError("transfer needs at least one target (+targets=[smollm2,...])")
    return specs


# ---------------------------------------------------------------- the matrix


def transfer_matrix(
    sets: list[PromptRow], specs: list[TargetSpec], run: RunConfig, split: str = "test"
) -> Matrix:
    """Score every prompt set and the base instruction on every target (one target loaded at a time)."""
    from rlprompt.build import build_cache, build_target, generation_params
    from rlprompt.rewards.factory import reward_from_config
    from rlprompt.task import load_task

    task = load_task(sets[0].prompts.task, run.task.path)
    cache = build_cache(run.cache)
    reward = reward_from_config(run.reward, task, cache)
    conf, n_boot = run.eval.confidence, run.eval.bootstrap
    matrix = Matrix(
        task=task.name,
        split=split,
        reward=run.reward.name,
        n=0,
        confidence=conf,
        rows=[s.label for s in sets],
        columns=[t.label for t in specs],
        targets={},
        baseline={},
        cells={s.label: {} for s in sets},
        sources={s.label: s.source for s in sets},
    )
    for spec in specs:
        target = build_target(spec.cfg, cache, role=f"transfer:{spec.label}")
        params = generation_params(spec.cfg, run.seed)

        evaluator = Evaluator(task, target, reward, params, run.eval.max_scenarios, run.reward.turns)
        base = evaluator.evaluate(split, task.base_instruction)
        matrix.n = len(base.rewards)
        matrix.baseline[spec.label] = base.interval(conf, n_boot).as_dict()
        matrix.targets[spec.label] = {
            "name": spec.cfg.name,
            "model": spec.cfg.model,
            "format": spec.cfg.format,
            "base_url": spec.cfg.base_url,
            "max_new_tokens": spec.cfg.max_new_tokens,
            "target_id": target.target_id,
        }
        for prompt_set in sets:
            result = evaluator.evaluate(split, prompt_set.prompts)
            matrix.cells[prompt_set.label][spec.label] = {
                "reward": result.interval(conf, n_boot).as_dict(),
                "gain": paired_difference(result, base, conf, n_boot).as_dict(),
                "win_rate_vs_base": win_rate(result, base),
            }
            log.info("%s on %s: %s", prompt_set.label, spec.label, result.interval(conf, n_boot))
        log.info(
            "target %s: %d calls, %d cache hits", spec.label, target.counter.calls, target.counter.cache_hits
        )
        del target
    return matrix


# ---------------------------------------------------------------- outputs


def _fmt(ci: dict) -> str:
    return f"{ci['mean']:.3f} [{ci['ci_low']:.3f}, {ci['ci_high']:.3f}]"


def _fmt_gain(ci: dict) -> str:
    return f"{ci['mean']:+.3f} [{ci['ci_low']:+.3f}, {ci['ci_high']:+.3f}]"


def to_markdown(m: Matrix) -> str:
    pct = round(m.confidence * 100)
    lines = [
        f"# Transfer matrix — task `{m.task}`, split `{m.split}` (n={m.n}), reward `{m.reward}`",
        "",
        f"Cell: mean reward [{pct} % bootstrap CI]; below it, the gain over the "
        f"target's own base instruction with its {pct} % paired-bootstrap CI. "
        "A gain whose CI excludes 0 is a real difference on these scenarios.",
        "",
        "| source prompt set | " + " | ".join(f"`{c}`" for c in m.columns) + " |",
        "|---|" + "---|" * len(m.columns),
        "| *base instruction (baseline)* | " + " | ".join(_fmt(m.baseline[c]) for c in m.columns) + " |",
    ]
    for row in m.rows:
        cells = [m.cells[row][c] for c in m.columns]
        lines.append(
            f"| {row} | "
            + " | ".join(f"{_fmt(x['reward'])}<br>gain {_fmt_gain(x['gain'])}" for x in cells)
            + " |"
        )
    lines += ["", "Targets:", ""]
    lines += [f"- `{c}`: {m.targets[c]['target_id']}" for c in m.columns]
    return "\n".join(lines) + "\n"


def heatmap(m: Matrix, path: Path) -> None:
    """Gain over each target's baseline as colour (diverging, centred on 0); text = reward and gain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    gains = np.array([[m.cells[r][c]["gain"]["mean"] for c in m.columns] for r in m.rows])
    limit = float(np.abs(gains).max()) or 1.0
    rows = [textwrap.fill(r, 34) for r in m.rows]
    label_inches = 0.075 * max(len(line) for r in rows for line in r.splitlines())
    fig, ax = plt.subplots(figsize=(3.0 + label_inches + 1.3 * len(m.columns), 1.6 + 0.8 * len(m.rows)))
    image = ax.imshow(gains, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(m.columns)))
    ax.set_xticklabels([f"{c}\nbase {m.baseline[c]['mean']:.3f}" for c in m.columns], fontsize=8)
    ax.set_yticks(range(len(m.rows)))
    ax.set_yticklabels(rows, fontsize=8)
    for i, r in enumerate(m.rows):
        for j, c in enumerate(m.columns):
            cell = m.cells[r][c]
            ax.text(
                j,
                i,
                f"{cell['reward']['mean']:.3f}\nΔ {cell['gain']['mean']:+.3f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if abs(cell["gain"]["mean"]) > 0.6 * limit else "black",
            )
    fig.colorbar(image, ax=ax, label="Δ vs base instruction")
    ax.set_title(
        f"{m.task} / {m.split} (n={m.n}): reward and Δ over the target's base instruction", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_matrix(m: Matrix, out: Path) -> dict[str, Path]:
    """transfer.md, transfer.json and transfer.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "transfer.md", "json": out / "transfer.json", "png": out / "transfer.png"}
    paths["md"].write_text(to_markdown(m))
    paths["json"].write_text(json.dumps(m.as_dict(), indent=2, ensure_ascii=False) + "\n")
    heatmap(m, paths["png"])
    return paths
