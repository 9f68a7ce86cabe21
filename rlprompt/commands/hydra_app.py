"""Run a command as a Hydra app on the packaged configs: `--help`, override checks, then `hydra.main`.

The configs ship inside the package (`rlprompt.config.config_dir()`), so composing needs no
checkout. A user's own config folder joins them with Hydra's `--config-dir DIR` (searched first:
`DIR/task/my_task.yaml` makes `task=my_task` valid) or `hydra.searchpath=[file:///abs/dir]`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlprompt.cli import check_overrides, guarded
from rlprompt.config import config_dir, section_fields

# Hydra's flags that take a value (`--info` takes an optional one: a topic below).
VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c"}
VALUE_FLAGS |= {"--package", "-p", "--experimental-rerun"}
INFO_TOPICS = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


@dataclass(frozen=True)
class HydraCommand:
    name: str  # also Hydra's job name: <run dir>/<name>.log
    doc: str  # what `--help` prints above the config groups
    task: Callable  # the `@hydra.main` task function, defined in the command's module
    config_name: str = "config"
    own_keys: tuple[str, ...] = ()  # the command's `+key=value` options, not RunConfig fields
    run_dir: str | None = None  # hydra.run.dir when the command line sets none (None: the config's)
    # The command runs several optimizers (compare): an `optimizer.<key>=` override is for every
    # method that has the key, so it is checked against all of them and force-added (`++`) to
    # the command's own config, whose optimizer may lack it (comparison.method_overrides).
    every_optimizer: bool = False


def run_hydra(command: HydraCommand, argv: Sequence[str] | None = None, prog: str | None = None) -> None:
    """`rlprompt <command> ARGS` and `scripts/<command>.py ARGS` (argv defaults to sys.argv[1:])."""
    import hydra

    args = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0])
    if "-h" in args or "--help" in args:
        print(command_help(command, prog, args))
        return
    overrides, dirs = split_args(args)
    if command.run_dir and not any(o.lstrip("+").startswith("hydra.run.dir=") for o in overrides):
        args.append(f"hydra.run.dir={command.run_dir}")
    if command.every_optimizer:
        args = [f"++{a}" if a in overrides and a.startswith("optimizer.") else a for a in args]
    sys.argv = [sys.argv[0], *args]  # Hydra parses sys.argv; guarded() reads `debug=true` there
    optimizer = "*" if command.every_optimizer else None
    guarded(lambda: check_overrides(overrides, dirs, command.own_keys, command.config_name, optimizer))
    app = hydra.main(config_path=str(config_dir()), config_name=command.config_name, version_base="1.3")
    app(command.task)()


def split_args(args: Sequence[str]) -> tuple[list[str], list[Path]]:
    """(the overrides, every config folder searched: `--config-dir` first, the packaged one, then
    `hydra.searchpath` entries) from a Hydra command line."""
    overrides: list[str] = []
    first: list[Path] = []
    last: list[Path] = []
    it = iter(range(len(args)))
    for i in it:
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            if not eq and i + 1 < len(args):
                value = args[i + 1]
            first.append(Path(value).expanduser().absolute())
        if arg in VALUE_FLAGS or (
            arg in ("--info", "-i") and i + 1 < len(args) and args[i + 1] in INFO_TOPICS
        ):
            next(it, None)
        elif not arg.startswith("-"):
            overrides.append(arg)
            if flag.lstrip("+") == "hydra.searchpath":
                last.extend(_searchpath_dirs(arg))
    return overrides, [*first, config_dir(), *last]


def _searchpath_dirs(override: str) -> list[Path]:
    """Folders named by a `hydra.searchpath=[file:///a, pkg://b.c]` override (unreadable ones skipped)."""
    from importlib import resources

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        value = OverridesParser.create().parse_overrides([override])[0].value()
    except HydraException:
        return []  # Hydra reports the syntax error itself
    out: list[Path] = []
    for entry in value if isinstance(value, list) else [value]:
        entry = str(entry)
        if entry.startswith("pkg://"):
            package, _, sub = entry[len("pkg://") :].partition("/")
            try:
                out.append(Path(str(resources.files(package))) / sub)
            except (ImportError, TypeError, ValueError):
                continue
        else:
            out.append(Path(entry.removeprefix("file://")))
    return out


def command_help(command: HydraCommand, prog: str, args: Sequence[str] = ()) -> str:
    """Usage, the command's own doc, every config group with its options (default starred)."""
    _, dirs = split_args([a for a in args if a not in ("-h", "--help")])
    groups: dict[str, set[str]] = {}
    bases: set[tuple[str, str]] = set()  # options other options build on (a shared base file)
    for folder in (d for d in dirs if d.is_dir()):
        for group in (p for p in folder.iterdir() if p.is_dir()):
            for option in group.glob("*.yaml"):
                groups.setdefault(group.name, set()).add(option.stem)
                bases.update((group.name, str(d)) for d in _defaults(option) if d != "_self_")
    groups = {g: {o for o in options if (g, o) not in bases} for g, options in groups.items()}
    defaults = _defaults(config_dir() / "config.yaml")
    width = max(map(len, groups), default=0) + 2
    group_lines = [
        f"  {name:<{width}}"
        + ", ".join(f"{o}*" if defaults.get(name) == o else o for o in sorted(options, key=str.lower))
        for name, options in sorted(groups.items())
    ]
    top = section_fields("") or []
    sections = [k for k in top if k not in groups and section_fields(k) is not None]
    scalars = [k for k in top if k not in groups and section_fields(k) is None]
    own = (
        f"\n{command.name}'s own keys (+KEY=VALUE): {', '.join(command.own_keys)}\n"
        if command.own_keys
        else ""
    )
    return f"""usage: {prog} [GROUP=OPTION] [KEY=VALUE ...] [--cfg job] [--config-dir DIR] [--help]

{command.doc.strip()}
{own}
config groups (GROUP=OPTION; * = default):
{chr(10).join(group_lines)}

other keys: {", ".join(scalars)}; sections: {", ".join(f"{s}.*" for s in sections)}
  (GROUP.FIELD=VALUE changes one field of a group, e.g. optimizer.steps=10 target.max_new_tokens=32)

Hydra:
  --cfg job            print the composed config and exit
  --config-dir DIR     add your own config folder, searched before the packaged one
                       (DIR/task/my_task.yaml makes task=my_task valid); or hydra.searchpath=[file:///DIR]
  hydra.run.dir=DIR    the output folder
  --hydra-help         Hydra's own flags
your own task folder:  task.name=my_task task.path=/abs/path/to/folder (docs/TASK_FORMAT.md)
packaged configs:      {config_dir()}
errors: one `error:` line, exit 2; debug=true shows the traceback"""


def _defaults(path: Path) -> dict[str, str | None]:
    """A config file's `defaults:` list: {group: option} entries, {name: None} plain entries."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, str | None] = {}
    for item in raw.get("defaults", []) if isinstance(raw, dict) else []:
        if isinstance(item, dict):
            out.update({str(k): str(v) for k, v in item.items()})
        elif isinstance(item, str):
            out[item] = None
    return out
