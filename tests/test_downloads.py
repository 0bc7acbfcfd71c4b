"""The files a page offers for download are built once per run and state, kept as bytes, and
do not keep a replaced run alive (ui.common.kept_files; Streamlit's bare mode gives it a
session state of its own here)."""

from __future__ import annotations

import gc
import weakref

from ui.common import kept_files


class _Run:
    """Stands for a Trainer or a SweepJob: only its identity matters."""


def test_files_are_built_once_per_run_and_state_and_kept_as_bytes():
    built = []

    def build():
        built.append(1)
        return f"step,loss\n{len(built)},0.5\n", "<html>report</html>"

    run = _Run()
    first = kept_files("t.once", run, (10, "paused"), build)
    assert first == (b"step,loss\n1,0.5\n", b"<html>report</html>")
    assert kept_files("t.once", run, (10, "paused"), build) is not None and len(built) == 1  # a rerun: kept
    assert kept_files("t.once", run, (11, "paused"), build)[0] == b"step,loss\n2,0.5\n"  # a Step later
    assert kept_files("t.once", _Run(), (11, "paused"), build)[0] == b"step,loss\n3,0.5\n"  # a new run


def test_the_kept_files_do_not_keep_a_replaced_run_alive():
    run = _Run()
    gone = weakref.ref(run)
    kept_files("t.alive", run, 1, lambda: ("a", "b"))
    # Reset, Start: the lab drops the run; the new one trains, so nothing is built for it yet
    # and the old run's files stay in the session until the new run stands still.
    del run
    gc.collect()
    assert gone() is None
