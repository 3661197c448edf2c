"""Benchmark `sipmob-web`: page load in headless Chromium, and how fast a device change reaches a
page's event stream.

Run: .venv/bin/python tests/bench/bench_web.py [--loads 20] [--changes 20]

The home: the real `sipmob-slpda` with 50 `service:sip-device` registrations in 10 rooms,
`sipmob phone` holding 5 calls with baresip, `sipmob-web` (poll_interval 0.5 s) in front.

Page load: Chromium's Navigation Timing for ``GET /`` with a session: first byte
(``responseStart - requestStart``) and DOMContentLoaded (``domContentLoadedEventEnd -
startTime``, which includes drawing the 50 devices and 5 calls from the embedded snapshot).
"of which drawing" is from the last byte of the page to the end of app.js's first drawing
(parsing, style, the script). Three cases, reported apart:
- fresh: the daemon's device snapshot is younger than the poll interval (another page is
  open and keeps it fresh): the page is built from it;
- asked: no page open for longer than the interval, so the load itself asks the DA for the
  list (one SrvRqst); the attributes are those learnt in the last 30 s;
- cold: a daemon just started, which asks the DA for the list and every device's attributes
  (51 requests) and the phone for its calls before the first byte.

Event stream: a page-like client holds ``GET /events``; a device is registered in the DA (the
time its SrvAck arrives is t0) and the time until the ``devices`` event naming it arrives is
measured; then the same for its deregistration. Each change starts at a random phase of the
poll interval.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda"),
                str(ROOT / "tests/integration/mn"), str(ROOT / "tests/integration/web")]

from browser import AVAILABLE, WHY_NOT, chromium  # noqa: E402
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402
from tests.peers.baresip import Baresip  # noqa: E402
from web_process import Web  # noqa: E402

DEVICES, ROOMS, CALLS = 50, 10, 5
TIMING = """const n = performance.getEntriesByType('navigation')[0];
const drawn = performance.getEntriesByName('sipmob-drawn')[0];
return {ttfb: n.responseStart - n.requestStart, dcl: n.domContentLoadedEventEnd - n.startTime,
        draw: drawn ? drawn.startTime - n.responseEnd : NaN,
        devices: document.querySelectorAll('[data-device]').length,
        calls: document.querySelectorAll('.card.call').length};"""


def register_home(da: Slpda) -> None:
    with da.client() as slp:
        for i in range(DEVICES):
            kind = i % 3
            media = ["audio-sendrecv", "audio-recvonly,video-recvonly", "video-sendonly"][kind]
            slp.register(f"sip:dev{i}@127.0.0.1:{20000 + i}",
                         f"(name=Device {i}),(room=room{i % ROOMS}),(media={media}),"
                         "(audio-codecs=PCMU,PCMA),(video-codecs=H264)")


def figures(name: str, samples: list[dict[str, float]]) -> None:
    for key, label in (("ttfb", "first byte"), ("dcl", "DOMContentLoaded"), ("draw", "  of which drawing")):
        values = sorted(s[key] for s in samples)
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(f"  {name:<6} {label:<17} median {statistics.median(values):6.1f} ms   p90 {p90:6.1f} ms"
              f"   max {values[-1]:6.1f} ms   (n={len(values)})")


def load_once(browser: Any, url: str) -> dict[str, float]:
    browser.get(url)
    timing = browser.execute_script(TIMING)
    assert timing["devices"] == DEVICES and timing["calls"] == CALLS, timing
    browser.get("about:blank")  # closes the page's event stream
    return dict(timing)


def page_load(tmp: Path, da: Slpda, phone: Phone, web: Web, loads: int) -> None:
    browser = chromium(tmp / "profile", 1280, 900)
    try:
        session = web.login()
        browser.get(web.url + "/login")
        name, value = session.cookie.split("=", 1)
        browser.add_cookie({"name": name, "value": value, "path": "/", "httpOnly": True,
                            "sameSite": "Strict"})
        load_once(browser, web.url + "/")  # Chromium's own first-run work out of the figures
        # fresh: a second client keeps the stream open, so the snapshot stays younger than the interval
        keeper = http.client.HTTPConnection(web.host, web.port, timeout=10)
        keeper.request("GET", "/events", headers={"Cookie": session.cookie})
        keeper.getresponse()
        time.sleep(1.0)
        fresh = [load_once(browser, web.url + "/") for _ in range(loads)]
        keeper.close()
        time.sleep(1.0)
        asked = []
        for _ in range(loads):
            time.sleep(0.7)  # longer than the poll interval, with no page open
            asked.append(load_once(browser, web.url + "/"))
        cold = []
        for i in range(max(3, loads // 4)):
            (tmp / f"cold{i}").mkdir()
            other = Web(tmp / f"cold{i}", f"{HOST}:{da.port}", phone.control, poll=0.5)
            try:
                cookie = other.login(csrf=False).cookie
                browser.get(other.url + "/login")
                browser.add_cookie({"name": name, "value": cookie.split("=", 1)[1], "path": "/"})
                cold.append(load_once(browser, other.url + "/"))
            finally:
                other.stop()
        print(f"page load, {DEVICES} devices in {ROOMS} rooms, {CALLS} calls (target < 200 ms):")
        figures("fresh", fresh)
        figures("asked", asked)
        figures("cold", cold)
    finally:
        browser.quit()


def read_events(conn: http.client.HTTPResponse, wanted: str, present: bool, deadline: float) -> float:
    """Read the stream until a devices event sets (present) or removes ``wanted``; its arrival time."""
    event = ""
    while time.monotonic() < deadline:
        line = conn.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "devices":
            data = json.loads(line[6:])
            if present and any(d["uri"] == wanted and d["up"] for d in data.get("set", [])):
                return time.monotonic()
            if not present and (wanted in data.get("remove", [])
                                or any(d["uri"] == wanted and not d["up"] for d in data.get("set", []))):
                return time.monotonic()
    raise TimeoutError(f"no devices event for {wanted}")


def event_latency(da: Slpda, web: Web, changes: int) -> None:
    session = web.login()
    conn = http.client.HTTPConnection(web.host, web.port, timeout=10)
    conn.request("GET", "/events", headers={"Cookie": session.cookie})
    stream = conn.getresponse()
    time.sleep(1.0)
    added, removed = [], []
    with da.client() as slp:
        for i in range(changes):
            uri = f"sip:new{i}@127.0.0.1:{30000 + i}"
            time.sleep(random.uniform(0.1, 0.6))
            slp.register(uri, f"(name=New {i}),(room=room{i % ROOMS}),(media=audio-sendrecv)")
            t0 = time.monotonic()
            added.append((read_events(stream, uri, True, t0 + 5) - t0) * 1000)
            time.sleep(random.uniform(0.1, 0.6))
            slp.deregister(uri)
            t0 = time.monotonic()
            removed.append((read_events(stream, uri, False, t0 + 5) - t0) * 1000)
    conn.close()
    print("device change to the page's event stream, after the DA's SrvAck (target < 1 s):")
    for label, values in (("registered", added), ("deregistered", removed)):
        values.sort()
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(f"  {label:<13} median {statistics.median(values):6.1f} ms   p90 {p90:6.1f} ms   "
              f"max {values[-1]:6.1f} ms   (n={len(values)}, poll interval 500 ms)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--changes", type=int, default=20)
    args = parser.parse_args()
    if not AVAILABLE:
        print(f"skipped: {WHY_NOT}")
        return 0
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "da").mkdir()
        da = Slpda(tmp / "da").start()
        started: list[Any] = []
        try:
            register_home(da)
            cns = [Baresip(tmp, user=f"cn{i}") for i in range(CALLS)]
            started += cns
            phone = Phone(tmp, f"{HOST}:{da.port}")
            started.append(phone)
            for cn in cns:
                done = phone.sipmob("call", cn.uri)
                assert done.returncode == 0, done.stderr
            assert until(lambda: len(phone.calls()) == CALLS)
            web = Web(tmp, f"{HOST}:{da.port}", phone.control, poll=0.5)
            started.append(web)
            one, five, _ = os.getloadavg()
            print(f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores")
            page_load(tmp, da, phone, web, args.loads)
            event_latency(da, web, args.changes)
        finally:
            for thing in reversed(started):
                thing.stop()
            da.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
