"""The one error family bnviz raises for bad input.

Every message is a single line that names the field (or thing), the value and what is
allowed, so the CLI and the app can show it verbatim without a traceback.
"""


class BnvizError(Exception):
    """Base of every error bnviz reports to a user."""


class ConfigError(BnvizError, ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class DataError(BnvizError):
    """A dataset could not be loaded (and no fallback applied)."""


def training_failure(exc: BaseException) -> str:
    """The one line a run that raised ends with: 'training failed: Type: first line', <= 300 chars."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"training failed: {type(exc).__name__}: {first}"[:300]
