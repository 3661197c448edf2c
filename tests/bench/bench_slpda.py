"""Benchmark `sipmob-slpda`: SrvRqst throughput and latency over loopback UDP, memory, idle CPU.

Run: .venv/bin/python tests/bench/bench_slpda.py [--seconds 3] [--rounds 3] [--slpd PATH] [--floor]
     .venv/bin/python tests/bench/bench_slpda.py --in-process [--rounds 3]

The daemon runs as its own process. It gets 50 and then 1,000 `service:sip-device` registrations,
ten per room (attribute room=roomN). For each number of requests kept in flight (1 and 16), a
separate load process sends SrvRqsts on one non-blocking socket, pre-encoded, patching only the
XID (and a counter), and sends the next request as soon as a reply arrives, in two modes:

- cached: "(room=roomN)" for rotating rooms: the same few requests again and again, answered
  from the DA's reply cache;
- uncached: "(&(room=roomN)(!(n=COUNTER)))", a predicate that differs in every request (the
  counter), so every request is parsed, evaluated against the index and encoded anew: what a
  household's real queries cost. The counter is the request's sequence number, eight digits,
  so no two requests of a point carry the same predicate text; every room has ten matches;
- multi: "(&(room=roomN)(media=audio-sendrecv)(!(n=COUNTER)))", the same with several terms
  (two equality terms that both hold for the room's ten devices), distinct in every request too.

Cached and uncached figures are printed apart: only the uncached ones say what a new query costs.
The machine may be shared: each point runs --rounds times (the DAs taking turns) and the median
is printed, with the range of the rates, and with --slpd each point's ratio to slpd's median.

A point is bounded by count and by time. Printed: replies/s, p50 and p99 latency, lost requests,
the DA process's CPU time (user + system, from /proc/PID/stat) per reply;
then the daemon's VmRSS and the CPU time it used during 5 s idle. With --slpd PATH (an OpenSLP slpd
built elsewhere: it is not in Debian 12) the same points run against it too, side by side, each DA
on its own port with the same registrations made over its own UDP interface.

With --floor, a bare Python recvfrom/sendto loop that sends each request back is measured the same
way: no Python server can answer faster on this machine. With --in-process, only the CPU time of
the DA's own code per uncached request is printed (`DirectoryAgent.handle_batch`, no sockets):
steadier than the rates when the machine is shared; once back to back, once with 0.1 ms asleep
before each request. The second is what one request at a time costs in the daemon, which sleeps
in epoll between requests: the same code takes two to three times as long once other processes
have had the CPU and its caches have gone cold (no garbage collection runs meanwhile).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "daemons"), str(ROOT / "tests/integration/slpda")]

from slpda_process import Client, Slpda, free_port  # noqa: E402
from tests.peers.process import terminate  # noqa: E402

from sipmob.slp import wire  # noqa: E402
from sipmob.slp.messages import ErrorCode, FunctionId, Header, SrvRply, SrvRqst  # noqa: E402

MAX_REQUESTS = 200_000
LOSS_TIMEOUT = 0.5


COUNTER = b"00000000"


PREDICATES = {
    "cached": "(room=room{r})",
    "uncached": "(&(room=room{r})(!(n=" + COUNTER.decode() + ")))",
    "multi": "(&(room=room{r})(media=audio-sendrecv)(!(n=" + COUNTER.decode() + ")))",
}


def load(port: int, in_flight: int, rooms: int, seconds: float, mode: str = "cached") -> dict[str, float]:
    """Keep `in_flight` requests outstanding for `seconds`; runs in its own process."""
    text = PREDICATES[mode]
    uncached = mode != "cached"
    templates = [wire.encode(SrvRqst(Header(FunctionId.SrvRqst, 0), "", "service:sip-device", "DEFAULT",
                                     text.format(r=r))) for r in range(rooms)]
    offsets = [t.find(COUNTER) if uncached else -1 for t in templates]
    counter = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    sent_at: dict[int, int] = {}
    latencies: list[int] = []
    next_xid = 1
    room = 0
    errors = lost = 0
    clock = time.perf_counter_ns

    def send() -> None:
        nonlocal next_xid, room, counter
        xid = next_xid
        next_xid = next_xid % 0xFFFF + 1
        template = templates[room]
        at = offsets[room]
        room = (room + 1) % rooms
        sent_at[xid] = clock()
        if at >= 0:
            counter += 1
            tail = template[:at] + b"%08d" % counter + template[at + 8:]
            sock.send(template[:10] + xid.to_bytes(2, "big") + tail[12:])
        else:
            sock.send(template[:10] + xid.to_bytes(2, "big") + template[12:])

    for _ in range(in_flight):
        send()
    start = clock()
    deadline = start + int(seconds * 1e9)
    recv = sock.recv
    while True:
        now = clock()
        if now >= deadline or len(latencies) >= MAX_REQUESTS:
            break
        if not poller.poll(LOSS_TIMEOUT):
            lost += len(sent_at)  # nothing came back for a while: count them lost and start again
            sent_at.clear()
            for _ in range(in_flight):
                send()
            continue
        while True:
            try:
                data = recv(65535)
            except BlockingIOError:
                break
            t = sent_at.pop(int.from_bytes(data[10:12], "big"), None)
            if t is None:
                continue
            latencies.append(clock() - t)
            if data[1] != FunctionId.SrvRply or data[14 + int.from_bytes(data[12:14], "big")] != 0 \
                    or data[15 + int.from_bytes(data[12:14], "big")] != 0:
                errors += 1
            send()
    elapsed = (clock() - start) / 1e9
    latencies.sort()
    n = len(latencies)
    return {"replies": n, "seconds": elapsed, "rate": n / elapsed,
            "p50_us": latencies[n // 2] / 1e3 if n else 0.0,
            "p99_us": latencies[min(n - 1, n * 99 // 100)] / 1e3 if n else 0.0,
            "lost": lost, "errors": errors}


def echo(port: int, seconds: float) -> None:
    """The floor of any Python UDP server here: a bare recvfrom/sendto loop sending each request
    back, bounded by time and count; runs in its own process."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(1.0)
    recvfrom, sendto = sock.recvfrom, sock.sendto
    deadline = time.monotonic() + seconds
    for _ in range(50 * MAX_REQUESTS):
        try:
            data, addr = recvfrom(65535)
        except TimeoutError:
            if time.monotonic() > deadline:
                break
            continue
        if data[:1] == b"\x00":  # the end
            break
        sendto(data, addr)


def run_point(port: int, in_flight: int, rooms: int, seconds: float, mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--load", str(port), str(in_flight), str(rooms),
                          str(seconds), mode], capture_output=True, text=True,
                         timeout=seconds + 60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure's median over the runs of one point (lost and errors: their sum)."""
    out = {}
    for key in runs[0]:
        values = sorted(r[key] for r in runs)
        out[key] = sum(values) if key in ("lost", "errors") else values[len(values) // 2]
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def register(client: Client, first: int, count: int) -> None:
    for i in range(first, first + count):
        ack = client.register(f"sip:device{i}@192.168.{i // 250}.{i % 250 + 1}",
                              f"(room=room{i // 10}),(media=audio-sendrecv),(name=Device {i})",
                              lifetime=3600)
        assert ack.error == ErrorCode.OK, ack


class OpenSlpd:
    """OpenSLP's slpd in the foreground as a DA on a free loopback port, its files in `directory`."""

    def __init__(self, directory: Path, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.conf = directory / "slp.conf"
        self.conf.write_text("net.slp.isDA = true\nnet.slp.interfaces = 127.0.0.1\n"
                             f"net.slp.port = {self.port}\nnet.slp.useScopes = DEFAULT\n"
                             "net.slp.isBroadcastOnly = false\nnet.slp.passiveDADetection = false\n"
                             "net.slp.activeDADetection = false\nnet.slp.traceMsg = false\n")
        self.reg = directory / "slp.reg"
        self.reg.write_text("")
        self.log = directory / "slpd.log"
        self.pidfile = directory / "slpd.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-d", "-c", str(self.conf), "-r", str(self.reg),
                                      "-l", str(self.log), "-p", str(self.pidfile)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Client(self.port, timeout=0.2) as probe:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    probe.discover()
                    return
                except (TimeoutError, ConnectionRefusedError, OSError):
                    time.sleep(0.1)
        raise RuntimeError(f"slpd did not answer on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, 10.0)
            self.proc = None


def floor(seconds: float, rounds: int) -> None:
    """Round trips per second against `echo`: what no Python server on this machine can beat."""
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--echo", str(port),
                               str(seconds * rounds * 2 + 30)])
    try:
        time.sleep(0.5)
        for in_flight in (1, 16):
            runs = [run_point(port, in_flight, 5, seconds, "uncached") for _ in range(max(1, rounds))]
            r, rates = median(runs), [x["rate"] for x in runs]
            print(f"{'echo floor':>12} {'-':>8} {'-':>8} {in_flight:>9} {r['rate']:>10.0f} "
                  f"{f'{min(rates):.0f}-{max(rates):.0f}':>13} "
                  f"{r['p50_us']:>8.0f} {r['p99_us']:>8.0f} {r['lost']:>5.0f}", flush=True)
    finally:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stop:
            stop.sendto(b"\x00", ("127.0.0.1", port))
        terminate(server, 10.0)


def in_process(rounds: int) -> None:
    """CPU time of `DirectoryAgent.handle_batch` per uncached SrvRqst, without sockets: what the
    Python code costs, apart from the machine's scheduling (best of `rounds` runs of 5,000)."""
    import tomllib

    from sipmob.service.config import parse_config
    from sipmob.slp.da import DirectoryAgent
    from sipmob.slp.messages import Flags, SrvReg, UrlEntry
    from sipmob.slpda.config import SlpdaConfig

    config = parse_config(SlpdaConfig, tomllib.loads("[limits]\nrate = 0\nmax_registrations = 10000\n"))
    for services in (50, 1000):
        da = DirectoryAgent(config.da_config(), 1000.0)
        for i in range(services):
            da.handle(wire.encode(SrvReg(
                Header(FunctionId.SrvReg, 1, flags=Flags.FRESH),
                UrlEntry(f"sip:device{i}@192.168.{i // 250}.{i % 250 + 1}", 3600), "service:sip-device",
                "DEFAULT", f"(room=room{i // 10}),(media=audio-sendrecv),(name=Device {i})")),
                ("127.0.0.1", 5000), "udp", 1000.0)
        for mode in ("uncached", "multi"):
            text = PREDICATES[mode]
            requests = []
            hot = 5000 * (max(1, rounds) + 1)
            for n in range(hot + 1000 * max(1, rounds)):
                r = n % (services // 10)
                requests.append(wire.encode(SrvRqst(Header(FunctionId.SrvRqst, n % 0xFFFF + 1), "",
                                                    "service:sip-device", "DEFAULT",
                                                    text.format(r=r).replace(COUNTER.decode(), f"{n:08d}"))))
            best = math.inf
            for k in range(max(1, rounds) + 1):
                started = time.process_time()
                for data in requests[k * 5000:(k + 1) * 5000]:
                    for _ in da.handle_batch([(data, ("127.0.0.1", 40000))], "udp", 1001.0):
                        pass
                if k:  # the first warms the caches up
                    best = min(best, time.process_time() - started)
            # Further requests, each after 0.1 ms asleep, as the daemon is between requests
            # at one in flight: other processes run meanwhile and the CPU's caches go cold.
            idle = math.inf
            for k in range(max(1, rounds)):
                spent = 0.0
                for data in requests[hot + k * 1000:hot + (k + 1) * 1000]:
                    time.sleep(0.0001)
                    started = time.process_time()
                    for _ in da.handle_batch([(data, ("127.0.0.1", 40000))], "udp", 1002.0):
                        pass
                    spent += time.process_time() - started
                idle = min(idle, spent)
            print(f"{'in process':>12} {services:>8} {mode:>8} CPU per request: {best / 5000 * 1e6:.1f} µs, "
                  f"{idle / 1000 * 1e6:.1f} µs after 0.1 ms asleep", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each point")
    parser.add_argument("--slpd", help="an OpenSLP slpd binary to measure side by side")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each point; the median is shown")
    parser.add_argument("--floor", action="store_true",
                        help="also measure a bare Python recvfrom/sendto echo loop: the floor")
    parser.add_argument("--in-process", action="store_true",
                        help="only the CPU time of the DA's code per uncached request, no sockets")
    parser.add_argument("--load", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--echo", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        echo(int(args.echo[0]), float(args.echo[1]))
        return
    if args.in_process:
        in_process(args.rounds)
        return
    if args.load:
        port, in_flight, rooms, seconds, mode = args.load
        print(json.dumps(load(int(port), int(in_flight), int(rooms), float(seconds), mode)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        config = '[limits]\nrate = 0\nmax_registrations = 10000\n[log]\nlevel = "warning"\n'
        daemon = Slpda(Path(tmp), config)
        daemon.start()
        slpd = OpenSlpd(Path(tmp), args.slpd) if args.slpd else None
        try:
            print(f"sipmob-slpda pid {daemon.pid} on 127.0.0.1:{daemon.port}, {args.seconds:g} s per point")
            if slpd is not None:
                slpd.start()
                print(f"OpenSLP slpd pid {slpd.proc.pid} on 127.0.0.1:{slpd.port}")
            print(f"{'DA':>12} {'services':>8} {'mode':>8} {'in flight':>9} {'replies/s':>10} "
                  f"{'range':>13} {'p50 µs':>8} {'p99 µs':>8} {'lost':>5} {'errors':>6} {'CPU µs':>6} "
                  f"{'x slpd':>7}")
            pids = {"sipmob-slpda": daemon.pid} | ({"slpd": slpd.proc.pid} if slpd is not None else {})
            das = [("sipmob-slpda", daemon.port)] + ([("slpd", slpd.port)] if slpd is not None else [])
            registered = 0
            for services in (50, 1000):
                for _, port in das:
                    with Client(port) as client:
                        register(client, registered, services - registered)
                        check = client.udp(client.srv_rqst(predicate="(room=room3)"))
                        assert isinstance(check, SrvRply) and len(check.urls) == 10, check
                registered = services
                for mode in PREDICATES:
                    for in_flight in (1, 16):
                        runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in das}
                        for _ in range(max(1, args.rounds)):
                            for name, port in das:
                                before = cpu_seconds(pids[name])
                                run = run_point(port, in_flight, services // 10, args.seconds, mode)
                                # The DA's own CPU time (user + system, from /proc) per reply: what a
                                # request costs the daemon with its sockets and its event loop.
                                run["cpu_us"] = ((cpu_seconds(pids[name]) - before) * 1e6
                                                 / max(1, run["replies"]))
                                runs[name].append(run)
                        medians = {name: median(rs) for name, rs in runs.items()}
                        for name, _ in das:
                            r, rates = medians[name], [x["rate"] for x in runs[name]]
                            ratio = (f"{r['rate'] / medians['slpd']['rate']:>7.2f}"
                                     if "slpd" in medians and name != "slpd" else "")
                            print(f"{name:>12} {services:>8} {mode:>8} {in_flight:>9} {r['rate']:>10.0f} "
                                  f"{f'{min(rates):.0f}-{max(rates):.0f}':>13} {r['p50_us']:>8.0f} "
                                  f"{r['p99_us']:>8.0f} {r['lost']:>5.0f} {r['errors']:>6.0f} "
                                  f"{r['cpu_us']:>6.1f} {ratio}",
                                  flush=True)
            if args.floor:
                floor(args.seconds, args.rounds)
            print(f"daemon VmRSS: {rss_mb(daemon.pid):.1f} MB")
            before = cpu_seconds(daemon.pid)
            time.sleep(5)
            print(f"daemon CPU time over 5 s idle: {cpu_seconds(daemon.pid) - before:.2f} s")
        finally:
            daemon.stop()
            if slpd is not None:
                slpd.stop()


if __name__ == "__main__":
    main()
