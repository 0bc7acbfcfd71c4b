"""numpy's AVX2 sort on AMD Zen 4, where its AVX-512 sort is 4-7x slower.

The probes find percentiles with numpy's partition and sort (``row_stats.py``). numpy runs
them with x86-simd-sort, choosing its AVX-512 code on any CPU that has AVX-512. On Zen 4
(AMD family 25 with AVX-512) that code is slow: it stores with ``vcompressps`` to memory,
which Zen 4 runs in microcode (AMD's optimization guide for Zen 4, 2.11.2: "avoid the memory
destination form of COMPRESS instructions"; numpy/x86-simd-sort#6). Measured on such a
machine, six rows of 6,000 floats: sort 439 us with the AVX-512 code, 114 us with AVX2;
partition 227 us and 32 us (docs/PERFORMANCE.md). Zen 5 and Intel's CPUs are not affected:
on an Intel Xeon (family 6 model 207) the AVX-512 sort of those rows took 95-100 us against
124 us with AVX2, its partition ~10% more, and the probes' statistics were within 5% either
way (bench/results/intel-sort-ab.txt), so bnviz leaves numpy's choice alone there.

numpy picks its code when it is imported, from ``NPY_DISABLE_CPU_FEATURES``. So bnviz's
entry points call ``prefer_avx2_sort()`` before numpy is imported (the CLI, the bench, and
app.py: a Streamlit server imports numpy only as its first page runs) and before they start
child processes (the workers' forkserver), which import numpy afresh. A process that
imported numpy before bnviz (a notebook, say) keeps the slow code: there, set
``NPY_DISABLE_CPU_FEATURES=X86_V4`` before starting it on Zen 4 (docs/DEPLOYMENT.md).
"""

from __future__ import annotations

import os
from importlib import metadata

ENV = "NPY_DISABLE_CPU_FEATURES"
AVX512 = "X86_V4"  # numpy >= 2.4's name for its AVX-512 code (AVX512_ICL and _SPR build on it)


def slow_avx512_compress(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text describes a Zen 4: AMD, family 25, with AVX-512.

    Family 25 (0x19) is Zen 3 and Zen 4; only Zen 4 has AVX-512. Zen 5 is family 26.
    """
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            break  # the first processor's block describes them all
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return (fields.get("vendor_id") == "AuthenticAMD" and fields.get("cpu family") == "25"
            and "avx512f" in fields.get("flags", "").split())


def _numpy_names_x86_v4() -> bool:
    try:
        major, minor = (int(p) for p in metadata.version("numpy").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (2, 4)


def prefer_avx2_sort(environ=os.environ, cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """On Zen 4, tell numpy imported from now on (here and in child processes) to use its AVX2
    code rather than AVX-512. Leaves a user's own NPY_DISABLE_CPU_FEATURES alone. True if set."""
    if ENV in environ or not _numpy_names_x86_v4():
        return False
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            cpuinfo = f.read(16_384)
    except OSError:  # not Linux
        return False
    if not slow_avx512_compress(cpuinfo):
        return False
    environ[ENV] = AVX512
    return True
