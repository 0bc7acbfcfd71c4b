"""bnviz benchmarks: ``python -m bench [--quick]`` prints one table of every performance target.

See docs/PERFORMANCE.md for what each row measures and the figures taken so far.
"""

from bnviz.numpy_sort import prefer_avx2_sort

# Before any bench module imports numpy (python -m bench, bench.ab, bench.probe_kernels, ...):
# the bench measures the engine as the CLI runs it (see bnviz/numpy_sort.py).
prefer_avx2_sort()
