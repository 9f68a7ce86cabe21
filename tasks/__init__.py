"""Packaged task folders (installed as `rlprompt.tasks`): each holds domain.yaml + scenarios.jsonl."""
