"""Hostile load against the DA at 127.0.0.1:427, run inside the attack namespace (see attack_net.py).

    flood.py udp SOURCES SECONDS [RATE]  SrvRqsts, each with a predicate no other has, from SOURCES
                                     addresses in 127.1.0.0/16 (about 250 per /24), at most RATE a
                                     second (0 or absent: as fast as this process can), while the
                                     victim (198.51.100.7, registered) asks every 20 ms from a
                                     process of its own (`flood.py victim SECONDS`), so that its
                                     latencies are the DA's, not the busy flooding loop's
    flood.py slowloris CONNS SECONDS CONNS TCP connections from 127.2.0.0/16 (20 per address)
                                     sending one byte a second, while the victim asks over TCP

Prints one JSON line of counts and the victim's latencies. Bounded by SECONDS and by counts.
"""

from __future__ import annotations

import json
import resource
import select
import socket
import subprocess
import sys
import time

from sipmob.slp import wire
from sipmob.slp.messages import ErrorCode, FunctionId, Header, SrvRqst

DA = ("127.0.0.1", 427)
VICTIM = "198.51.100.7"


def request(xid: int, predicate: str = "") -> bytes:
    return wire.encode(SrvRqst(Header(FunctionId.SrvRqst, xid % 0xFFFF + 1, "en"), "",
                               "service:sip-device", "DEFAULT", predicate))


def source(i: int, net: int) -> str:
    return f"127.{net}.{i // 250}.{i % 250 + 1}"


def error_of(reply: bytes) -> int:
    at = 14 + int.from_bytes(reply[12:14], "big")  # after the header and its language tag
    return int.from_bytes(reply[at:at + 2], "big")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def victim(seconds: float) -> dict[str, object]:
    """The registered victim asking every 20 ms, each request waited for (up to 1 s)."""
    legit = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    legit.bind((VICTIM, 0))
    latencies: list[float] = []
    asked = lost = 0
    start = time.monotonic()
    while time.monotonic() < start + seconds:
        asked += 1
        sent = time.monotonic()
        legit.sendto(request(60000 + asked % 5000, f"(probe={asked})"), DA)
        deadline = sent + 1.0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                lost += 1
                break
            legit.settimeout(left)
            try:
                data = legit.recv(65535)
            except TimeoutError:
                continue
            if int.from_bytes(data[10:12], "big") == (60000 + asked % 5000) % 0xFFFF + 1:
                latencies.append(time.monotonic() - sent)
                break
        time.sleep(max(0.0, sent + 0.02 - time.monotonic()))
    return {"legit_asked": asked, "legit_lost": lost,
            "legit_p50_ms": percentile(latencies, 50) * 1000,
            "legit_p99_ms": percentile(latencies, 99) * 1000}


def udp(sources: int, seconds: float, rate: float = 0.0) -> dict[str, object]:
    socks = []
    for i in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((source(i, 1), 0))
        s.setblocking(False)
        socks.append(s)
    poller = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    sent = answered = busy = 0
    xid = 0
    probe = subprocess.Popen([sys.executable, __file__, "victim", "0", str(seconds)],
                             stdout=subprocess.PIPE, text=True)
    start = time.monotonic()
    i = 0
    while (now := time.monotonic()) < start + seconds and sent < 5_000_000:
        if rate > 0 and sent > (now - start) * rate:
            time.sleep(0.001)
            continue
        for _ in range(50):
            xid += 1
            try:
                socks[i].sendto(request(xid, f"(x={xid})"), DA)
                sent += 1
            except BlockingIOError:
                pass
            i = (i + 1) % sources
        for fd, _ in poller.poll(0):
            s = by_fd[fd]
            while True:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    break
                if error_of(data) == ErrorCode.DA_BUSY_NOW:
                    busy += 1
                else:
                    answered += 1
    for s in socks:
        s.close()
    out, _ = probe.communicate(timeout=seconds + 30)
    return {"sent": sent, "rate": sent / seconds, "flood_answered": answered, "flood_busy": busy,
            **json.loads(out.strip().splitlines()[-1])}


def slowloris(conns: int, seconds: float) -> dict[str, object]:
    held: list[socket.socket] = []
    refused = 0
    for i in range(conns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source(i // 20, 2), 0))
        s.settimeout(1.0)
        try:
            s.connect(DA)
            s.setblocking(False)
            held.append(s)
        except OSError:
            refused += 1
            s.close()
    payload = request(1, "(room=kitchen)")
    asked = answered = 0
    closed = 0
    start = time.monotonic()
    step = 0
    while time.monotonic() < start + seconds:
        step += 1
        alive = []
        for s in held:
            try:
                if step < len(payload):
                    s.send(payload[step - 1:step])
                if s.recv(1) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                alive.append(s)
            except OSError:
                closed += 1
                s.close()
                continue
        held = alive
        asked += 1
        try:
            legit = socket.create_connection(DA, timeout=1.0, source_address=(VICTIM, 0))
            with legit:
                legit.sendall(request(2))
                if legit.recv(65535):
                    answered += 1
        except OSError:
            pass
        time.sleep(max(0.0, start + step - time.monotonic()))
    for s in held:
        s.close()
    # "accepted": the connections the DA kept (a refused one is closed by it at once: counted in closed)
    return {"connected": conns - refused, "closed_by_da": closed, "still_open": len(held),
            "legit_asked": asked, "legit_answered": answered}


def main() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (16384, 16384))
    mode, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    if mode == "victim":
        result = victim(seconds)
    else:
        result = udp(count, seconds, rate) if mode == "udp" else slowloris(count, seconds)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
