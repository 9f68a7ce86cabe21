"""The `rlprompt` command: `rlprompt <command> [ARGS]`, one module per command in this package.

Each command module has `cli(argv, prog)`; `scripts/<command>.py` calls the same function, so
`rlprompt train task=car_sales` and `python scripts/train.py task=car_sales` are the same run.
Multi-process training goes through accelerate: `accelerate launch -m rlprompt.train ...`.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Sequence

# name → what it does (each lives in rlprompt.commands.<name>)
COMMANDS = {
    "train": "train the PPO prompt policy, evaluate it on held-out splits → run folder",
    "compare": "every optimizer on one target-call budget and the same seeds → report folder",
    "score": "score one system prompt on a split, reward module by module",
    "export": "learned prompts as paste-ready text + JSON / YAML",
    "transfer": "score prompt sets on other target models → transfer matrix",
    "serve": "OpenAI-compatible gateway: prompt arms on live traffic, learning from feedback",
}


def overview() -> str:
    from rlprompt import __version__

    width = max(map(len, COMMANDS)) + 2
    lines = "\n".join(f"  {name:<{width}}{what}" for name, what in COMMANDS.items())
    return f"""usage: rlprompt <command> [ARGS]     (rlprompt {__version__})

Learn prompts for sales LLMs with reinforcement learning.

commands:
{lines}

`rlprompt <command> --help` lists the command's options; train, compare, score, transfer and serve take
Hydra overrides (rlprompt train task=car_sales optimizer.steps=10) and list the config groups.
Several processes or GPUs: accelerate launch [--num_processes N] -m rlprompt.train task=car_sales"""


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(overview(), file=sys.stdout if args else sys.stderr)
        if not args:
            print(f"error: no command given. Valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(0 if args else 2)
    if args[0] == "--version":
        from rlprompt import __version__

        print(f"rlprompt {__version__}")
        return
    name = args[0]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        print(
            f"error: unknown command '{name}'.{hint} Valid commands: {', '.join(COMMANDS)}", file=sys.stderr
        )
        sys.exit(2)
    module = importlib.import_module(f"rlprompt.commands.{name}")
    module.cli(args[1:], prog=f"rlprompt {name}")
