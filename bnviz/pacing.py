"""How often live pages redraw, so that many open pages cannot starve the training.

Every live page re-runs a fragment on a timer, and all re-runs, the event loop and the
training workers share one Python process (one GIL). Measured on 2 cores
(docs/DEPLOYMENT.md): from about 6 live pages at a fixed 0.5 s, redraws took nearly all
the process's CPU, workers starved and pages updated every 10-90 s. So the interval grows
with the redraw work the server carries: each page reports what its last redraw cost (CPU
seconds of its thread), and every page redraws at

    interval = clamp(sum of live pages' redraw costs / BUDGET, MIN_S, MAX_S)

so redraws together use about BUDGET of a core and the rest is left to the workers. One
page alone redraws every MIN_S; 30 pages at ~0.08 s each want 4.8 s and get the 8 s step.

Intervals are powers of two times MIN_S: a page changes its timer (which costs a full
re-run) only when the load moves a whole step, and it steps down only after the load has
fallen well below the step (hysteresis), so the timers do not flap.
"""

from __future__ import annotations

import threading
import time

MIN_S = 0.5
MAX_S = 8.0
BUDGET = 0.5  # cores' worth of CPU all redraws may take together
FORGET_S = 30.0  # a page silent this long (tab closed, run ended) no longer counts
DOWN_FACTOR = 0.6  # step down only to a step the wanted interval fills at most this much of


def _steps() -> list[float]:
    out, s = [], MIN_S
    while s <= MAX_S:
        out.append(s)
        s *= 2
    return out


STEPS = tuple(_steps())


class RefreshPacer:
    """Process-wide record of live pages' redraw costs; tells each page its refresh interval."""

    def __init__(self, budget: float = BUDGET, clock=time.monotonic):
        self.budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self._cost: dict[int, tuple[float, float]] = {}  # page id -> (seconds of CPU per redraw, when)

    def record(self, page: int, cpu_s: float) -> None:
        """A page redrew at a cost of ``cpu_s`` (smoothed: one slow redraw does not slow everyone)."""
        now = self._clock()
        with self._lock:
            old = self._cost.get(page)
            smooth = cpu_s if old is None else 0.7 * old[0] + 0.3 * cpu_s
            self._cost[page] = (smooth, now)

    def forget(self, page: int) -> None:
        with self._lock:
            self._cost.pop(page, None)

    def load(self) -> tuple[int, float]:
        """(live pages, their summed redraw cost in CPU seconds), dropping pages gone silent."""
        now = self._clock()
        with self._lock:
            for page in [p for p, (_, at) in self._cost.items() if now - at > FORGET_S]:
                del self._cost[page]
            return len(self._cost), sum(c for c, _ in self._cost.values())

    def wanted(self) -> float:
        """The interval that keeps redraws within the budget (not yet rounded to a step)."""
        return min(max(self.load()[1] / self.budget, MIN_S), MAX_S)

    def interval(self, current: float | None = None) -> float:
        """The step to use now, given the page's ``current`` step (None: a page's first timer).

        Up at once to the smallest step that covers the wanted interval; down only to a step
        the wanted interval fits into with room to spare (DOWN_FACTOR of it), so a load that
        hovers around a step boundary does not make every timer flap.
        """
        want = self.wanted()
        up = next((s for s in STEPS if s >= want - 1e-9), STEPS[-1])
        if current is None or up >= current:
            return up
        # (the fastest step has nothing below it to flap with: it only needs to fit)
        roomy = next((s for s in STEPS if want <= DOWN_FACTOR * s or want <= s == MIN_S), STEPS[-1])
        return min(current, roomy)


PACER = RefreshPacer()
