"""Errors with one-line messages that name the problem (file, key, expected vs found)."""


class DlmarchError(ValueError):
    """Base class: a bad input the user can fix. The message is one line."""


class ConfigError(DlmarchError):
    """A config.json that is unreadable, incomplete, or describes an unsupported model."""


class CheckpointError(DlmarchError):
    """Weights that do not match their config: missing, unknown, mis-shaped or truncated tensors."""


def os_error_line(e: OSError) -> str:
    """An OSError as one line that names its file (Python's own text omits it for some errors)."""
    reason = e.strerror or str(e) or type(e).__name__
    names = [str(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason
