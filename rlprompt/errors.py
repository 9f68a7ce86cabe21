"""User-facing errors.

A `UserError` is a mistake the user can fix (a typo in a config, a missing package, an empty
split). Entry points print its message without a traceback (``--debug`` shows it); anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error in the user's input, with a message that names the field, the file and the fix."""


class ConfigError(UserError):
    """A configuration file or override is invalid."""


class RewardError(UserError):
    """A reward module returned a NaN or out-of-range score."""


class TargetError(Exception):
    """The target LLM failed for good (after retries). Work done so far is checkpointed."""
