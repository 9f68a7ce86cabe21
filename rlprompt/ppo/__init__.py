"""The RL core: PPO losses, the update, the trainer loop and its callbacks, checkpoints, distributed glue, one training run."""
