"""bnviz.malloc_arenas caps glibc's malloc arenas, and leaves a user's setting alone.

The arenas are counted with glibc's own ``malloc_info`` (one ``<heap nr=...>`` per arena),
in a fresh process where eight threads each hold an allocation at the same time: without
the cap each gets an arena of its own.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bnviz import malloc_arenas

ROOT = Path(__file__).resolve().parent.parent
glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="counts glibc's arenas")

COUNT_ARENAS = r"""
import ctypes, sys, tempfile, threading
from bnviz.malloc_arenas import limit_arenas
if sys.argv[1] == "limit":
    assert limit_arenas(2)
threads = 8
barrier, held = threading.Barrier(threads + 1), []
def work():
    held.append(bytes(1000) + b"x")  # a malloc on this thread: it takes an arena
    barrier.wait()  # all hold theirs at once
    barrier.wait()
pool = [threading.Thread(target=work) for _ in range(threads)]
for t in pool:
    t.start()
barrier.wait()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    f = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, ctypes.c_void_p(f))
    libc.fclose(ctypes.c_void_p(f))
    print(open(out.name).read().count("<heap nr="))
barrier.wait()
for t in pool:
    t.join()
"""


def arenas_with_eight_threads(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != malloc_arenas.ENV}
    proc = subprocess.run([sys.executable, "-c", COUNT_ARENAS, mode], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


@glibc_only
def test_limit_arenas_keeps_eight_threads_to_two_arenas():
    assert arenas_with_eight_threads("limit") <= 2
    assert arenas_with_eight_threads("default") >= 5  # the control: glibc's default gives each its own


def test_a_malloc_arena_max_the_user_set_is_left_alone():
    assert malloc_arenas.limit_arenas(environ={malloc_arenas.ENV: "8"}) is False


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(malloc_arenas.platform, "libc_ver", lambda: ("", ""))  # musl, macOS
    assert malloc_arenas.limit_arenas(environ={}) is False
