"""Shared entry-point plumbing: user errors print one clear line (``debug=true`` shows the traceback)."""

from __future__ import annotations

import difflib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rlprompt.errors import ConfigError, TargetError, UserError

EXIT_USER_ERROR = 2  # fix the input and rerun
EXIT_TARGET_ERROR = 3  # the target LLM failed for good; the run folder can be resumed


def guarded(main: Callable[[], object], debug: bool = False) -> object:
    """Run `main`; a `UserError` (exit 2) or `TargetError` (exit 3) prints one line, no traceback.

    Call it *inside* a `@hydra.main` function: Hydra catches what escapes that function and prints
    it with a traceback. `debug=true` (or `--debug`) re-raises, so the traceback shows.
    """
    try:
        return main()
    except (UserError, TargetError) as err:
        if debug or "--debug" in sys.argv or "debug=true" in sys.argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR if isinstance(err, UserError) else EXIT_TARGET_ERROR)


def check_overrides(
    overrides: Sequence[str],
    config_dir: Path | Sequence[Path],
    script_keys: Sequence[str] = (),
    config_name: str = "config",
    optimizer: str | None = None,
) -> None:
    """Check command-line overrides against the config groups and `RunConfig` before Hydra composes.

    Hydra reports an unknown key (`optimizer.lrr=1`) as "not in struct ... use +optimizer.lrr=1"
    and an unknown group option as a search-path dump; this names the key or option and lists the
    valid ones instead. Only what can be decided from the schema is checked; the rest (value
    types, keys inside free-form dicts) is left to Hydra and `rlprompt.config.validate`.
    `config_dir` may be several folders (the packaged configs plus a user's `--config-dir`):
    a group's options are those of every folder. `optimizer.*` keys are checked against the
    optimizer the command line (or else the primary config `config_name`) selects, or against
    every optimizer's when `optimizer="*"` (compare runs several).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    from rlprompt.config import section_fields

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # a syntax error: Hydra's own message points at the character
    dirs = [Path(config_dir)] if isinstance(config_dir, (str, Path)) else [Path(d) for d in config_dir]
    groups: dict[str, set[str]] = {}
    for folder in (d for d in dirs if d.is_dir()):
        for group in (p for p in folder.iterdir() if p.is_dir()):
            groups.setdefault(group.name, set()).update(p.stem for p in group.glob("*.yaml"))
    optimizer = optimizer or selected_optimizer(parsed, dirs, config_name)
    for override in parsed:
        key = override.key_or_group
        if key.split(".")[0] == "hydra" or override.type == OverrideType.DEL or key in script_keys:
            continue
        if key in groups and not override.is_sweep_override():
            value = override.value()
            options = sorted(groups[key])
            if isinstance(value, str) and value not in options:
                raise ConfigError(
                    f"unknown {key} '{value}' (override '{override.input_line}'). "
                    f"Valid {key} names: {', '.join(options)}"
                )
            continue
        parts = key.split(".")
        for depth in range(1, len(parts) + 1):
            section, name = ".".join(parts[: depth - 1]), parts[depth - 1]
            valid = section_fields(section, optimizer)
            if valid is None:  # a free-form dict (reward.modules, extra, ...): anything goes below
                break
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f" Did you mean '{'.'.join([*parts[: depth - 1], close[0]])}'?" if close else ""
                where = f"'{section}'" if section else "the top level"
                raise ConfigError(
                    f"unknown config key '{key}' (override '{override.input_line}'): {where} has no "
                    f"field '{name}'.{hint} Valid fields: {', '.join(valid)}"
                )


def selected_optimizer(parsed: list, dirs: Sequence[Path], config_name: str) -> str:
    """The optimizer a command line selects: `optimizer.name=X`, `optimizer=X`, else the one the
    primary config's defaults list names (following its plain entries, e.g. gateway -> config)."""
    import yaml

    given = {o.key_or_group: o.value() for o in parsed if isinstance(o.value(), str)}
    if "optimizer.name" in given or "optimizer" in given:
        return given.get("optimizer.name") or given["optimizer"]
    seen: set[str] = set()
    pending = [config_name]
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        path = next((d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()), None)
        try:
            raw = yaml.safe_load(path.read_text()) if path else {}
        except (OSError, yaml.YAMLError):
            raw = {}
        entries = raw.get("defaults", []) if isinstance(raw, dict) else []
        keys = ("override optimizer", "optimizer")  # the primary config's own entries come first
        choice = [e[k] for k in keys for e in entries if isinstance(e, dict) and k in e]
        if choice:
            return str(choice[0])
        pending += [e for e in entries if isinstance(e, str) and e != "_self_"]
    return "ppo"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main() -> None:  # the `rlprompt` console script: `rlprompt train|compare|score|export|transfer ...`
    from rlprompt.commands import main as dispatch

    dispatch()
