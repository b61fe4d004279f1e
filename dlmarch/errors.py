"""Errors with one-line messages that name the problem (file, key, expected vs found)."""


class DlmarchError(ValueError):
    """Base class: a bad input the user can fix. The message is one line."""


class ConfigError(DlmarchError):
    """A config.json that is unreadable, incomplete, or describes an unsupported model."""


class CheckpointError(DlmarchError):
    """Weights that do not match their config: missing, unknown, mis-shaped or truncated tensors."""
