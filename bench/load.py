"""Load test: N sessions training at once against ONE bnviz Streamlit server.

    python -m bench.load --sessions 10 --seconds 60
    python -m bench.load --sessions 30 --seconds 60 --client protocol   # no browser drawing on this machine
    python -m bench.load --sessions 30 --seconds 90 --workers 4 --json out/load-30.json
    python -m bench.load --sessions 4 --seconds 20 --workers 2 --steps 20000 --pause-after 8

What it does, in order:

1. starts ``streamlit run app.py`` on a free port of 127.0.0.1 (BNVIZ_MAX_WORKERS=W,
   OMP_NUM_THREADS=MKL_NUM_THREADS=1, a private BNVIZ_DATA_DIR), with the server helper of
   the browser tests (tests/browser_support.py);
   A warm-up session presses Start once and closes (--no-warmup: measure the cold start),
   because the first Start in a fresh process imported torch._dynamo under the import lock
   (until bnviz.optimizers); kept so that runs stay comparable with the earlier figures.
   A sitecustomize.py on the server's PYTHONPATH names its OS threads after the Python
   threads, so /proc splits its CPU into training workers / event loop / script runs
   (--no-thread-names leaves it out);
2. opens N sessions in ONE headless Chromium (Debian's /usr/bin/chromium), each in its own
   browser context, i.e. its own Streamlit session and Lab, on a short run
   (``/?preset=quick-look&steps=STEPS``), and presses Start in each, one after the other.
   With ``--client protocol`` each session is instead a websocket client speaking
   Streamlit's protocol (bench/protocol_tab.py): it asks for the same page, clicks the same
   buttons and re-runs the live fragment on the server's timer, but draws nothing, so the
   server has the machine to itself (as when every student's browser is on their own
   laptop) and every chart message is counted;
3. for S seconds: a sampler inside every page (setInterval, 0.5 s) records the progress
   text ("step N / M · R steps/s · state"), the "Queued: k ahead of you" line and the point
   count of the first Plotly chart's first trace; a thread here calls /_stcore/health every
   0.25 s (latency, errors) and reads the server's RSS and CPU time (and the browser's)
   from /proc every second. With --pause-after, one training session presses Pause at
   that point, which must hand its worker slot to the head of the queue;
4. closes every context (= every tab) and waits, bounded, for the server log's
   "bnviz: session closed; N labs open, M training workers alive" lines to reach 0 workers,
   then reads the RSS again.

Prints a per-session table and a summary, and with --json writes every figure. Sessions
beyond the worker cap are expected to queue: the summary says how many trained from the
start, how many queued, and how many queued ones trained later (when others finished or
paused). Nothing is asserted here (tests/test_load.py does that on a small N); the exit
status is 0 unless the run itself broke (server did not start, no session could open).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.async_api import Page, async_playwright, expect

from bench.proc import kib
from bench.protocol_tab import ProtocolTab
from bnviz import limits
from tests.browser_support import (
    CHROMIUM,
    CHROMIUM_ARGS,
    parse_progress,
    start_server,
    stop_server,
)

CLIENTS = ("browser", "protocol")  # see _tab_factory
CLOSED_RE = re.compile(r"bnviz: session closed; (\d+) labs open, (\d+) training workers alive")
QUEUED_RE = re.compile(r"Queued: (\d+) ahead of you")
HEALTH_EVERY_S = 0.25
HEALTH_TIMEOUT_S = 5.0  # the Kubernetes probes' timeoutSeconds (deploy/k8s/deployment.yaml)
PROC_EVERY_S = 1.0
SAMPLE_EVERY_MS = 500
OPEN_TIMEOUT_S = 90  # first load of one page on two busy cores
CLICK_TIMEOUT_S = 60
COLLECT_EVERY_S = 2.0
WARMUP_TIMEOUT_S = 180
OPEN_CONCURRENCY = 4  # pages loading at once (a first load costs the server a full script run)

# Runs in every page before its own scripts: samples the page every SAMPLE_EVERY_MS into
# window.__bnvizLoad, each sample numbered (i). collect() asks for the samples after the last one it
# has and the page drops those already read: a collect that times out (a tab too busy to answer)
# loses nothing, the next one reads them. Elements that the current fragment run has not
# redrawn yet are marked data-stale="true"; fresh ones are read first.
SAMPLER_JS = """
(() => {
  if (window.__bnvizLoad) return;
  window.__bnvizLoad = [];
  let seq = 0;
  const stale = (e) => { const c = e.closest('[data-stale]'); return !!c && c.getAttribute('data-stale') === 'true'; };
  const fresh = (sel) => { const all = Array.from(document.querySelectorAll(sel));
                           return all.filter(e => !stale(e)).concat(all.filter(stale)); };
  const types = {i1: Int8Array, u1: Uint8Array, i2: Int16Array, u2: Uint16Array, i4: Int32Array,
                 u4: Uint32Array, f4: Float32Array, f8: Float64Array};
  const arr = (v) => {  // plotly data as it arrived: a list, a typed array, or {dtype, bdata}
    if (v === undefined || v === null) return [];
    if (Array.isArray(v) || ArrayBuffer.isView(v)) return v;
    if (v._inputArray) return v._inputArray;
    if (typeof v.bdata === 'string') {
      const T = types[String(v.dtype).replace(/[<>|=]/g, '')] || Float64Array;
      const bin = atob(v.bdata); const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      return new T(bytes.buffer);
    }
    return [];
  };
  setInterval(() => {
    const p = fresh("[data-testid='stProgress']")[0];
    const q = fresh("[data-testid='stAlert']").map(e => e.innerText).find(t => t.includes('Queued:'));
    const g = fresh('.js-plotly-plot').find(e => e.data);
    const x = g && g.data.length ? arr(g.data[0].x) : [];
    const log = window.__bnvizLoad;
    // n: points in the first trace of the first chart (-1: no chart yet); x: its last x (the step it reached)
    log.push({i: ++seq, t: Date.now(), p: p ? p.innerText : null, q: q || null, n: g ? x.length : -1,
              x: x.length ? Number(x[x.length - 1]) : null});
    if (log.length > 4000) log.splice(0, log.length - 4000);
  }, %d);
})();
""" % SAMPLE_EVERY_MS


# Put on the SERVER's PYTHONPATH (as sitecustomize.py in a private directory): names each OS
# thread after its Python thread (prctl PR_SET_NAME, 15 chars), so /proc/PID/task/TID/comm
# tells the training workers ("bnviz-trainer") from the script runs and the event loop, and
# their CPU can be split. It changes nothing else; --no-thread-names leaves it out.
THREAD_NAMES_HOOK = """\
import ctypes, sys, threading
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    def _bnviz_name_thread(*_):
        sys.setprofile(None)
        try:
            _prctl(15, threading.current_thread().name.encode()[:15], 0, 0, 0)
        except Exception:
            pass
    threading.setprofile(_bnviz_name_thread)
except Exception:
    pass
"""


# --------------------------------------------------------------------------- /proc readings


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(pid: int, kids: dict[int, list[int]] | None = None) -> list[int]:
    """``pid`` and all its descendants (read from /proc)."""
    kids = _children() if kids is None else kids
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def rss_bytes(pids: list[int]) -> int:
    """Memory of ``pids`` together: the sum of their PSS (/proc/PID/smaps_rollup), so pages that
    forked workers share with each other count once; VmRSS where PSS is not available."""
    total = 0
    for pid in pids:
        kb = kib(pid, "smaps_rollup", "Pss").get("Pss")
        total += (kb if kb is not None else kib(pid, "status", "VmRSS").get("VmRSS", 0)) * 1024
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (their own threads, not reaped children)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / _TICK


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """{tid: (thread name, CPU seconds)} of the live threads of ``pid``."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                fields = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
            out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / _TICK)
        except (OSError, IndexError, ValueError):
            continue
    return out


def uptime_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Monitor:
    """Background thread: /_stcore/health every HEALTH_EVERY_S, RSS and CPU every PROC_EVERY_S."""

    def __init__(self, url: str, server_pid: int, health_timeout: float = HEALTH_TIMEOUT_S):
        self.url = url
        self.health_timeout = health_timeout
        self.server_pid = server_pid
        self.health: list[tuple[float, float | None, str | None]] = []  # (t, latency s, error)
        self.proc: list[dict] = []  # {t, server_rss, server_cpu, client_rss, client_cpu}
        self.marks: dict[str, float] = {}
        self._trainer_cpu: dict[int, float] = {}  # tid -> last CPU seconds seen (dead ones keep theirs)
        self._tree_cpu: dict[int, float] = {}  # pid of the server or a descendant -> last CPU seconds seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bnviz-load-monitor", daemon=True)
        self.t0 = time.time()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.health_timeout + 5)

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def _run(self) -> None:
        next_proc = 0.0
        while not self._stop.is_set():
            t = time.time()
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=self.health_timeout) as r:
                    r.read()
                    self.health.append((t, time.time() - t, None if r.status == 200 else f"HTTP {r.status}"))
            except (urllib.error.URLError, OSError) as exc:
                self.health.append((t, None, f"{type(exc).__name__}: {exc}"))
            if t >= next_proc:
                self.proc.append(self.read_proc())
                next_proc = t + PROC_EVERY_S
            self._stop.wait(max(0.0, HEALTH_EVERY_S - (time.time() - t)))

    def read_proc(self) -> dict:
        kids = _children()
        server = process_tree(self.server_pid, kids)
        # The load client: this process (the protocol tabs, or Playwright's Python side) and its
        # other descendants (the Playwright driver and Chromium).
        client = [p for p in process_tree(os.getpid(), kids) if p not in server]
        threads = thread_cpu(self.server_pid)
        for tid, (name, cpu) in threads.items():
            if name.startswith("bnviz-trainer"):
                self._trainer_cpu[tid] = cpu
        # Every process the server ever had counts with its last CPU time: a worker process that
        # ended keeps what it used (its CPU would otherwise vanish from the total).
        self._tree_cpu.update({pid: cpu_seconds([pid]) for pid in server})
        # BNVIZ_WORKER_MODE=process: the workers are the server's other descendants (children of
        # multiprocessing's forkserver; the forkserver itself idles). Keyed by pid, which never
        # equals a thread id of the server.
        self._trainer_cpu.update({pid: self._tree_cpu[pid] for pid in server if pid != self.server_pid})
        main = threads.get(self.server_pid, ("", 0.0))[1]
        return {"t": time.time(), "server_rss": rss_bytes(server), "server_cpu": sum(self._tree_cpu.values()),
                "client_rss": rss_bytes(client), "client_cpu": cpu_seconds(client),
                "trainer_cpu": dict(self._trainer_cpu), "main_cpu": main}

    def health_between(self, a: float, b: float) -> dict:
        rows = [h for h in self.health if a <= h[0] <= b]
        lat = [h[1] * 1000 for h in rows if h[1] is not None and h[2] is None]
        errors = [h[2] for h in rows if h[2] is not None]
        return {"count": len(rows), "ok": len(lat), "errors": len(errors), "first_errors": errors[:5],
                "over_1s": sum(x > 1000 for x in lat), "over_5s": sum(x > 5000 for x in lat),
                "timeout_s": self.health_timeout,
                "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95), "max_ms": max(lat) if lat else None}

    def proc_between(self, a: float, b: float) -> dict:
        rows = [p for p in self.proc if a <= p["t"] <= b]
        if len(rows) < 2:
            return {"samples": len(rows)}
        dt = rows[-1]["t"] - rows[0]["t"]
        a, b = rows[0], rows[-1]
        # Training workers' CPU, per worker thread; the rest of the server: its main thread (the
        # event loop) and everything else (mostly the script runs that redraw the pages).
        per_trainer = {tid: (cpu - a["trainer_cpu"].get(tid, 0.0)) / dt for tid, cpu in b["trainer_cpu"].items()}
        busy = [r for r in per_trainer.values() if r > 0.02]
        trainers = sum(per_trainer.values())
        main = (b["main_cpu"] - a["main_cpu"]) / dt
        total = (b["server_cpu"] - a["server_cpu"]) / dt
        return {
            "trainer_cpu_cores": trainers,
            "busy_trainers": len(busy),
            "cpu_per_busy_trainer": statistics.mean(busy) if busy else None,
            "event_loop_cpu_cores": main,
            "scripts_and_rest_cpu_cores": total - trainers - main,
            "samples": len(rows),
            "server_rss_mb_max": max(r["server_rss"] for r in rows) / 2**20,
            "server_rss_mb_median": statistics.median(r["server_rss"] for r in rows) / 2**20,
            "server_cpu_cores": (rows[-1]["server_cpu"] - rows[0]["server_cpu"]) / dt,
            "client_rss_mb_max": max(r["client_rss"] for r in rows) / 2**20,
            "client_cpu_cores": (rows[-1]["client_cpu"] - rows[0]["client_cpu"]) / dt,
        }


# --------------------------------------------------------------------------- sessions


@dataclass
class Session:
    idx: int
    samples: list[dict] = field(default_factory=list)  # {t, step, total, rate, state, queued, points}
    opened_at: float | None = None
    started_at: float | None = None
    paused_at: float | None = None
    error: str | None = None
    last_read: int = 0  # number of the last page sample read (SAMPLER_JS)
    collect_timeouts: int = 0  # collects the tab was too busy to answer within COLLECT_TIMEOUT_S
    tab: "BrowserTab | ProtocolTab | None" = None

    def add(self, raw: list[dict]) -> None:
        for r in raw:
            if r.get("i", 0) <= self.last_read:
                continue  # read before
            self.last_read = r.get("i", self.last_read)
            prog = parse_progress(r.get("p"))
            m = QUEUED_RE.search(r.get("q") or "")
            self.samples.append({"t": r["t"] / 1000.0, "step": prog.step if prog else None,
                                 "total": prog.total if prog else None, "rate": prog.rate if prog else None,
                                 "state": prog.state if prog else None,
                                 "queued": int(m.group(1)) if m else None, "points": r.get("n", -1),
                                 "chart_x": r.get("x")})

    def latest(self) -> dict | None:
        return self.samples[-1] if self.samples else None

    def summary(self, t_end: float | None = None) -> dict:
        s = [x for x in self.samples if t_end is None or x["t"] <= t_end]
        steps = [x["step"] for x in s if x["step"] is not None]
        queued = [x for x in s if x["queued"] is not None]
        increased = any(b > a for a, b in itertools.pairwise(steps))
        # steps/s while training: step increase over time between consecutive training samples
        dstep = dt = 0.0
        for a, b in itertools.pairwise(s):
            if a["state"] == "training" and b["state"] == "training" and a["step"] is not None and b["step"] is not None:
                if b["step"] >= a["step"]:
                    dstep += b["step"] - a["step"]
                    dt += b["t"] - a["t"]
        rates = [x["rate"] for x in s if x["state"] == "training" and x["rate"]]
        first_step_at = next((x["t"] for x in s if (x["step"] or 0) > 0), None)
        last_queued_at = queued[-1]["t"] if queued else None
        trained_after_queue = bool(queued) and any((x["step"] or 0) > 0 and x["t"] > last_queued_at for x in s)
        # Left the queue: after its last "Queued" line the page kept drawing the progress bar
        # (2 samples or more) while the run still wanted to train -- its lab got a slot.
        after = [x for x in s if queued and x["t"] > last_queued_at]
        left_queue_at = (after[0]["t"] if len([x for x in after if x["state"]]) >= 2
                         and after[-1]["state"] in ("training", "waiting", "finished") else None)
        slot_after_queue = left_queue_at is not None
        # How often the page redrew while it was live: gaps between distinct progress texts.
        changes = [x["t"] for a, x in itertools.pairwise(s) if (x["step"], x["state"], x["queued"]) != (a["step"], a["state"], a["queued"])]
        gaps = [b - a for a, b in itertools.pairwise(changes)]
        points = [x["points"] for x in s if x["points"] is not None and x["points"] >= 0]
        chart_x = [x["chart_x"] for x in s if x["chart_x"] is not None]
        return {
            "session": self.idx,
            "error": self.error,
            "samples": len(s),
            "first_step": steps[0] if steps else None,
            "last_step": steps[-1] if steps else None,
            "max_step": max(steps) if steps else None,
            "total": next((x["total"] for x in s if x["total"]), None),
            "trained": bool(steps) and max(steps) > 0,
            "step_increased": increased,
            "queued_seen": bool(queued),
            "first_queue_place": queued[0]["queued"] if queued else None,
            "trained_after_queue": trained_after_queue,
            "slot_after_queue": slot_after_queue or trained_after_queue,
            "left_queue_at": left_queue_at,
            "got_slot_s": (first_step_at - self.started_at) if first_step_at and self.started_at else None,
            "steps_per_s_measured": dstep / dt if dt > 0 else None,
            "steps_per_s_shown_median": statistics.median(rates) if rates else None,
            "chart_points_max": max(points) if points else None,
            "chart_last_step": max(chart_x) if chart_x else None,
            # The chart keeps at most 400 points (thinned): it "grows" when its last x (step) moves on.
            "chart_grew": any(b > a for a, b in itertools.pairwise(points)) or any(b > a for a, b in itertools.pairwise(chart_x)),
            "update_gap_p50_s": percentile(gaps, 0.5),
            "update_gap_max_s": max(gaps) if gaps else None,
            "states": sorted({x["state"] for x in s if x["state"]}),
            "last_state": next((x["state"] for x in reversed(s) if x["state"]), None),
            "paused_by_bench": self.paused_at is not None,
            "collect_timeouts": self.collect_timeouts,
            "wire": self.tab.report() if isinstance(self.tab, ProtocolTab) else None,
        }


class BrowserTab:
    """One Streamlit session in its own context of the shared headless Chromium."""

    def __init__(self, browser) -> None:
        self.browser = browser
        self.context = None
        self.page: Page | None = None

    async def open(self, url: str, timeout: float) -> None:
        ms = timeout * 1000
        self.context = await self.browser.new_context(viewport={"width": 1280, "height": 900})
        await self.context.add_init_script(SAMPLER_JS)
        self.page = await self.context.new_page()
        await self.page.goto(url, wait_until="commit", timeout=ms)
        await expect(self._button("Start")).to_be_visible(timeout=ms)
        await expect(self.page.locator("[data-testid='stApp']")).to_have_attribute(
            "data-test-script-state", "notRunning", timeout=ms)

    def _button(self, name: str):
        return self.page.get_by_test_id("stMain").get_by_role("button", name=name, exact=True)

    async def click(self, name: str, timeout: float) -> None:
        await self._button(name).click(timeout=timeout * 1000)

    async def read(self, since: int) -> list[dict]:
        return await self.page.evaluate(_READ_SAMPLES_JS, since)

    async def close(self) -> None:
        if self.context is not None:
            await self.context.close()


async def _open(new_tab: Callable[[], "BrowserTab | ProtocolTab"], url: str, s: Session, sem: asyncio.Semaphore) -> None:
    async with sem:
        try:
            s.tab = new_tab()
            await s.tab.open(url, OPEN_TIMEOUT_S)
            s.opened_at = time.time()
        except Exception as exc:  # noqa: BLE001 -- a session that cannot open is a finding
            s.error = f"open: {type(exc).__name__}: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else ""


async def _click(s: Session, name: str) -> None:
    await s.tab.click(name, CLICK_TIMEOUT_S)


# Drops the samples read before (numbered up to `since`) and returns the rest.
_READ_SAMPLES_JS = """(since) => { const log = window.__bnvizLoad || [];
  while (log.length && log[0].i <= since) log.shift(); return log.slice(); }"""
COLLECT_TIMEOUT_S = 20


async def _collect(s: Session) -> None:
    if s.tab is None or s.error:
        return
    try:
        raw = await asyncio.wait_for(s.tab.read(s.last_read), timeout=COLLECT_TIMEOUT_S)
        s.add(raw)
    except TimeoutError:
        # The tab's main thread was busy (on two shared cores, Chromium redrawing four live
        # pages can stall one for 20 s). Counted and reported; its samples stay in the page.
        s.collect_timeouts += 1
    except Exception as exc:  # noqa: BLE001
        s.error = f"collect: {type(exc).__name__}: {_first_line(exc)}"


async def _collect_all(sessions: list[Session]) -> None:
    await asyncio.gather(*(_collect(s) for s in sessions))


def _log_since(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", errors="replace")


async def _tab_factory(client: str, stack: AsyncExitStack) -> Callable[[], "BrowserTab | ProtocolTab"]:
    """How to open a tab: in one shared headless Chromium ("browser"), or on the wire ("protocol")."""
    if client == "protocol":
        return ProtocolTab
    if client != "browser":
        raise ValueError(f"client: {client!r} is not one of {CLIENTS}")
    p = await stack.enter_async_context(async_playwright())
    browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    stack.push_async_callback(browser.close)
    return lambda: BrowserTab(browser)


async def run_load(sessions: int, seconds: float, workers: int = 4, steps: int = 2000, query: str | None = None,
                   pause_after: float | None = None, settle_timeout: float = 0.0, close_timeout: float = 60.0,
                   workdir: Path | str | None = None, thread_names: bool = True, warmup: bool = True,
                   health_timeout: float = HEALTH_TIMEOUT_S, client: str = "browser",
                   worker_mode: str = limits.DEFAULT_WORKER_MODE,
                   say: Callable[[str], None] = print) -> dict:
    """Run the load test and return every figure (see the module docstring).

    Samples for ``seconds`` after the Start clicks; with ``settle_timeout`` > 0, goes on (at
    most that much longer) until every session trained or showed its queue place and, with
    ``pause_after``, until the paused session's slot went to a queued one (see _settled).
    """
    assert sessions >= 1 and seconds > 0 and workers >= 1
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bnviz-load-"))
    query = query or f"preset=quick-look&steps={steps}"
    result: dict = {
        "config": {"sessions": sessions, "seconds": seconds, "workers": workers, "query": query,
                   "pause_after": pause_after, "settle_timeout": settle_timeout, "thread_names": thread_names,
                   "warmup": warmup, "health_timeout_s": health_timeout, "client": client,
                   "worker_mode": worker_mode},
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "mem_gb": round(
            os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1), "uptime_before": uptime_line()},
    }
    say(f"machine: {result['machine']['cores']} cores, {result['machine']['cpu']}; {result['machine']['uptime_before']}")
    env = {"BNVIZ_MAX_WORKERS": str(workers), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           limits.WORKER_MODE_VAR: worker_mode}
    if thread_names:
        hooks = workdir / "hooks"
        hooks.mkdir(parents=True, exist_ok=True)
        (hooks / "sitecustomize.py").write_text(THREAD_NAMES_HOOK)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(hooks), os.environ.get("PYTHONPATH", "")) if x)
    t_boot = time.time()
    server = await asyncio.to_thread(start_server, workdir, env)
    say(f"server {server.url} (pid {server.proc.pid}) up in {time.time() - t_boot:.1f} s; log {server.log_path}")
    mon = Monitor(server.url, server.proc.pid, health_timeout)
    mon.start()
    sess = [Session(i) for i in range(sessions)]
    try:
        await asyncio.sleep(2.0)
        mon.mark("idle_end")
        async with AsyncExitStack() as stack:
            new_tab = await _tab_factory(client, stack)
            url = f"{server.url}/?{query}"
            if warmup:
                result["warmup"] = await _warm_up(new_tab, url, server, say)
            mon.mark("open_start")
            sem = asyncio.Semaphore(OPEN_CONCURRENCY)
            await asyncio.gather(*(_open(new_tab, url, s, sem) for s in sess))
            opened = [s for s in sess if s.error is None]
            mon.mark("open_end")
            say(f"{len(opened)}/{sessions} sessions open in {mon.marks['open_end'] - mon.marks['open_start']:.1f} s"
                + "".join(f"\n  session {s.idx}: {s.error}" for s in sess if s.error))
            if not opened:
                raise RuntimeError("no session could open: " + "; ".join(s.error or "" for s in sess))
            await asyncio.sleep(2.0)
            mon.mark("sessions_idle_end")
            # Start, one session after the other: the first W get the slots, in order.
            for s in opened:
                try:
                    await _click(s, "Start")
                    s.started_at = time.time()
                except Exception as exc:  # noqa: BLE001
                    s.error = f"start: {type(exc).__name__}: {_first_line(exc)}"
            mon.mark("load_start")
            say(f"Start pressed in {sum(s.started_at is not None for s in sess)} sessions; sampling {seconds:g} s")
            t_end = time.time() + seconds
            deadline = t_end + settle_timeout
            paused: Session | None = None
            while True:
                await asyncio.sleep(COLLECT_EVERY_S)
                await _collect_all(sess)
                if pause_after is not None and paused is None and time.time() - mon.marks["load_start"] >= pause_after:
                    paused = await _pause_one(sess, say)
                _progress_line(sess, mon, say)
                now = time.time()
                if now >= deadline or (now >= t_end and _settled(sess, pause_after, paused)):
                    break
            await _collect_all(sess)
            mon.mark("load_end")
            result["handoff"] = _handoff(sess, paused)
            # Close every tab: the sessions end, their workers must stop.
            offset = server.log_size()
            mon.mark("close_start")
            await asyncio.gather(*(_close(s) for s in sess))
            mon.mark("closed")
            result["close"] = await _wait_closed(server.log_path, offset, len(opened), close_timeout, mon)
            say(f"closed {len(opened)} tabs: {result['close']}")
        await asyncio.sleep(3.0)
        mon.mark("after_end")
    finally:
        mon.stop()
        stop_server(server)
    result["uptime_after"] = uptime_line()
    result["server_log"] = str(server.log_path)
    result["sessions"] = [s.summary() for s in sess]
    result["summary"] = _summary(result["sessions"], mon, seconds, workers)
    return result


async def _warm_up(new_tab, url: str, server, say) -> dict:
    """One session presses Start and waits for its first steps, then closes (not measured).

    The first Start in a fresh server process imported what torch needed for its first
    optimizer (torch._dynamo, via torch.optim, until bnviz.optimizers) and held the import
    lock while it did; on two busy cores that took long and stalled every other session's
    script run meanwhile. A class paid it once per replica; the measurement should not. What
    a first Start still does once (its dataset, the engine's first buffers) stays out too.
    """
    s = Session(-1)
    t0 = time.time()
    await _open(new_tab, url, s, asyncio.Semaphore(1))
    out: dict = {"error": s.error}
    try:
        if s.error is None:
            opened = time.time()
            await _click(s, "Start")
            deadline = time.time() + WARMUP_TIMEOUT_S
            while time.time() < deadline:
                await asyncio.sleep(1.0)
                await _collect(s)
                if s.error or ((s.latest() or {}).get("step") or 0) > 0:
                    break
            first = next((x["t"] for x in s.samples if (x["step"] or 0) > 0), None)
            out.update({"open_s": round(opened - t0, 1), "first_step_after_start_s":
                        round(first - opened, 1) if first else None, "error": s.error})
    finally:
        offset = server.log_size()
        await _close(s)
        for _ in range(60):  # its worker stops (bounded)
            if CLOSED_RE.search(_log_since(server.log_path, offset)):
                break
            await asyncio.sleep(0.5)
    say(f"warm-up session: page open in {out.get('open_s')} s, first steps {out.get('first_step_after_start_s')} s "
        f"after Start{'; ' + out['error'] if out.get('error') else ''}")
    return out


def _settled(sess: list[Session], pause_after: float | None, paused: Session | None) -> bool:
    """Every open session trained (its step increased) or showed its queue place; and where a
    Pause was asked for, it was pressed and a queued session trained after it."""
    rows = [s.summary() for s in sess if s.error is None]
    if not all(r["step_increased"] or r["queued_seen"] for r in rows):
        return False
    return pause_after is None or (paused is not None and _handoff(sess, paused)["advanced"])


async def _pause_one(sess: list[Session], say) -> Session | None:
    """Press Pause in the first session that is training and has shown a step > 0."""
    training = [s for s in sess if s.error is None and (s.latest() or {}).get("state") == "training"
                and ((s.latest() or {}).get("step") or 0) > 0]
    if not training:
        return None
    s = training[0]
    try:
        await _click(s, "Pause")
        s.paused_at = time.time()
        say(f"session {s.idx} pressed Pause at step {(s.latest() or {}).get('step')}")
        return s
    except Exception as exc:  # noqa: BLE001
        s.error = f"pause: {type(exc).__name__}: {_first_line(exc)}"
        return None


def _handoff(sess: list[Session], paused: Session | None) -> dict:
    if paused is None:
        return {"paused_session": None}
    # Queued before the Pause, out of the queue (with a slot) after it. Its first steps show
    # up to 25 steps later (the page shows steps in chunks of 25).
    took = []
    for s in sess:
        r = s.summary()
        if s is not paused and any(x["queued"] is not None and x["t"] <= paused.paused_at for x in s.samples) \
                and r["left_queue_at"] is not None and r["left_queue_at"] > paused.paused_at:
            took.append(s.idx)
    return {"paused_session": paused.idx, "queued_sessions_that_got_the_slot": took, "advanced": bool(took)}


def _progress_line(sess: list[Session], mon: Monitor, say) -> None:
    lat = [s.latest() or {} for s in sess]
    training = sum(x.get("state") == "training" for x in lat)
    queued = sum(x.get("queued") is not None for x in lat)
    finished = sum(x.get("state") == "finished" for x in lat)
    h = mon.health[-8:]
    ok = [x[1] * 1000 for x in h if x[1] is not None]
    proc = mon.proc[-1] if mon.proc else {}
    say(f"  t={time.time() - mon.marks['load_start']:5.1f}s training={training} queued={queued} finished={finished} "
        f"errors={sum(s.error is not None for s in sess)} health~{statistics.median(ok) if ok else float('nan'):.0f}ms "
        f"server_rss={proc.get('server_rss', 0) / 2**20:.0f}MB")


async def _close(s: Session) -> None:
    if s.tab is None:
        return
    try:
        await asyncio.wait_for(s.tab.close(), timeout=30)
    except Exception:  # noqa: BLE001 -- already gone
        pass


async def _wait_closed(log_path: Path, offset: int, expected: int, timeout: float, mon: Monitor) -> dict:
    """Poll the server log (bounded) for the sessions' 'session closed' lines; 0 workers alive at the end."""
    t0 = time.time()
    lines: list[tuple[str, str]] = []
    while time.time() - t0 < timeout:
        lines = CLOSED_RE.findall(_log_since(log_path, offset))
        if len(lines) >= expected and lines[-1][1] == "0":
            break
        await asyncio.sleep(0.5)
    last = lines[-1] if lines else None
    return {"closed_lines": len(lines), "expected": expected, "labs_open": int(last[0]) if last else None,
            "workers_alive": int(last[1]) if last else None, "waited_s": round(time.time() - t0, 2)}


def _summary(rows: list[dict], mon: Monitor, seconds: float, workers: int) -> dict:
    m = mon.marks
    live = [r for r in rows if r["error"] is None or r["samples"]]
    training_rates = [r["steps_per_s_measured"] for r in rows if r["steps_per_s_measured"]]
    shown = [r["steps_per_s_shown_median"] for r in rows if r["steps_per_s_shown_median"]]
    total_steps = sum((r["max_step"] or 0) for r in rows)
    sampled = m.get("load_end", 0) - m.get("load_start", 0) or seconds
    idle = mon.proc_between(0, m.get("idle_end", 0))
    after = [p for p in mon.proc if p["t"] >= m.get("closed", float("inf"))]
    return {
        "sessions": len(rows),
        "opened": sum(r["samples"] > 0 for r in rows),
        "errors": [f"session {r['session']}: {r['error']}" for r in rows if r["error"]],
        "collect_timeouts": sum(r.get("collect_timeouts", 0) for r in rows),
        "trained_from_start": sum(r["trained"] and not r["queued_seen"] for r in rows),
        "queued": sum(r["queued_seen"] for r in rows),
        "queued_then_got_slot": sum(r["slot_after_queue"] for r in rows),
        "queued_then_trained": sum(r["trained_after_queue"] for r in rows),
        "neither_trained_nor_queued": sum(not r["trained"] and not r["queued_seen"] for r in live),
        "finished_runs": sum(r["last_state"] == "finished" for r in rows),
        "charts_grew": sum(r["chart_grew"] for r in rows),
        "wire": _wire_summary(rows, sampled),
        "steps_per_s_per_training_session_median": statistics.median(training_rates) if training_rates else None,
        "steps_per_s_per_training_session_range": [min(training_rates), max(training_rates)] if training_rates else None,
        "steps_per_s_shown_median": statistics.median(shown) if shown else None,
        "sampled_s": round(sampled, 1),
        "steps_total_per_s": total_steps / sampled,
        "update_gap_p50_s": percentile([r["update_gap_p50_s"] for r in rows if r["update_gap_p50_s"]], 0.5),
        "update_gap_max_s": max([r["update_gap_max_s"] for r in rows if r["update_gap_max_s"]], default=None),
        "health_idle": mon.health_between(0, m.get("idle_end", 0)),
        "health_load": mon.health_between(m.get("load_start", 0), m.get("load_end", 0)),
        "health_all": mon.health_between(0, float("inf")),
        "server_idle_rss_mb": idle.get("server_rss_mb_median"),
        "with_sessions_open": mon.proc_between(m.get("open_end", 0), m.get("sessions_idle_end", 0)),
        "during_load": mon.proc_between(m.get("load_start", 0), m.get("load_end", 0)),
        "server_rss_mb_after_close": after[-1]["server_rss"] / 2**20 if after else None,
        "steps_per_trainer_cpu_s": (total_steps / (load_cpu * sampled)) if (load_cpu := mon.proc_between(
            m.get("load_start", 0), m.get("load_end", 0)).get("trainer_cpu_cores")) else None,
        "workers": workers,
    }


def _wire_summary(rows: list[dict], sampled: float) -> dict | None:
    """What the protocol client saw on the wire (None with the browser client)."""
    wires = [(r, r["wire"]) for r in rows if r.get("wire")]
    if not wires:
        return None
    trained = [w for r, w in wires if r["trained"]]
    redraws = [w["chart_redraws"] for _, w in wires]
    return {
        "sessions_with_chart_updates": sum(w["chart_redraws"] > 0 for _, w in wires),
        "trained_sessions_with_chart_updates": sum(w["chart_redraws"] > 0 for w in trained),
        "trained_sessions": len(trained),
        "chart_redraws_per_session_min_median": [min(redraws), statistics.median(redraws)],
        "chart_gap_max_s": max((w["chart_gap_max_s"] for w in trained if w["chart_gap_max_s"]), default=None),
        "kb_per_s_per_trained_session_median": (statistics.median(w["bytes_received"] for w in trained) / 1024 / sampled
                                                if trained else None),
        "kb_received_all": sum(w["bytes_received"] for _, w in wires) / 1024,
    }


# --------------------------------------------------------------------------- report


def _f(v, fmt="{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_report(res: dict) -> str:
    out = []
    cfg = res["config"]
    out.append(f"\nbnviz load test: {cfg['sessions']} sessions ({cfg.get('client', 'browser')} client), {cfg['seconds']:g} s, "
               f"BNVIZ_MAX_WORKERS={cfg['workers']}, BNVIZ_WORKER_MODE={cfg.get('worker_mode', limits.DEFAULT_WORKER_MODE)}, "
               f"/?{cfg['query']}")
    out.append(f"machine: {res['machine']['cores']} cores ({res['machine']['cpu']}), {res['machine']['mem_gb']} GB")
    out.append(f"  before: {res['machine']['uptime_before']}")
    out.append(f"  after:  {res['uptime_after']}")
    out.append("")
    out.append(f"{'sess':>4} {'role':<14} {'queue':>5} {'steps':>15} {'steps/s':>8} {'shown':>6} {'pts':>4} {'chart@':>7} "
               f"{'grew':>4} {'gap50':>5} {'gapmax':>6} {'last':<9} error")
    for r in res["sessions"]:
        role = ("queued→trained" if r["trained_after_queue"] else "queued→slot" if r["slot_after_queue"]
                else "queued" if r["queued_seen"]
                else "trained" if r["trained"] else "-")
        steps = f"{_f(r['first_step'])}→{_f(r['max_step'])}"
        out.append(f"{r['session']:>4} {role:<14} {_f(r['first_queue_place']):>5} {steps:>15} "
                   f"{_f(r['steps_per_s_measured']):>8} {_f(r['steps_per_s_shown_median']):>6} "
                   f"{_f(r['chart_points_max']):>4} {_f(r['chart_last_step']):>7} {'yes' if r['chart_grew'] else 'no':>4} "
                   f"{_f(r['update_gap_p50_s'], '{:.1f}'):>5} {_f(r['update_gap_max_s'], '{:.1f}'):>6} "
                   f"{r['last_state'] or '-':<9} {r['error'] or ''}")
    s = res["summary"]
    hl, hi = s["health_load"], s["health_idle"]
    dl, so = s["during_load"], s["with_sessions_open"]
    rng = s["steps_per_s_per_training_session_range"]
    out.append("")
    rows = [
        ("sessions opened / asked", f"{s['opened']} / {s['sessions']}"),
        ("sampled after Start (s)", s["sampled_s"]),
        ("trained from the start (had a slot)", s["trained_from_start"]),
        ("queued (saw 'Queued: k ahead')", s["queued"]),
        ("queued, then got a slot / showed steps", f"{s['queued_then_got_slot']} / {s['queued_then_trained']}"),
        ("neither trained nor queued", s["neither_trained_nor_queued"]),
        ("runs finished", s["finished_runs"]),
        ("sessions whose first chart grew", s["charts_grew"]),
        ("steps/s per training session (median, range)",
         f"{_f(s['steps_per_s_per_training_session_median'])} ({_f(rng[0]) if rng else '-'}-{_f(rng[1]) if rng else '-'})"),
        ("steps/s all sessions together", _f(s["steps_total_per_s"])),
        (f"tab too busy to be read (collects > {COLLECT_TIMEOUT_S} s, all tabs)", s["collect_timeouts"]),
        ("page update gap p50 / max (s)", f"{_f(s['update_gap_p50_s'], '{:.1f}')} / {_f(s['update_gap_max_s'], '{:.1f}')}"),
        ("health idle p50 / p95 / max (ms)", f"{_f(hi['p50_ms'], '{:.1f}')} / {_f(hi['p95_ms'], '{:.1f}')} / {_f(hi['max_ms'], '{:.1f}')}"),
        ("health under load p50 / p95 / max (ms)",
         f"{_f(hl['p50_ms'], '{:.1f}')} / {_f(hl['p95_ms'], '{:.1f}')} / {_f(hl['max_ms'], '{:.1f}')}"),
        ("health requests / errors incl. timeouts (all)",
         (f"{s['health_all']['count']} / {s['health_all']['errors']} (timeout {s['health_all']['timeout_s']:g} s; "
         f"answers > 5 s: {s['health_all']['over_5s']})")),
        ("server RSS idle (MB)", _f(s["server_idle_rss_mb"])),
        ("server RSS with sessions open, before Start (MB)", _f(so.get("server_rss_mb_max"))),
        ("server RSS under load, median / max (MB)",
         f"{_f(dl.get('server_rss_mb_median'))} / {_f(dl.get('server_rss_mb_max'))}"),
        ("server RSS after closing all tabs (MB)", _f(s["server_rss_mb_after_close"])),
        ("server CPU under load (cores)", _f(dl.get("server_cpu_cores"), "{:.2f}")),
        ("  of it: training workers (cores; busy workers; per busy worker)",
         (f"{_f(dl.get('trainer_cpu_cores'), '{:.2f}')}; {dl.get('busy_trainers', '-')}; "
         f"{_f(dl.get('cpu_per_busy_trainer'), '{:.2f}')}")),
        ("  of it: event loop / script runs and the rest (cores)",
         f"{_f(dl.get('event_loop_cpu_cores'), '{:.2f}')} / {_f(dl.get('scripts_and_rest_cpu_cores'), '{:.2f}')}"),
        ("steps per CPU-second of a training worker", _f(s.get("steps_per_trainer_cpu_s"))),
        ("load client (this process, Playwright, Chromium) CPU / RSS under load", (f"{_f(dl.get('client_cpu_cores'), '{:.2f}')} cores / "
                                                            f"{_f(dl.get('client_rss_mb_max'))} MB")),
        ("warm-up (one session before the measurement)", res.get("warmup", "none")),
        ("handoff on Pause", res.get("handoff")),
        ("after closing: 'session closed' lines, workers alive", (f"{res['close']['closed_lines']}/{res['close']['expected']}, "
                                                               f"{res['close']['workers_alive']} "
                                                               f"(after {res['close']['waited_s']} s)")),
    ]
    if (wire := s.get("wire")) is not None:
        rows += [
            ("protocol client: sessions that received chart updates", (
                f"{wire['sessions_with_chart_updates']} of {s['sessions']} "
                f"({wire['trained_sessions_with_chart_updates']} of the {wire['trained_sessions']} that trained)")),
            ("  chart redraws per session (min / median)", " / ".join(_f(x) for x in wire["chart_redraws_per_session_min_median"])),
            ("  longest gap between chart redraws of a training session (s)", _f(wire["chart_gap_max_s"], "{:.1f}")),
            ("  received per training session (KB/s, median)", _f(wire["kb_per_s_per_trained_session_median"])),
        ]
    w = max(len(k) for k, _ in rows)
    out += [f"{k:<{w}}  {v}" for k, v in rows]
    if s["errors"]:
        out.append("errors: " + "; ".join(s["errors"]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=10, help="sessions (tabs) to open (default 10)")
    ap.add_argument("--client", choices=CLIENTS, default="browser",
                    help="browser: each session a context of one headless Chromium that draws every chart; "
                         "protocol: each session a websocket client speaking Streamlit's protocol, drawing "
                         "nothing (bench/protocol_tab.py), as if every browser ran on another machine")
    ap.add_argument("--seconds", type=float, default=60, help="how long to sample after Start (default 60)")
    ap.add_argument("--workers", type=int, default=4, help="BNVIZ_MAX_WORKERS of the server (default 4)")
    ap.add_argument("--steps", type=int, default=2000, help="steps per run, /?preset=quick-look&steps=N (default 2000)")
    ap.add_argument("--query", help="the page's query string instead (without '?'), e.g. 'preset=quick-look&depth=1'")
    ap.add_argument("--pause-after", type=float, help="after this many seconds one training session presses Pause")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="after --seconds, sample up to this much longer until every session trained or queued "
                         "(and, with --pause-after, the slot was handed on)")
    ap.add_argument("--no-warmup", action="store_true",
                    help="measure from a cold server (the first Start then also pays the torch imports)")
    ap.add_argument("--no-thread-names", action="store_true",
                    help="do not put the thread-naming sitecustomize on the server's PYTHONPATH (no CPU split)")
    ap.add_argument("--worker-mode", choices=limits.WORKER_MODES, default=limits.DEFAULT_WORKER_MODE,
                    help=f"BNVIZ_WORKER_MODE of the server: training workers as threads or processes "
                         f"(default {limits.DEFAULT_WORKER_MODE})")
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args(argv)
    try:
        res = asyncio.run(run_load(args.sessions, args.seconds, args.workers, args.steps, args.query, args.pause_after,
                                   args.settle, thread_names=not args.no_thread_names,
                                   warmup=not args.no_warmup, client=args.client, worker_mode=args.worker_mode))
    except RuntimeError as exc:
        print(f"load test broke: {exc}", file=sys.stderr)
        return 1
    print(format_report(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
