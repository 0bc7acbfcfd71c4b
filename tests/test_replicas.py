"""Two app replicas behind a REAL nginx with sticky sessions, driven by headless Chromium.

Two ``streamlit run app.py`` processes on 127.0.0.1 (the server helper of the browser tests)
sit behind Debian's nginx, started here with the config rendered from deploy/nginx.conf and
deploy/nginx.test.conf.template exactly as tests/test_dockerfile.py renders it (its
``_render_nginx`` helper). The browser opens the page THROUGH the proxy and presses Start.

Which replica serves the session: the one that holds an ESTABLISHED TCP connection on its
port (read from /proc/net/tcp) -- the websocket nginx keeps open to it; nginx keeps no idle
connections to the other (no upstream keepalive), and nothing else talks to the apps.

Then:
1. the OTHER replica's process group is killed (SIGKILL): the session must keep streaming,
   its step counter going on from where it was (a session moved to another replica would
   start from an empty page);
2. the killed replica is started again on its port, and the session's OWN replica is
   killed: a new page load through the proxy, with the same sticky cookie, must land on the
   surviving replica and train there.

Skipped only where nginx is not installed (.ci/run installs it with apt).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from unittest import mock

import pytest
from playwright.sync_api import expect

from tests import browser_support
from tests.browser_support import (  # noqa: F401  (the browser fixture is used by name)
    Server,
    browser,
    button,
    free_port,
    open_url,
    poll,
    record_progress,
    recorded_progress,
    start_server,
    stop_server,
    wait_progress,
)
from tests.test_dockerfile import _render_nginx

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does): "
                                             "the sticky-session test runs a real nginx in front of two replicas"),
]

# One hidden layer (the lightest page) and a run far too long to end during the test.
QUERY = "preset=quick-look&depth=1&steps=20000"
REPLICA_ENV = {"BNVIZ_MAX_WORKERS": "2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STREAM_TIMEOUT_S = 90  # the page shows steps in chunks of 25; on two busy cores that can take a while


# --------------------------------------------------------------------------- helpers


def _start_replica(workdir: Path, port: int) -> Server:
    """browser_support.start_server on a GIVEN port (nginx's upstream list names the ports)."""
    with mock.patch.object(browser_support, "free_port", return_value=port):
        return start_server(workdir, REPLICA_ENV)


def _established(port: int) -> int:
    """TCP connections in state ESTABLISHED whose local port is ``port`` (the server side)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (a replica crashing) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _get(url: str, timeout: float = 5) -> int:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status


# --------------------------------------------------------------------------- fixtures


class Cluster:
    """The replicas (by port) and the proxy; every process started is stopped at the end."""

    def __init__(self, base: Path):
        self.base = base
        self.ports = [free_port(), free_port()]
        self.replicas: dict[int, Server] = {}
        self.all_started: list[Server] = []
        self.nginx: subprocess.Popen | None = None
        self.listen = free_port()
        self.prefix = base / "nginx"

    def start_replica(self, port: int, name: str) -> Server:
        server = _start_replica(self.base / name, port)
        self.all_started.append(server)
        self.replicas[port] = server
        return server

    def start_nginx(self) -> None:
        self.prefix.mkdir()
        conf = _render_nginx(self.prefix, self.ports, self.listen)
        argv = [NGINX, "-c", str(conf), "-p", str(self.prefix), "-e", str(self.prefix / "error.log")]
        check = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
        assert check.returncode == 0, check.stderr
        out = (self.prefix / "nginx.stderr").open("wb")
        self.nginx = subprocess.Popen([*argv, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        out.close()
        poll(lambda: self._nginx_up(), bool, 30, "nginx to answer /nginx-health")

    def _nginx_up(self) -> bool:
        if self.nginx.poll() is not None:
            raise AssertionError(f"nginx exited: {self.nginx_log()}")
        try:
            return _get(f"{self.url}/nginx-health", timeout=2) == 200
        except (urllib.error.URLError, OSError):
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen}"

    def nginx_log(self) -> str:
        parts = []
        for name in ("nginx.stderr", "error.log"):
            p = self.prefix / name
            if p.exists():
                parts.append(f"--- {name}\n{p.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def serving(self) -> list[int]:
        """Ports of the replicas that hold an established (websocket) connection."""
        return [p for p in self.ports if _established(p)]

    def stop(self) -> None:
        if self.nginx is not None:
            browser_support.stop_process_group(self.nginx)
        for server in self.all_started:
            stop_server(server)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("bnviz-replicas"))
    try:
        for i, port in enumerate(c.ports):
            c.start_replica(port, f"replica-{i}")
        c.start_nginx()
        yield c
    finally:
        c.stop()


# --------------------------------------------------------------------------- the test


def test_session_stays_on_its_replica_and_survives_the_other_one(cluster, browser):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(60_000)
    try:
        page = ctx.new_page()
        open_url(page, f"{cluster.url}/?{QUERY}")
        cookies = {c["name"]: c["value"] for c in ctx.cookies()}
        assert cookies.get("bnviz_route"), f"nginx set no sticky cookie: {cookies}"

        button(page, "Start").click()
        first = wait_progress(page, lambda p: p.step > 0 and p.state == "training", "training through the proxy",
                              timeout=STREAM_TIMEOUT_S)
        serving = poll(cluster.serving, lambda s: len(s) == 1, 30,
                       "exactly one replica holding the session's websocket")
        own, other = serving[0], next(p for p in cluster.ports if p != serving[0])
        streaming = wait_progress(page, lambda p: p.step > first.step, "the session to keep streaming",
                                  timeout=STREAM_TIMEOUT_S)
        print(f"session on replica :{own} (the other is :{other}), step {streaming.step}")

        # 1. The other replica dies: this session must not notice.
        record_progress(page)
        _kill_group(cluster.replicas[other].proc)
        restarted: dict = {}
        restart = threading.Thread(target=lambda: restarted.update(
            server=cluster.start_replica(other, "replica-restarted")), daemon=True)
        restart.start()  # brought back meanwhile, for part 2
        after = wait_progress(page, lambda p: p.step > streaming.step, "streaming after the other replica died",
                              timeout=STREAM_TIMEOUT_S)
        later = wait_progress(page, lambda p: p.step > after.step, "streaming on", timeout=STREAM_TIMEOUT_S)
        steps = [p.step for p in recorded_progress(page)]
        assert steps and min(steps) >= streaming.step and steps == sorted(steps), (
            f"the step counter went back (a new session?): from {streaming.step}: {steps}")
        assert later.total == 20_000 and later.state == "training", later.text
        assert cluster.serving() == [own], f"the websocket moved: {cluster.serving()} (was on {own})"
        print(f"killed :{other}; the session streamed on: steps {steps[:3]} ... {steps[-3:]}")

        # 2. The session's own replica dies: a new page load, same sticky cookie, lands on the survivor.
        restart.join(timeout=120)
        assert "server" in restarted, "the killed replica did not start again"
        _kill_group(cluster.replicas[own].proc)
        open_url(page, f"{cluster.url}/?{QUERY}")
        assert {c["name"]: c["value"] for c in ctx.cookies()}.get("bnviz_route") == cookies["bnviz_route"]
        expect(button(page, "Start")).to_be_enabled()
        button(page, "Start").click()
        again = wait_progress(page, lambda p: p.step > 0 and p.state == "training",
                              "training on the surviving replica", timeout=STREAM_TIMEOUT_S)
        wait_progress(page, lambda p: p.step > again.step, "streaming on the surviving replica",
                      timeout=STREAM_TIMEOUT_S)
        assert poll(cluster.serving, lambda s: s == [other], 30, "the session on the surviving replica") == [other]
        print(f"killed :{own}; a new page load with the same cookie trains on :{other}")
    except Exception:
        print(cluster.nginx_log())
        raise
    finally:
        ctx.close()
    # The survivor ends that session when the tab closes (it really was served there).
    survivor = cluster.replicas[other]
    poll(lambda: "bnviz: session closed" in survivor.log_text(), bool, 30,
         "the surviving replica to log the closed session")
