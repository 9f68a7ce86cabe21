"""Score prompt sets on other models: `python scripts/transfer.py +prompts=[...]` = `rlprompt transfer`.

The command lives in rlprompt/commands/transfer.py; `--help` lists its keys and the config groups.
"""

from rlprompt.commands.transfer import cli

if __name__ == "__main__":
    cli()
