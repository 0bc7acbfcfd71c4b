"""bnviz: train networks with and without Batch Normalization side by side and watch
every layer's distribution, gradients and loss move, live.

    streamlit run app.py

The pages and their order are in ui/navigation.py.
"""

import sys

from bnviz.malloc_arenas import limit_arenas
from bnviz.numpy_sort import prefer_avx2_sort

# Before anything imports numpy (Streamlit imports it only as the first page runs): numpy picks
# its sort code once, and on AMD Zen 4 its AVX-512 sort is 4-7x slower than its AVX2 one
# (bnviz/numpy_sort.py); the probes of a thread-mode server's workers sort every step.
if "numpy" not in sys.modules:  # the server's first page run; later runs would decide nothing
    prefer_avx2_sort()
    # before sessions start their threads: with glibc's default of 8 malloc arenas per core
    # the server's memory crept ~0.5 MB with each tab opened and closed (bnviz/malloc_arenas.py)
    limit_arenas()

from ui import navigation  # noqa: E402

navigation.run()
