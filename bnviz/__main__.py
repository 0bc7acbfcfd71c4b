import gc
import sys

from bnviz.numpy_sort import prefer_avx2_sort

prefer_avx2_sort()  # before anything imports numpy (see there)

from bnviz.cli import main  # noqa: E402

code = main()
# The interpreter's last collections walk every object torch and plotly made: ~0.4 s of exit.
# Frozen objects are left to the OS (files are written and closed by now; atexit still runs).
gc.freeze()
sys.exit(code)
