"""The environment a prompt is played in: system-prompt assembly and conversations with the target."""
