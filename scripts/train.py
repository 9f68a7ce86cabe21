"""Train a prompt policy with PPO: `accelerate launch scripts/train.py task=car_sales` = `rlprompt train`.

The command lives in rlprompt/commands/train.py; `--help` lists the config groups.
"""

from rlprompt.commands.train import cli

if __name__ == "__main__":
    cli()
