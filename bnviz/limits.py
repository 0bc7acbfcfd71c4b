"""Server limits a teacher sets with environment variables (documented in docs/DEPLOYMENT.md).

Read at call time, not import time, so a test or a long-running server sees the current
environment. A request beyond a limit is a ConfigError that names the limit's variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bnviz.errors import ConfigError

# variable -> (default, what it bounds). The one place these names and defaults live.
LIMIT_VARS: dict[str, tuple[int, str]] = {
    "BNVIZ_MAX_WORKERS": (4, "training workers running at once on this server"),
    "BNVIZ_MAX_STEPS": (200_000, "training steps per variant"),
    "BNVIZ_MAX_DEPTH": (20, "hidden layers"),
    "BNVIZ_MAX_WIDTH": (1024, "units (MLP) or channels (CNN) per hidden layer"),
    "BNVIZ_MAX_BATCH": (1024, "mini-batch size"),
    "BNVIZ_IDLE_TIMEOUT_S": (600, "seconds without a page refresh before a session's training stops"),
}


@dataclass(frozen=True)
class Limits:
    max_workers: int
    max_steps: int
    max_depth: int
    max_width: int
    max_batch: int
    idle_timeout_s: int


def current() -> Limits:
    """The limits in force now, from the environment (defaults where unset)."""
    values = {}
    for var, (default, what) in LIMIT_VARS.items():
        raw = os.environ.get(var, "").strip()
        if not raw:
            values[var] = default
            continue
        try:
            values[var] = int(raw)
        except ValueError:
            raise ConfigError(f"{var}: expected a positive integer ({what}), got {raw!r}") from None
        if values[var] < 1:
            raise ConfigError(f"{var}: expected a positive integer ({what}), got {raw!r}")
    return Limits(*(values[v] for v in LIMIT_VARS))


WORKER_MODE_VAR = "BNVIZ_WORKER_MODE"
WORKER_MODES = ("thread", "process")  # bnviz/live.py: threads of the server, or bnviz/remote.py's processes
DEFAULT_WORKER_MODE = "thread"


def worker_mode() -> str:
    """How this server runs training workers, from BNVIZ_WORKER_MODE (read at each start, like the limits)."""
    raw = os.environ.get(WORKER_MODE_VAR, "").strip().lower() or DEFAULT_WORKER_MODE
    if raw not in WORKER_MODES:
        raise ConfigError(f"{WORKER_MODE_VAR}: expected one of {', '.join(WORKER_MODES)}, got {raw!r}")
    return raw
