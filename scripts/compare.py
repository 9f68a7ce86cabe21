"""Every optimizer on one budget: `python scripts/compare.py +budget=160` = `rlprompt compare`.

The command lives in rlprompt/commands/compare.py; `--help` lists its keys and the config groups.
"""

from rlprompt.commands.compare import cli

if __name__ == "__main__":
    cli()
