"""Serve learned prompts on live traffic: `python scripts/serve.py serve.port=8000` = `rlprompt serve`.

The command lives in rlprompt/commands/serve.py; `--help` lists its keys and the config groups.
"""

from rlprompt.commands.serve import cli

if __name__ == "__main__":
    cli()
