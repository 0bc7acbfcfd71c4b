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
