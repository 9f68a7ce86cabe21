"""The prompt policy: a frozen backbone with a trainable head, and its action spaces (tokens, components)."""
