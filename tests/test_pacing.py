"""The refresh pacer: one page redraws fast, many pages slow down together, timers don't flap."""

from __future__ import annotations

import pytest

from bnviz.pacing import FORGET_S, MAX_S, MIN_S, STEPS, RefreshPacer


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def pacer_with(costs: list[float], budget: float = 0.5) -> RefreshPacer:
    p = RefreshPacer(budget=budget, clock=Clock())
    for page, cost in enumerate(costs):
        p.record(page, cost)
    return p


def test_steps_double_from_the_fastest_to_the_slowest_interval():
    assert STEPS[0] == MIN_S and STEPS[-1] == MAX_S
    assert all(b == 2 * a for a, b in zip(STEPS, STEPS[1:]))


def test_one_page_alone_redraws_at_the_fastest_interval():
    assert pacer_with([0.08]).interval() == MIN_S
    assert RefreshPacer().interval() == MIN_S  # no page has reported yet


def test_interval_keeps_all_redraws_within_the_cpu_budget():
    # 10 pages at 0.08 s = 0.8 s of CPU per round; at half a core a round needs 1.6 s -> the 2 s step.
    p = pacer_with([0.08] * 10)
    assert p.wanted() == pytest.approx(1.6)
    assert p.interval() == 2.0
    pages, cost = p.load()
    assert (pages, cost) == (10, pytest.approx(0.8))
    assert cost / p.interval() <= 0.5


def test_a_class_of_thirty_is_capped_at_the_slowest_interval():
    assert pacer_with([0.3] * 30).interval() == MAX_S


def test_the_interval_goes_up_at_once_but_down_only_with_room_to_spare():
    p = pacer_with([0.08] * 10)  # wants 1.6 s
    assert p.interval(current=1.0) == 2.0  # up at once
    p = pacer_with([0.08] * 7)  # wants 1.12 s: within 2 s, not roomy in 1 s
    assert p.interval(current=2.0) == 2.0
    p = pacer_with([0.12] * 3)  # wants 0.72 s: 1 s would do, but only 2 s has room to spare
    assert p.interval(current=4.0) == 2.0
    assert p.interval() == 1.0  # a fresh page takes the step that fits
    p = pacer_with([0.01])
    assert p.interval(current=8.0) == MIN_S


def test_one_slow_redraw_is_smoothed_not_taken_whole():
    p = pacer_with([0.1])
    p.record(0, 1.1)
    assert p.load()[1] == pytest.approx(0.7 * 0.1 + 0.3 * 1.1)


def test_pages_that_closed_or_went_silent_stop_counting():
    clock = Clock()
    p = RefreshPacer(clock=clock)
    for page in range(20):
        p.record(page, 0.1)
    assert p.interval() == 4.0
    p.forget(0)
    assert p.load()[0] == 19
    clock.t = FORGET_S + 1
    p.record(99, 0.1)  # the only page still redrawing
    assert p.load() == (1, pytest.approx(0.1))
    assert p.interval() == MIN_S
