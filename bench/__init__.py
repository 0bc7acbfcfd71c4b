"""bnviz benchmarks: ``python -m bench [--quick]`` prints one table of every performance target.

See docs/PERFORMANCE.md for what each row measures and the figures taken so far.
"""
