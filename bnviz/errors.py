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


def training_failure(exc: BaseException, what: str = "training") -> str:
    """The one line a run that raised ends with, <= 300 chars: '<what> failed: Type: first
    line'; a BnvizError's message, written for the user already, comes without its type."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    kind = "" if isinstance(exc, BnvizError) else f"{type(exc).__name__}: "
    return f"{what} failed: {kind}{first}"[:300]
