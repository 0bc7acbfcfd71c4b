"""The app's pages, and the one way into them: app.py's ``st.navigation``.

Streamlit still knows the first way of writing multipage apps: a ``pages/`` folder beside
the main script makes each file in it a page of its own. ``st.navigation`` switches that
off, but only from the moment some session calls it, and the switch is process-wide: until
someone has opened the app's root since the server started, a first visit straight to a
page's address (a link a teacher shared, a reload, a bookmark) runs that file alone,
without app.py: no wide layout, and a sidebar that lists "app" and file names. So every
file in pages/ begins with ``through_app()``, which sends such a run back through app.py
to the same page.
"""

from __future__ import annotations

import threading

import streamlit as st

from ui import lab
from ui.common import page_style

# (script or function, title, icon); st.Page derives each address from the file name,
# e.g. /Paper_Figure_1, so a page's address survives a change of its title.
PAGES = [
    (lab.page, "Live lab", ":material/science:"),
    ("pages/1_Paper_Figure_1.py", "Paper Figure 1", ":material/article:"),
    ("pages/2_BN_step_by_step.py", "BN step by step", ":material/calculate:"),
    ("pages/3_Does_BN_reduce_covariate_shift.py", "Does BN really reduce covariate shift?", ":material/quiz:"),
    ("pages/4_Batch_size_and_alternatives.py", "Batch size and the alternatives", ":material/stacked_bar_chart:"),
    ("pages/5_Larger_learning_rates.py", "Larger learning rates", ":material/speed:"),
]

# One script run at a time per session, each on its session's script thread: a thread-local
# says whether the page now running was entered through run().
_run = threading.local()
_REROUTED = "nav.rerouted"


def _navigation() -> st.Page:
    return st.navigation([st.Page(target, title=title, icon=icon, default=i == 0)
                          for i, (target, title, icon) in enumerate(PAGES)])


def run() -> None:
    """What app.py does: the app's layout and sidebar, then the page the address names."""
    st.set_page_config(page_title="bnviz", page_icon="📈", layout="wide")
    page_style()
    page = _navigation()
    _run.through_app = True
    try:
        page.run()
    finally:
        _run.through_app = False


def through_app() -> None:
    """First call of every file in pages/: run directly by Streamlit's pages/ folder
    handling, call st.navigation (which turns that handling off for the whole server) and
    rerun, which now goes through app.py to this same page (its address is the same)."""
    if getattr(_run, "through_app", False) or st.session_state.get(_REROUTED):
        return  # the normal way in; or a reroute did not take: show the page rather than loop
    st.session_state[_REROUTED] = True
    _navigation()
    st.rerun()
