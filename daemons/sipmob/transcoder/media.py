"""The transcoder's media seen from the main process: port pairs, media workers, one `CallMedia` per call.

`PortPool` hands out even RTP ports with RTCP on the next one (RFC 3550 §11) from the configured
range, binding both before saying yes, on ``[rtp] address`` or on the address a controller names
for one side (``a=x-bind``: a call's egress on a multihomed gateway). `CallMedia.rebind` moves one
side to new sockets on another address (the egress failed): the worker swaps that side's sockets
and keeps the call, its channels and the other side as they are.

The main process binds them (so the SDP answer is written at once, with no round trip to a
worker) and hands the four sockets of a call to a worker (`sipmob.transcoder.worker`) with
SCM_RIGHTS; it then closes its own copies, so the worker alone reads and writes them.
`CallMedia.opened` fires when the worker says the sockets are in its epoll set: the app sends the
200 only then (a party starts sending once it has the answer), 503 if that does not come in time.

`Workers` starts the worker processes (``python -m sipmob.transcoder.worker``, the control socket
inherited), gives each new call to the one with the fewest channels (so one core's load stays
within its share of ``[capacity] channels``), hears "idle" from them, restarts one that dies
(its calls are ended: their sockets died with it), and stops them by closing their control sockets.

A datagram on A's RTP port is taken only from A's declared address (the controller said where A
is; anything else is a stranger and is counted and dropped), converted, and sent from B's port to
B, so each party sees one symmetric peer. RTCP per side is the worker's: each leg is its own RTP
session, as in RFC 3550 §7.2 for a translator that changes the encoding.

Not here: SIP and SDP (`sipmob.transcoder.app`, `sipmob.transcoder.invocation`), the packets.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReadDescriptor
from zope.interface import implementer

from sipmob.media.audioformat import AudioFormat

log = logging.getLogger("sipmob.transcoder")

Address = tuple[str, int]
STOP_WAIT = 3.0  # seconds a worker has to end its calls once told to stop


class PortPool:
    """Even RTP ports with RTCP on port + 1, from ``[low, high]``, bound on `address`."""

    def __init__(self, address: str, low: int, high: int) -> None:
        self.address = address
        self.family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.low = low + (low & 1)
        self.high = high
        self._used: set[int] = set()
        self._next = self.low

    def _bound(self, port: int, address: str) -> socket.socket | None:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((address, port))
        except OSError:
            sock.close()
            return None
        return sock

    def bind(self, address: str | None = None) -> tuple[int, socket.socket, socket.socket]:
        """(port, RTP socket, RTCP socket) on `address` (default the pool's); OSError when the
        range is exhausted, or when `address` is none of this host's."""
        address = address or self.address
        if address != self.address:
            # an address we do not have fails every port alike: say so at once, not after the range
            with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((address, 0))
        span = (self.high - self.low + 1) // 2
        for _ in range(span):
            port = self._next
            self._next = port + 2 if port + 3 <= self.high else self.low
            if port in self._used:
                continue
            rtp = self._bound(port, address)
            if rtp is None:
                continue
            rtcp = self._bound(port + 1, address)
            if rtcp is None:
                rtp.close()
                continue
            self._used.add(port)
            return port, rtp, rtcp
        raise OSError(f"no free RTP port pair in {self.low}-{self.high}")

    def release(self, port: int) -> None:
        self._used.discard(port)

    @property
    def in_use(self) -> int:
        return len(self._used)


@implementer(IReadDescriptor)
class WorkerProcess:
    """One worker: its process, the main side of its control socket, the calls it holds."""

    def __init__(self, index: int, reactor: Any, log_level: str,
                 on_message: Callable[[WorkerProcess, tuple[Any, ...]], None],
                 on_lost: Callable[[WorkerProcess], None], gather: float | None = None) -> None:
        self.index = index
        self.reactor = reactor
        self.calls: set[int] = set()
        self._on_message = on_message
        self._on_lost = on_lost
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Large enough for any burst of commands (a control message is a few hundred octets).
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        command = [sys.executable, "-m", "sipmob.transcoder.worker", "--fd", str(theirs.fileno()),
                   "--index", str(index), "--log-level", log_level]
        if gather is not None:
            command += ["--gather-ms", str(gather * 1000)]
        self.proc = subprocess.Popen(command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        ours.setblocking(False)
        self.sock: socket.socket | None = ours
        self.pid = self.proc.pid
        reactor.addReader(self)

    @property
    def alive(self) -> bool:
        return self.sock is not None

    def send(self, message: tuple[Any, ...], socks: list[socket.socket] | None = None) -> bool:
        if self.sock is None:
            return False
        try:
            if socks:
                socket.send_fds(self.sock, [pickle.dumps(message)], [s.fileno() for s in socks])
            else:
                self.sock.send(pickle.dumps(message))
        except OSError as exc:
            log.error("worker %d (pid %d) unreachable: %s", self.index, self.pid, exc)
            self.connectionLost(None)
            return False
        return True

    # IReadDescriptor
    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return f"worker-{self.index}"

    def doRead(self) -> None:
        assert self.sock is not None
        for _ in range(64):
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.connectionLost(None)
                return
            try:
                message = pickle.loads(data)
            except Exception:
                log.error("worker %d sent an unreadable message", self.index)
                continue
            self._on_message(self, message)

    def connectionLost(self, reason: Any) -> None:
        if self.sock is None:
            return
        self.reactor.removeReader(self)
        self.sock.close()
        self.sock = None
        self._on_lost(self)

    def stop(self) -> None:
        """Close the control socket: the worker ends its calls (RTCP BYE) and exits."""
        if self.sock is not None:
            self.reactor.removeReader(self)
            self.sock.close()
            self.sock = None

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("worker %d (pid %d) did not stop in %.0f s: killed", self.index, self.pid, timeout)
            self.proc.kill()
            self.proc.wait(5)


def default_workers() -> int:
    """One worker per core this process may run on (taskset and cpusets count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Workers:
    """The worker processes and which calls each holds."""

    def __init__(self, reactor: Any, count: int, log_level: str, on_idle: Callable[[int], None],
                 on_calls_lost: Callable[[list[int]], None],
                 on_digit: Callable[[int, str, str, int], None] | None = None,
                 gather: float | None = None) -> None:
        self.reactor = reactor
        self._on_digit = on_digit
        self.gather = gather  # seconds, or None for the worker's default
        self.count = count
        self.log_level = log_level
        self._on_idle = on_idle
        self._on_calls_lost = on_calls_lost
        self.processes: list[WorkerProcess] = []
        self.stopping = False
        self._ready: dict[int, defer.Deferred[None]] = {}
        # Calls handed to a worker that has not yet said "opened": (its pid, fired then).
        self._opening: dict[int, tuple[int, defer.Deferred[None]]] = {}

    def opening(self, number: int, worker: WorkerProcess) -> defer.Deferred[None]:
        """Fires once `worker` has call `number`'s sockets watched; errback if the worker dies first."""
        d: defer.Deferred[None] = defer.Deferred(lambda _: self._opening.pop(number, None))
        self._opening[number] = (worker.pid, d)
        return d

    def start(self) -> defer.Deferred[Any]:
        """Start them; fires once each has loaded its codecs and entered its loop."""
        self.processes = [self._spawn(i) for i in range(self.count)]
        return defer.gatherResults([self._ready[w.pid] for w in self.processes], consumeErrors=True)

    def _spawn(self, index: int) -> WorkerProcess:
        worker = WorkerProcess(index, self.reactor, self.log_level, self._message, self._lost, self.gather)
        self._ready[worker.pid] = defer.Deferred()
        return worker

    def _message(self, worker: WorkerProcess, message: tuple[Any, ...]) -> None:
        if message and message[0] == "idle":
            self._on_idle(int(message[1]))
        elif message and message[0] == "dtmf" and self._on_digit is not None and len(message) == 5:
            _, number, side, digit, duration_ms = message
            self._on_digit(int(number), str(side), str(digit), int(duration_ms))
        elif message and message[0] == "opened" and len(message) == 2:
            pending = self._opening.pop(int(message[1]), None)
            if pending is not None and pending[0] == worker.pid:
                pending[1].callback(None)
        elif message and message[0] == "ready":
            ready = self._ready.pop(worker.pid, None)
            if ready is not None:
                ready.callback(None)

    def _lost(self, worker: WorkerProcess) -> None:
        for number, (pid, d) in list(self._opening.items()):
            if pid == worker.pid:
                del self._opening[number]
                d.errback(OSError(f"media worker {worker.index} died"))
        ready = self._ready.pop(worker.pid, None)
        calls = sorted(worker.calls)
        worker.calls.clear()
        if ready is not None:
            # It never started (a broken installation): starting another would fail the same way.
            log.error("media worker %d (pid %d) exited while starting", worker.index, worker.pid)
            self.reactor.callLater(0, worker.wait, 5.0)
            ready.errback(RuntimeError(f"media worker {worker.index} exited while starting"))
            if calls:
                self._on_calls_lost(calls)
            return
        if self.stopping:
            return
        log.error("worker %d (pid %d) is gone with %d call(s); starting another", worker.index, worker.pid,
                  len(calls))
        self.reactor.callLater(0, worker.wait, 5.0)
        self.processes[worker.index] = self._spawn(worker.index)
        if calls:
            self._on_calls_lost(calls)

    def least_loaded(self) -> WorkerProcess | None:
        alive = [w for w in self.processes if w.alive]
        return min(alive, key=lambda w: len(w.calls)) if alive else None

    def stop(self) -> None:
        self.stopping = True
        for _, d in list(self._opening.values()):  # never to be opened: their INVITEs get 503 now
            d.cancel()
        for worker in self.processes:
            worker.stop()

    def wait(self, timeout: float = STOP_WAIT) -> None:
        for worker in self.processes:
            worker.wait(timeout)


class CallMedia:
    """One call's media as the main process knows it: its two ports and the worker holding it."""

    def __init__(self, number: int, workers: Workers, pool: PortPool, cname: str, format_a: AudioFormat,
                 format_b: AudioFormat, destination_a: Address | None, destination_b: Address | None,
                 idle_timeout: float, bind_a: str | None = None, bind_b: str | None = None) -> None:
        self.number = number
        self.pool = pool
        worker = workers.least_loaded()
        if worker is None:
            raise OSError("no media worker running")
        self.worker = worker
        self.address_a, self.address_b = bind_a or pool.address, bind_b or pool.address
        port_a, rtp_a, rtcp_a = pool.bind(self.address_a)
        try:
            port_b, rtp_b, rtcp_b = pool.bind(self.address_b)
        except OSError:
            rtp_a.close()
            rtcp_a.close()
            pool.release(port_a)
            raise
        self.port_a, self.port_b = port_a, port_b
        socks = [rtp_a, rtcp_a, rtp_b, rtcp_b]
        try:
            sent = self.worker.send(("open", number, format_a, format_b, destination_a, destination_b, cname,
                                     idle_timeout), socks)
        finally:
            for s in socks:  # the worker has its own copies now
                s.close()
        if not sent:
            pool.release(port_a)
            pool.release(port_b)
            raise OSError(f"worker {self.worker.index} unreachable")
        self.worker.calls.add(number)
        self.closed = False
        self.opened = workers.opening(number, self.worker)

    def update(self, format_a: AudioFormat, format_b: AudioFormat, destination_a: Address | None,
               destination_b: Address | None) -> None:
        """A re-INVITE's plan: new destinations and, if they changed, formats (streams carry on)."""
        self.worker.send(("update", self.number, format_a, format_b, destination_a, destination_b))

    def rebind(self, side: str, address: str) -> int:
        """Side ``A`` or ``B`` on new sockets at `address` (its egress failed or readdressed): the
        new port; OSError when nothing can be bound there (the side stays where it was)."""
        port, rtp, rtcp = self.pool.bind(address)
        try:
            sent = self.worker.send(("rebind", self.number, side), [rtp, rtcp])
        finally:
            rtp.close()
            rtcp.close()
        if not sent:
            self.pool.release(port)
            raise OSError(f"worker {self.worker.index} unreachable")
        if side == "A":
            self.pool.release(self.port_a)
            self.port_a, self.address_a = port, address
        else:
            self.pool.release(self.port_b)
            self.port_b, self.address_b = port, address
        return port

    def latch(self, side: str, home: list[str]) -> None:
        """Side ``A`` or ``B`` faces the outside: take its first packet's source as where it is
        (symmetric RTP through a NAT; `sipmob.transcoder.worker`), never an address in `home`."""
        self.worker.send(("latch", self.number, side, home))

    def dtmf(self, side: str, digit: str, duration_ms: int) -> None:
        """Party ``side`` sent ``digit`` as SIP INFO: the worker plays it as events to the other side."""
        if not self.closed:
            self.worker.send(("dtmf", self.number, side, digit, duration_ms))

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.number in self.worker.calls:
            self.worker.calls.discard(self.number)
            self.worker.send(("close", self.number, reason))
        self.pool.release(self.port_a)
        self.pool.release(self.port_b)
