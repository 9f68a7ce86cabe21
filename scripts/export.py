"""Export learned prompts: `python scripts/export.py <run folder>` = `rlprompt export`.

The command lives in rlprompt/commands/export.py.
"""

from rlprompt.commands.export import cli

if __name__ == "__main__":
    cli()
