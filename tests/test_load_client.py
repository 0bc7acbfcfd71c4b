"""The load client (bench/load.py) reads every page sample once, even when a tab is too busy to answer.

On two shared cores Chromium can stall a tab for 20 s; such a read used to end the session
with an error and lose the samples it would have read. No browser here: a fake page.
"""

from __future__ import annotations

import asyncio

from bench import load


class _SlowThenFastTab:
    """Answers like a tab of bench/load.py: the samples numbered after `since`; the first read hangs."""

    def __init__(self):
        self.log = [{"i": i, "t": 1000 * i, "p": f"step {25 * i} / 2,000 · 30 steps/s · training"} for i in (1, 2, 3)]
        self.calls = 0

    async def read(self, since):
        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(5)
        return [r for r in self.log if r["i"] > since]


def test_a_read_that_times_out_is_counted_not_an_error_and_loses_no_sample(monkeypatch):
    monkeypatch.setattr(load, "COLLECT_TIMEOUT_S", 0.05)
    s = load.Session(0)
    s.tab = _SlowThenFastTab()

    asyncio.run(load._collect(s))
    assert s.error is None and s.collect_timeouts == 1 and s.samples == []

    asyncio.run(load._collect(s))
    assert [x["step"] for x in s.samples] == [25, 50, 75]

    s.tab.log.append({"i": 4, "t": 4000, "p": "step 100 / 2,000 · 30 steps/s · training"})
    asyncio.run(load._collect(s))
    assert [x["step"] for x in s.samples] == [25, 50, 75, 100], "each sample is read once"
    assert s.summary()["collect_timeouts"] == 1


def test_samples_read_before_are_not_added_twice():
    s = load.Session(0)
    rows = [{"i": 1, "t": 1000, "p": None}, {"i": 2, "t": 2000, "p": None}]
    s.add(rows)
    s.add(rows + [{"i": 3, "t": 3000, "p": None}])
    assert len(s.samples) == 3 and s.last_read == 3
