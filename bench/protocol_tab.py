"""A browser tab without the browser: Streamlit's websocket protocol, for the load test.

In the load test one headless Chromium drawing every session's live page took 1.2-1.35 of
the machine's 2 cores (docs/DEPLOYMENT.md), so the server under test got what was left. In
a classroom each student's browser runs on their own machine. ``ProtocolTab`` does on the
wire what a tab does and draws nothing: it opens ``/_stcore/stream``, asks for the page
with the tab's query string, clicks buttons by sending their trigger, re-runs fragments on
the timers the server asks for (``auto_rerun``, as the frontend's ``handleAutoRerun``
does: a fixed interval, whether or not the last rerun has finished), and reports the
message hashes it has seen as cached, as the frontend does, so the server sends what it
would send a browser.

It exposes the same samples as the in-page sampler of bench/load.py (SAMPLER_JS): the
progress text, the "Queued: k ahead" line and the first chart's first trace, one sample per
finished script run (a run draws the whole live fragment), plus what only the wire shows:
bytes and messages received and chart updates per session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

STREAM_PATH = "/_stcore/stream"
CACHED_HASHES_MAX = 2000  # the frontend's cache is bounded too; what a long session reports


@dataclass
class _Run:
    """What one script run (full or fragment) drew, as far as the load test cares."""
    drew: bool = False
    progress: str | None = None
    queued: str | None = None
    chart_points: int = -1  # points in the first chart's first trace; -1: no chart in this run
    chart_last_x: float | None = None
    charts: int = 0


@dataclass
class _Element:
    kind: str
    text: str | None = None
    points: int = -1
    last_x: float | None = None


@dataclass
class ProtocolStats:
    bytes_received: int = 0
    messages: int = 0
    chart_updates: int = 0  # plotly_chart elements received
    runs_finished: int = 0
    auto_reruns_sent: int = 0
    chart_times: list[float] = field(default_factory=list)  # when a run that drew charts finished


def _plotly_array(v) -> list | np.ndarray:
    """A Plotly trace array as it travels: a list, or {dtype, bdata} (base64 of a typed array)."""
    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v.get("dtype", "f8")))
    return v if isinstance(v, list) else []


def _first_trace(spec: str) -> tuple[int, float | None]:
    try:
        data = json.loads(spec).get("data") or []
        x = _plotly_array(data[0].get("x")) if data else []
    except (ValueError, AttributeError, TypeError):
        return -1, None
    return len(x), (float(x[-1]) if len(x) else None)


class ProtocolTab:
    """One Streamlit session over a websocket; the interface of bench/load.py's BrowserTab."""

    def __init__(self) -> None:
        self.ws = None
        self.query = ""
        self.stats = ProtocolStats()
        self.samples: list[dict] = []  # same fields as SAMPLER_JS: i, t (ms), p, q, n, x
        self.buttons: dict[str, str] = {}  # label -> widget id, from the last run that drew it
        self._seq = 0
        self._run = _Run()
        self._cache: dict[str, _Element | None] = {}  # message hash -> what it drew (for ref_hash)
        self._timers: dict[str, tuple[float, asyncio.Task]] = {}  # fragment id -> (interval, task)
        self.fragments: set[str] = set()  # ids of the fragments the server has put on a timer
        self._reader: asyncio.Task | None = None
        self._finished = asyncio.Event()
        self.closed_reason: str | None = None

    # -- the interface the load test uses ------------------------------------------------
    async def open(self, url: str, timeout: float) -> None:
        """Connect and run the page for ``url``'s query; return once a Start button was drawn."""
        parts = urlsplit(url)
        self.query = parts.query
        ws_url = f"ws://{parts.netloc}{parts.path.rstrip('/')}{STREAM_PATH}"
        self.ws = await asyncio.wait_for(
            websockets.connect(ws_url, subprotocols=["streamlit"], max_size=None, compression=None), timeout)
        self._reader = asyncio.create_task(self._read_loop())
        await self._send_rerun()
        await self._wait(lambda: "Start" in self.buttons and self.stats.runs_finished > 0, timeout, "the page's Start button")

    async def click(self, label: str, timeout: float) -> None:
        await self._wait(lambda: label in self.buttons, timeout, f"a {label!r} button")
        await self._send_rerun(trigger=self.buttons[label])

    async def click_as_a_tick_fires(self, label: str, timeout: float) -> None:
        """A click in the moment a fragment's timer fires, as Chromium sends it (Streamlit
        1.67): the tick's fragment-only rerun carries the click's trigger as well, and the
        click's own full rerun follows with it. The server runs the button's on_click in both."""
        await self._wait(lambda: label in self.buttons and self.fragments, timeout, f"a {label!r} button and a timer")
        runs = self.stats.runs_finished
        await self._send_rerun(trigger=self.buttons[label], fragment_id=next(iter(self.fragments)))
        # The tick's run is under way or done when the click's own arrives (Chromium sends it
        # 10-30 ms later); sent at once, the server folds the two requests into one run.
        await self._wait(lambda: self.stats.runs_finished > runs, timeout, "the tick's run")
        await self._send_rerun(trigger=self.buttons[label])

    async def read(self, since: int) -> list[dict]:
        self.samples = [s for s in self.samples if s["i"] > since]
        return list(self.samples)

    async def close(self) -> None:
        for _, task in self._timers.values():
            task.cancel()
        self._timers.clear()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()

    def report(self) -> dict:
        s = self.stats
        gaps = [b - a for a, b in zip(s.chart_times, s.chart_times[1:])]
        return {"bytes_received": s.bytes_received, "messages": s.messages, "chart_updates": s.chart_updates,
                "chart_redraws": len(s.chart_times), "runs_finished": s.runs_finished,
                "auto_reruns_sent": s.auto_reruns_sent, "chart_gap_max_s": max(gaps) if gaps else None,
                "closed_reason": self.closed_reason}

    # -- the wire ------------------------------------------------------------------------
    async def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if self._reader is not None and self._reader.done():
                raise ConnectionError(f"connection closed while waiting for {what}: {self.closed_reason}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {what} within {timeout:g} s")
            self._finished.clear()
            try:
                await asyncio.wait_for(self._finished.wait(), min(left, 1.0))
            except TimeoutError:
                pass

    async def _send_rerun(self, trigger: str | None = None, fragment_id: str | None = None) -> None:
        msg = BackMsg()
        rs = msg.rerun_script
        rs.query_string = self.query
        if fragment_id:
            rs.fragment_id = fragment_id
            rs.is_auto_rerun = True
        if trigger:
            w = rs.widget_states.widgets.add()
            w.id = trigger
            w.trigger_value = True
        # Widgets whose state is not sent keep the value the server holds (SessionState's old
        # state): a tab that only clicks buttons need not echo every sidebar widget.
        rs.cached_message_hashes.extend(list(self._cache)[-CACHED_HASHES_MAX:])
        await self.ws.send(msg.SerializeToString())

    async def _auto_rerun(self, fragment_id: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.stats.auto_reruns_sent += 1
            await self._send_rerun(fragment_id=fragment_id)

    async def _read_loop(self) -> None:
        try:
            async for data in self.ws:
                self.stats.bytes_received += len(data)
                self.stats.messages += 1
                msg = ForwardMsg()
                msg.ParseFromString(data)
                self._handle(msg)
        except websockets.ConnectionClosed as exc:
            self.closed_reason = f"closed: {exc}"
        finally:
            self.closed_reason = self.closed_reason or "closed"
            self._finished.set()

    def _handle(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "ref_hash":  # a message sent before, which this tab said it has cached
            self._drew(self._cache.get(msg.ref_hash))
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            el = self._element(msg.delta.new_element)
            if msg.metadata.cacheable and msg.hash:
                self._cache[msg.hash] = el
            self._drew(el)
        elif kind == "auto_rerun":
            self.fragments.add(msg.auto_rerun.fragment_id)
            self._set_timer(msg.auto_rerun.fragment_id, msg.auto_rerun.interval)
        elif kind == "stop_auto_rerun":
            for fid in msg.stop_auto_rerun.fragment_ids:
                self._cancel_timer(fid)
        elif kind == "script_finished":
            self._commit()

    def _element(self, el) -> _Element | None:
        kind = el.WhichOneof("type")
        if kind == "button":
            self.buttons[el.button.label] = el.button.id
            return None
        if kind == "progress":
            return _Element("progress", text=el.progress.text)
        if kind == "alert":
            return _Element("alert", text=el.alert.body)
        if kind == "plotly_chart":
            self.stats.chart_updates += 1
            # Only the first chart of a run is decoded (what SAMPLER_JS reads): decoding all
            # nine would make this client the machine's bottleneck again.
            if self._run.charts == 0:
                n, x = _first_trace(el.plotly_chart.spec)
                return _Element("chart", points=n, last_x=x)
            return _Element("chart")
        return None

    def _drew(self, el: _Element | None) -> None:
        r = self._run
        r.drew = True
        if el is None:
            return
        if el.kind == "progress":
            r.progress = el.text
        elif el.kind == "alert" and "Queued:" in (el.text or ""):
            r.queued = el.text
        elif el.kind == "chart":
            if r.charts == 0:
                r.chart_points, r.chart_last_x = el.points, el.last_x
            r.charts += 1

    def _commit(self) -> None:
        """A run finished: what it drew is what the page shows now (a run draws the whole live fragment)."""
        r, self._run = self._run, _Run()
        self.stats.runs_finished += 1
        now = time.time()
        if r.drew:
            self._seq += 1
            self.samples.append({"i": self._seq, "t": now * 1000.0, "p": r.progress, "q": r.queued,
                                 "n": r.chart_points, "x": r.chart_last_x})
            if len(self.samples) > 4000:
                del self.samples[: len(self.samples) - 4000]
            if r.charts:
                self.stats.chart_times.append(now)
        self._finished.set()

    def _set_timer(self, fragment_id: str, interval: float) -> None:
        old = self._timers.get(fragment_id)
        if old is not None and old[0] == interval:
            return  # the frontend keeps a running timer of the same interval
        self._cancel_timer(fragment_id)
        self._timers[fragment_id] = (interval, asyncio.create_task(self._auto_rerun(fragment_id, interval)))

    def _cancel_timer(self, fragment_id: str) -> None:
        old = self._timers.pop(fragment_id, None)
        if old is not None:
            old[1].cancel()
