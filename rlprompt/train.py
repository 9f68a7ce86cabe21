"""`python -m rlprompt.train ARGS` = `rlprompt train ARGS`, for launchers that start a module:

    accelerate launch --cpu --num_processes 1 -m rlprompt.train task=car_sales
    accelerate launch --multi_gpu --num_processes 2 -m rlprompt.train task=car_sales threads=1

The command lives in rlprompt/commands/train.py.
"""

from rlprompt.commands.train import cli

if __name__ == "__main__":
    cli()
