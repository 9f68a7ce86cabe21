"""Score a system prompt module by module: `python scripts/score.py +split=test` = `rlprompt score`.

The command lives in rlprompt/commands/score.py; `--help` lists its keys and the config groups.
"""

from rlprompt.commands.score import cli

if __name__ == "__main__":
    cli()
