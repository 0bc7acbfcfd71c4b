"""bnviz.numpy_sort: numpy's AVX2 sort on AMD Zen 4, told to numpy before it is imported."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnviz.numpy_sort import AVX512, ENV, prefer_avx2_sort, slow_avx512_compress

ROOT = Path(__file__).resolve().parent.parent


def cpuinfo(vendor: str, family: int, flags: str) -> str:
    block = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 17\nflags\t\t: {flags}\n"
    return block + "\n" + block.replace("processor\t: 0", "processor\t: 1")


ZEN4 = cpuinfo("AuthenticAMD", 25, "fpu sse2 avx2 avx512f avx512dq avx512bw avx512vl")
ZEN3 = cpuinfo("AuthenticAMD", 25, "fpu sse2 avx2 fma")
ZEN5 = cpuinfo("AuthenticAMD", 26, "fpu sse2 avx2 avx512f avx512bw")
ICELAKE = cpuinfo("GenuineIntel", 6, "fpu sse2 avx2 avx512f avx512bw avx512vbmi2")


@pytest.mark.parametrize("text, slow", [(ZEN4, True), (ZEN3, False), (ZEN5, False), (ICELAKE, False), ("", False)])
def test_only_zen4_is_told_apart_as_slow_at_avx512_compress_stores(text, slow):
    assert slow_avx512_compress(text) is slow


def test_on_zen4_numpy_is_told_to_use_its_avx2_code_and_elsewhere_nothing_changes(tmp_path):
    for text, expect in ((ZEN4, {ENV: AVX512}), (ICELAKE, {}), (ZEN3, {})):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        environ: dict[str, str] = {}
        assert prefer_avx2_sort(environ, str(path)) is bool(expect)
        assert environ == expect
    assert prefer_avx2_sort({}, str(tmp_path / "missing")) is False  # no /proc/cpuinfo: not Linux


def test_a_users_own_numpy_cpu_features_setting_is_left_alone(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4)
    environ = {ENV: "AVX512_SPR"}
    assert prefer_avx2_sort(environ, str(path)) is False
    assert environ == {ENV: "AVX512_SPR"}


def test_the_installed_numpy_knows_the_feature_name_and_drops_its_avx512_code(tmp_path):
    """numpy warns (here: fails) at import on a name that is not one of its dispatch targets,
    so a rename in a later numpy shows up here, on any CPU."""
    path = tmp_path / "cpuinfo"
    path.write_text(ZEN4)
    code = (f"from bnviz.numpy_sort import prefer_avx2_sort; assert prefer_avx2_sort(cpuinfo_path={str(path)!r}); "
            "import numpy; from numpy._core._multiarray_umath import __cpu_features__ as f; print(f['X86_V4'])")
    env = {k: v for k, v in os.environ.items() if k != ENV}
    proc = subprocess.run([sys.executable, "-W", "error::ImportWarning", "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_the_cli_and_the_workers_forkserver_prefer_avx2_before_numpy_is_imported():
    main = (ROOT / "bnviz" / "__main__.py").read_text()
    assert main.index("prefer_avx2_sort()") < main.index("from bnviz.cli import main")
    # the bench package, so every python -m bench.* tool: it imports nothing else first
    bench = ast.parse((ROOT / "bench" / "__init__.py").read_text()).body
    imports = [n for n in bench if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert [getattr(n, "module", None) for n in imports] == ["bnviz.numpy_sort"]
    assert any(isinstance(n, ast.Expr) and ast.unparse(n) == "prefer_avx2_sort()" for n in bench)
    remote = (ROOT / "bnviz" / "remote.py").read_text()
    assert remote.index("prefer_avx2_sort()") < remote.index('multiprocessing.get_context("forkserver")')


# Records, at numpy's first import in the server process, whether bnviz.numpy_sort was loaded
# and what numpy is about to read from NPY_DISABLE_CPU_FEATURES.
RECORD_NUMPY_IMPORT = """
import os, sys

class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            sys.meta_path.remove(self)
            with open(os.environ["BNVIZ_TEST_NUMPY_RECORD"], "w") as f:
                f.write(f"{'bnviz.numpy_sort' in sys.modules} {os.environ.get('NPY_DISABLE_CPU_FEATURES')}")
        return None

sys.meta_path.insert(0, _Watch())
"""


@pytest.mark.browser
def test_a_streamlit_server_chooses_numpys_sort_before_numpy_loads(tmp_path, monkeypatch):
    """`streamlit run app.py` imports numpy only as the first page runs, and app.py calls
    prefer_avx2_sort() before that: a thread-mode server's workers get numpy's AVX2 sort on
    Zen 4 too. On other CPUs the variable stays unset, and only the order is checked."""
    from playwright.sync_api import sync_playwright

    from tests.browser_support import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, open_app, start_server, stop_server

    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RECORD_NUMPY_IMPORT)
    record = tmp_path / "numpy-import"
    monkeypatch.delenv(ENV, raising=False)  # set in this process by `import bench` (bench/__init__.py)
    chosen: dict[str, str] = {}
    prefer_avx2_sort(chosen)  # what the server should choose on this CPU
    path = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    server = start_server(tmp_path / "server", {"PYTHONPATH": path, "BNVIZ_TEST_NUMPY_RECORD": str(record)})
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                open_app(browser.new_page(viewport=VIEWPORT), server)
            finally:
                browser.close()
        assert record.read_text() == f"True {chosen.get(ENV)}"
    finally:
        stop_server(server)
