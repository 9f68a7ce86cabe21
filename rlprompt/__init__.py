"""rlprompt: learn prompts for sales and support LLMs with reinforcement learning."""

__version__ = "0.1.0"
