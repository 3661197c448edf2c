"""A media worker of `sipmob-transcoder`: one single-threaded process, its calls' sockets, a bare epoll loop.

Responsible for: the RTP and RTCP of the calls the main process hands it (their sockets arrive
over the control socket with SCM_RIGHTS, already bound), converting or relaying each packet
(`sipmob.media.transcode.Channel`), RTCP per side, noticing a call with no RTP, and ending calls.

Why a loop of its own rather than Twisted's reactor: with the codecs called directly, what is left
per packet is the loop. Measured on the build machine (``tests/bench/bench_transcoder_loop.py``):
a G.711 relay cost 63 us a packet in the reactor (its wake-up per socket, ``callWithLogger``,
``datagramReceived``), of which the relay itself was 2 us. Here one ``epoll.poll`` hands back every
ready socket, each gives one datagram per round (so one busy call cannot starve the others), a
relayed packet is read into one preallocated buffer, its header rewritten in place and sent from
that buffer, and nothing is logged or built per packet beyond what the codec needs. Once packets
come often, rounds are paced (``[media] gather_ms``, `Worker.run` says why): a wake-up costs ten
times the relay of a packet.

The control socket (``AF_UNIX``/``SOCK_SEQPACKET``, one message per datagram, pickled tuples
between two processes of the same program) carries:

- main to worker: ``("open", number, format_a, format_b, dest_a, dest_b, cname, idle_timeout)``
  with the four sockets (A's RTP and RTCP, B's), ``("update", number, format_a, format_b, dest_a,
  dest_b)``, ``("rebind", number, side)`` with one side's two new sockets (its old ones are
  closed: the side moved to another address), ``("latch", number, side, home)`` (symmetric RTP
  for that side until its first packet, below), ``("close", number, reason)``, ``("dtmf", number,
  side, digit, duration_ms)`` (a digit party ``side`` sent as SIP INFO: played as RFC 4733 events to
  the other side);
- worker to main: ``("ready", index)`` once its codecs are loaded, ``("opened", number)`` once a
  call's four sockets are in its epoll set (the 200 waits for it), ``("idle", number)`` once a
  call has had no RTP from either side for its ``idle_timeout``, ``("dtmf", number, side, digit,
  duration_ms)`` (a digit party ``side`` sent as events that the other side cannot take).

Digits each way are bounded per call (`DIGIT_RATE`, `DIGIT_BURST`, `MAX_QUEUED_DIGITS`): what is
over is dropped and counted in the call's figures, so a party flooding events or INFO costs this
loop a bounded amount of work. A generated digit is paced by the timers of this loop (`Tones`):
a start packet, an update every ptime, three end packets, all with the timestamp where the
output stream stood when it began, numbered in the output stream's sequence.

Symmetric RTP (a party behind a NAT sends from another address or port than its description
gives, and hears us only there): a side the controller marks as facing the outside (``a=x-bind``)
is armed after the offer/answer, each re-INVITE and each move (the "latch" command). While armed,
for `LATCH_WINDOW` seconds, the first RTP packet from a plausible source sets where that side is
(address and port) and disarms it: one latch per arming, logged. Plausible: from the described
address (its port may differ), or from any other address that is not loopback, link-local,
multicast, unspecified, nor in `home` (the networks the controllers are in, ``[access]
allowed_networks``): the home's devices can never take a party's media. A stranger outside the
window, or once latched, is counted and dropped as before; like rtpengine's latching, an outsider
that beats the party to its first packet inside the window wins it, which only the controller's
next re-INVITE undoes. After an RTP latch, the party's first RTCP packet (from the latched address)
sets where our RTCP goes: a NAT maps the RTCP port apart, so the RTP port + 1 would not reach it.

The end of a call (its figures) is logged here, where they are. When the control socket closes
(the main process stopping or gone) the worker ends every call, with an RTCP BYE on each side, and
exits: it ignores SIGTERM and SIGINT so that the main process decides the order of a stop.

Not here: SIP, admission and choosing a worker (`sipmob.transcoder.app`), the port range
(`sipmob.transcoder.media`).
"""

from __future__ import annotations

import argparse
import functools
import gc
import heapq
import ipaddress
import logging
import pickle
import random
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from sipmob.media import dtmf
from sipmob.media.audioformat import AudioFormat
from sipmob.media.rtcp import RtcpParseError, RtcpSession, SenderInfo
from sipmob.media.rtp import SourceStats
from sipmob.media.transcode import Channel

log = logging.getLogger("sipmob.transcoder")

BATCH = 64  # datagrams read from one socket per wake-up before the next socket's turn
RECV_SIZE = 2048  # larger than any RTP packet on an Ethernet path
IDLE_CHECK = 5.0
GATHER = 0.004  # seconds packets may gather between rounds once they come that often (see run)
MAX_FDS = 4
LATCH_WINDOW = 10.0  # seconds after an arming in which a side's first packet may latch it
DIGIT_RATE = 8.0  # digits a second per call, both ways together (a person dials under 10)
DIGIT_BURST = 16
MAX_QUEUED_DIGITS = 16  # digits waiting to be played to one side
DIGIT_GAP = 0.05  # seconds between two generated digits (ITU-T Q.24: at least 40 ms)
_HEADER = struct.Struct("!BBHII")
_unpack_header = _HEADER.unpack_from
Address = tuple[str, int]


class Leg:
    """One party's side: its two sockets, where it is, what it sends us, RTCP about both."""

    def __init__(self, call: Call, name: str, rtp: socket.socket, rtcp: socket.socket, cname: str) -> None:
        self.call = call
        self.name = name
        rtp.setblocking(False)
        rtcp.setblocking(False)
        self.rtp = rtp
        self.rtcp = rtcp
        self.port = rtp.getsockname()[1]
        self.destination: Address | None = None
        self.host: str | None = None
        self.stats: SourceStats | None = None
        self.strangers = 0
        self.send_errors = 0
        self.last_heard = 0.0
        self.rtcp_session: RtcpSession | None = None
        self._cname = cname
        self.out: Channel | None = None  # the channel whose output goes to this side
        self.into: Channel | None = None  # the channel this side's packets feed
        self.peer: Leg = self  # set to the other side by `Call`
        # The receive buffer, which the worker shares between its legs: a datagram is done with
        # (sent, or converted into new bytes) before the next is read.
        self.buf = bytearray(RECV_SIZE)
        self.view = memoryview(self.buf)
        self._recvfrom_into = rtp.recvfrom_into
        self._sendto = rtp.sendto
        self.latch_until = 0.0  # while armed: time.monotonic() the window closes; 0.0: not armed
        self.described: Address | None = None  # where the controller last said the party is
        self.rtcp_to: Address | None = None  # RTCP's own latched source (a NAT maps it apart)
        self.rtcp_armed = False  # after an RTP latch, until the party's first RTCP
        self.latch_home: list[Any] = []

    def set_destination(self, destination: Address | None) -> None:
        self.destination = destination
        self.host = destination[0] if destination else None

    def describe(self, destination: Address | None) -> None:
        """The controller's word on where the party is: a latched side stays latched while it is
        unchanged (a re-INVITE about something else must not send our RTP to a private address)."""
        if destination != self.described or self.destination is None:
            self.described = destination
            self.set_destination(destination)
            self.rtcp_to, self.rtcp_armed = None, False

    def rtp_ready(self, now: float) -> None:
        """Read one datagram from the RTP socket and send what it becomes (`now`: the wake-up's time).

        One, not until the socket is empty: epoll is level-triggered, so a socket with more waiting
        is ready again in the next round, and the read that would only say "empty" (a system call
        and a Python exception, ~4 us) is saved on every packet. This method is what the loop calls
        for the socket (no wrapper), the header is unpacked once for the statistics and the relay,
        and the time is the wake-up's: a round lasts microseconds, a timestamp unit 21-125 of them.
        """
        buf = self.buf
        try:
            size, addr = self._recvfrom_into(buf)
        except OSError:  # nothing after all (EAGAIN, EINTR), or an ICMP error queued
            return
        if (addr[0] != self.host or self.latch_until) and not self.latch(addr):
            return
        self.last_heard = now
        channel = self.into
        assert channel is not None
        if size >= 12:
            first, second, seq, ts, ssrc = _unpack_header(buf)
            stats = self.stats
            if stats is None or stats.ssrc != ssrc:
                stats = self.stats = SourceStats(ssrc, channel.source.clock_rate)
            stats.receive_header(second & 0x7F, seq, ts, now)
            if channel.relay:
                if channel.relay_header(buf, size, first, second, seq, ts, ssrc):
                    peer = self.peer
                    target = peer.destination
                    if target is not None:
                        try:
                            peer._sendto(self.view[:size], target)
                        except OSError:  # ICMP unreachable from an earlier send, a full buffer: drop it
                            peer.send_errors += 1
                return
        elif channel.relay:
            channel.stats.bad += 1
            return
        packets = channel.receive(bytes(self.view[:size]))
        peer = self.peer
        target = peer.destination
        if target is None:
            return
        sendto = peer._sendto
        for packet in packets:
            try:
                sendto(packet, target)
            except OSError:
                peer.send_errors += 1

    def arm_latch(self, home: list[str]) -> None:
        self.latch_until = time.monotonic() + LATCH_WINDOW
        self.latch_home = [ipaddress.ip_network(n, strict=False) for n in home]

    def latch(self, addr: Address) -> bool:
        """A packet from `addr` while armed, or from elsewhere than the party: whether to take it
        (latching this side to `addr` if it is plausibly the party), else it is a stranger's."""
        if self.latch_until:
            if time.monotonic() > self.latch_until:
                self.latch_until = 0.0
            elif addr[0] == self.host or self._plausible(addr[0]):
                self.latch_until = 0.0
                if (addr[0], addr[1]) != self.destination:
                    log.info("call %d side %s: latched to %s:%d (symmetric RTP; described as %s)",
                             self.call.number, self.name, addr[0], addr[1], self.destination)
                    self.set_destination((addr[0], addr[1]))
                    self.rtcp_to, self.rtcp_armed = None, True
                return True
        if addr[0] == self.host:
            return True
        self.strangers += 1
        return False

    def _plausible(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
            return False
        return not any(ip in n for n in self.latch_home if n.version == ip.version)

    def rtcp_ready(self, now: float) -> None:
        for _ in range(BATCH):
            try:
                data, addr = self.rtcp.recvfrom(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            if addr[0] != self.host or self.rtcp_session is None:
                self.strangers += 1
                continue
            if self.rtcp_armed:  # the latched party's first RTCP: where its NAT maps RTCP
                self.rtcp_to, self.rtcp_armed = (addr[0], addr[1]), False
            try:
                self.rtcp_session.receive(data, time.time())
            except RtcpParseError as exc:
                log.debug("dropped malformed RTCP from %s:%d: %s", addr[0], addr[1], exc)

    def start_rtcp(self) -> None:
        assert self.out is not None
        if self.rtcp_session is None or self.rtcp_session.ssrc != self.out.ssrc:
            self.rtcp_session = RtcpSession(self.out.ssrc, self._cname)

    def rtcp_report(self, bye: bool = False) -> None:
        """Send our SR/RR for this side (and BYE at the end), if we know where the side is."""
        if self.destination is None or self.rtcp_session is None or self.out is None:
            return
        out = self.out
        sender = None
        if out.stats.sent:
            sender = SenderInfo(out.out_ts, out.stats.sent, out.stats.octets)
        sources = [self.stats] if self.stats is not None else []
        now = time.time()
        data = self.rtcp_session.bye(now, sender, sources) if bye else \
            self.rtcp_session.report(now, sender, sources)
        try:
            self.rtcp.sendto(data, self.rtcp_to or (self.destination[0], self.destination[1] + 1))
        except OSError as exc:
            log.debug("RTCP to %s not sent: %s", self.destination, exc)

    def close(self) -> None:
        self.rtp.close()
        self.rtcp.close()

    def replace_sockets(self, rtp: socket.socket, rtcp: socket.socket) -> None:
        """New sockets on another address (the controller moved this side); the caller rewatches."""
        self.close()
        rtp.setblocking(False)
        rtcp.setblocking(False)
        self.rtp, self.rtcp = rtp, rtcp
        self._recvfrom_into = rtp.recvfrom_into
        self._sendto = rtp.sendto
        self.port = rtp.getsockname()[1]


class Call:
    """The media of one call in this worker: two legs, two channels, its RTCP due time."""

    def __init__(self, number: int, socks: list[socket.socket], format_a: AudioFormat, format_b: AudioFormat,
                 cname: str, idle_timeout: float) -> None:
        self.number = number
        self.a = Leg(self, "A", socks[0], socks[1], cname)
        self.b = Leg(self, "B", socks[2], socks[3], cname)
        self.a.peer, self.b.peer = self.b, self.a
        self.a_to_b = Channel(format_a, format_b)
        self.b_to_a = Channel(format_b, format_a)
        self.a.into, self.a.out = self.a_to_b, self.b_to_a
        self.b.into, self.b.out = self.b_to_a, self.a_to_b
        self.a.start_rtcp()
        self.b.start_rtcp()
        self.started = time.monotonic()
        self.tones = {"A": Tones(self.a_to_b), "B": Tones(self.b_to_a)}  # digits from A, played to B
        self.digit_bucket = dtmf.TokenBucket(DIGIT_RATE, DIGIT_BURST)
        self.digits_dropped = 0
        self.idle_timeout = idle_timeout
        self.idle_said = False
        self.rtcp_due = self.started + self.interval()

    def interval(self) -> float:
        assert self.a.rtcp_session is not None
        return self.a.rtcp_session.interval(random.random())

    def update(self, format_a: AudioFormat, format_b: AudioFormat) -> None:
        if (self.a_to_b.source, self.a_to_b.sink) != (format_a, format_b):
            self.a_to_b.set_formats(format_a, format_b)
            self.b_to_a.set_formats(format_b, format_a)

    def last_activity(self) -> float:
        return max(self.started, self.a.last_heard, self.b.last_heard)

    def figures(self) -> str:
        def one(channel: Channel, leg: Leg) -> str:
            s = channel.stats
            return (f"{s.received} in {s.sent} out {s.concealed} concealed {s.late} late {s.duplicates} "
                    f"duplicate {s.bad} bad {leg.strangers} from strangers "
                    f"{leg.peer.send_errors if leg.peer else 0} "
                    f"unsent, longest gap in {(leg.stats.max_gap if leg.stats else 0.0) * 1000:.0f} ms")

        dropped = f"; {self.digits_dropped} digits dropped (over the rate)" if self.digits_dropped else ""
        return f"A->B {one(self.a_to_b, self.a)}; B->A {one(self.b_to_a, self.b)}{dropped}"


class Tones:
    """The digits waiting to be played as RFC 4733 events into one channel's output, and the one
    playing (its packet schedule, `sipmob.media.dtmf.event_schedule`, and where it started)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.queue: list[dtmf.Digit] = []
        self.schedule: list[dtmf.EventPacket] = []
        self.index = 0
        self.started = 0.0
        self.base_ts = 0
        self.after_ts: int | None = None  # the end of the last digit played (and a gap)
        self.due = 0.0  # when the next packet (or the next digit) is due; 0: idle

    def add(self, digit: dtmf.Digit, now: float) -> bool:
        if len(self.queue) >= MAX_QUEUED_DIGITS:
            return False
        self.queue.append(digit)
        if not self.due:
            self.due = now
        return True

    def step(self, now: float) -> bytes | None:
        """The packet due now (None when a digit is only starting or all are played)."""
        if self.index >= len(self.schedule):
            if not self.queue:
                self.due = 0.0
                return None
            digit = self.queue.pop(0)
            sink = self.channel.sink
            self.schedule = dtmf.event_schedule(digit.digit, clock_rate=sink.dtmf_clock_rate,
                                                duration=digit.duration_ms / 1000,
                                                interval=max(20, sink.ptime_ms) / 1000, gap=0.0)
            self.index = 0
            self.started = now
            # Where our output stream stands: the event starts now; but never at or before the
            # last one's end, which with no audio flowing meanwhile is still ahead of out_ts (the
            # same timestamp would make it the same event to the receiver).
            self.base_ts = self.channel.out_ts
            if self.after_ts is not None and (self.after_ts - self.base_ts) % (1 << 32) < (1 << 31):
                self.base_ts = self.after_ts
            length = int.from_bytes(self.schedule[-1].payload[2:4], "big")
            self.after_ts = (self.base_ts + length + round(DIGIT_GAP * sink.clock_rate)) % (1 << 32)
        packet = self.schedule[self.index]
        self.index += 1
        data = self.channel.event_packet(packet.payload, (self.base_ts + packet.timestamp_offset) % (1 << 32),
                                         packet.marker)
        if self.index < len(self.schedule):
            self.due = self.started + self.schedule[self.index].at
        else:
            self.due = now + DIGIT_GAP
        return data


class Worker:
    """The loop: the control socket and every call's four sockets in one epoll set."""

    def __init__(self, control: socket.socket, index: int = 0, gather: float = GATHER) -> None:
        self.control = control
        self.gather = gather
        self.clock: Callable[[], float] = time.monotonic
        self.sleep: Callable[[float], None] = time.sleep
        self.index = index
        control.setblocking(False)
        self.poller = select.epoll()
        self.handlers: dict[int, Callable[[float], None]] = {}
        self.calls: dict[int, Call] = {}
        self._rtcp_heap: list[tuple[float, int]] = []
        self._next_idle_check = time.monotonic() + IDLE_CHECK
        self._tone_heap: list[tuple[float, int, str]] = []  # (due, call, side whose digits play)
        self._due = self._next_idle_check  # the earliest of the RTCP heap's head and the idle check
        self._buf = bytearray(RECV_SIZE)
        self._view = memoryview(self._buf)
        self.running = True
        self._watch(control.fileno(), self._control_ready)

    def _watch(self, fd: int, handler: Callable[[float], None]) -> None:
        self.handlers[fd] = handler
        self.poller.register(fd, select.EPOLLIN)

    def _unwatch(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            self.poller.unregister(fd)

    # Control ------------------------------------------------------------------------------------

    def _control_ready(self, now: float) -> None:
        for _ in range(BATCH):
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.control, 65536, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    socket.close(fd)
                self.running = False
                return
            socks = [socket.socket(fileno=fd) for fd in fds]
            try:
                self._command(pickle.loads(data), socks)
            except Exception:
                log.exception("worker %d: command not carried out", self.index)
                for s in socks:
                    s.close()

    def _command(self, message: tuple[Any, ...], socks: list[socket.socket]) -> None:
        kind, number = message[0], message[1]
        if kind == "open":
            _, _, format_a, format_b, dest_a, dest_b, cname, idle_timeout = message
            if len(socks) != 4:
                raise ValueError(f"open with {len(socks)} sockets")
            call = Call(number, socks, format_a, format_b, cname, idle_timeout)
            call.a.describe(dest_a)
            call.b.describe(dest_b)
            self.calls[number] = call
            for leg in (call.a, call.b):
                leg.buf, leg.view = self._buf, self._view
                self._watch(leg.rtp.fileno(), leg.rtp_ready)
                self._watch(leg.rtcp.fileno(), leg.rtcp_ready)
            heapq.heappush(self._rtcp_heap, (call.rtcp_due, number))
            call.a_to_b.on_digit = functools.partial(self._heard, call, "A")
            call.b_to_a.on_digit = functools.partial(self._heard, call, "B")
            self._timer_added(call.rtcp_due)
            # The main process answers the INVITE only now: a party sends once it has the 200, and
            # its first packets must find the sockets watched, not wait for a round that comes late.
            self.tell(("opened", number))
        elif kind == "update":
            _, _, format_a, format_b, dest_a, dest_b = message
            call = self.calls[number]
            call.a.describe(dest_a)
            call.b.describe(dest_b)
            call.update(format_a, format_b)
        elif kind == "rebind":
            if len(socks) != 2:
                raise ValueError(f"rebind with {len(socks)} sockets")
            call = self.calls[number]
            leg = call.a if message[2] == "A" else call.b
            self._unwatch(leg.rtp.fileno())
            self._unwatch(leg.rtcp.fileno())
            leg.replace_sockets(socks[0], socks[1])
            self._watch(leg.rtp.fileno(), leg.rtp_ready)
            self._watch(leg.rtcp.fileno(), leg.rtcp_ready)
        elif kind == "latch":
            call = self.calls[number]
            (call.a if message[2] == "A" else call.b).arm_latch(message[3])
        elif kind == "close":
            self.end(number, message[2])
        elif kind == "dtmf":
            self._play(number, message[2], dtmf.Digit(message[3], message[4]))
        else:
            raise ValueError(f"unknown command {kind!r}")

    def tell(self, message: tuple[Any, ...]) -> None:
        try:
            self.control.send(pickle.dumps(message))
        except OSError as exc:
            log.debug("worker %d: main process not told %r: %s", self.index, message, exc)

    # Calls --------------------------------------------------------------------------------------

    def end(self, number: int, reason: str) -> None:
        call = self.calls.pop(number, None)
        if call is None:
            return
        for leg in (call.a, call.b):
            leg.rtcp_report(bye=True)
            self._unwatch(leg.rtp.fileno())
            self._unwatch(leg.rtcp.fileno())
            leg.close()
        log.info("call %d ended (%s): %s", number, reason, call.figures())

    # Digits -------------------------------------------------------------------------------------

    def _heard(self, call: Call, side: str, digit: dtmf.Digit) -> None:
        """Party ``side`` sent a digit as events the other side cannot take: main sends it as INFO."""
        if not call.digit_bucket.take(time.monotonic()):
            call.digits_dropped += 1
            return
        self.tell(("dtmf", call.number, side, digit.digit, digit.duration_ms))

    def _play(self, number: int, side: str, digit: dtmf.Digit) -> None:
        """Party ``side`` sent a digit as SIP INFO: play it as events to the other side."""
        call = self.calls.get(number)
        if call is None or side not in call.tones:
            return
        tones = call.tones[side]
        now = time.monotonic()
        idle = not tones.due
        if not tones.channel.can_send_events or not call.digit_bucket.take(now) or not tones.add(digit, now):
            call.digits_dropped += 1
            return
        if idle:
            heapq.heappush(self._tone_heap, (now, number, side))
            self._timer_added(now)

    def _tones_due(self, now: float) -> None:
        heap = self._tone_heap
        while heap and heap[0][0] <= now:
            _, number, side = heapq.heappop(heap)
            call = self.calls.get(number)
            if call is None:
                continue
            tones = call.tones[side]
            data = tones.step(now)
            leg = call.b if side == "A" else call.a
            if data is not None and leg.destination is not None:
                try:
                    leg.rtp.sendto(data, leg.destination)
                except OSError:
                    leg.send_errors += 1
            if tones.due:
                heapq.heappush(heap, (tones.due, number, side))

    def _timers(self, now: float) -> None:
        if self._tone_heap:
            self._tones_due(now)
        heap = self._rtcp_heap
        while heap and heap[0][0] <= now:
            _, number = heapq.heappop(heap)
            call = self.calls.get(number)
            if call is None:
                continue
            call.a.rtcp_report()
            call.b.rtcp_report()
            call.rtcp_due = now + call.interval()
            heapq.heappush(heap, (call.rtcp_due, number))
        if now >= self._next_idle_check:
            self._next_idle_check = now + IDLE_CHECK
            for call in self.calls.values():
                if not call.idle_said and call.last_activity() < now - call.idle_timeout:
                    call.idle_said = True
                    self.tell(("idle", call.number))
        self._due = self._next_timer()

    def _next_timer(self) -> float:
        due = self._next_idle_check
        if self._rtcp_heap and self._rtcp_heap[0][0] < due:
            due = self._rtcp_heap[0][0]
        if self._tone_heap and self._tone_heap[0][0] < due:
            due = self._tone_heap[0][0]
        return due

    def _timer_added(self, due: float) -> None:
        self._due = min(self._due, due)

    # The loop -----------------------------------------------------------------------------------

    def run(self) -> None:
        """Wait for sockets, serve every ready one (a datagram each), run the timers due.

        A wake-up costs far more than the packet it brings. Pinned to one core with 20 relayed
        channels (a packet every millisecond), a worker spent 65-75 us of CPU per packet of which
        ~5 us is the relay itself (recvfrom, header, sendto, hot): the rest is the process being
        woken and its caches refilled, and a leaner Python path did not move it. So once packets
        come within `gather` of each other, the loop stops blocking in epoll between rounds: it
        sleeps until `gather` after the last wake-up, takes whatever arrived (epoll with no wait),
        and blocks again only when a round finds nothing. A packet waits at most `gather` more; a
        round that took longer than `gather` (a loaded worker) does not sleep, nor does one after
        which a socket is still ready (a backlog after a stall), so no capacity is lost to the
        pause; under load rounds batch by themselves. Measured beside rtpengine 10.5 (20 channels,
        both pinned, trials alternated, medians of 5): relay 41 us a packet with 4 ms, 60 with
        none, rtpengine 52 (added latency p50 2.6 ms against 0.2); when the machine's other work
        already batches the wake-ups the three come closer (28, 32, 26). An earlier version slept
        after every wake-up and then blocked: two wake-ups per pause, which cost more than they
        saved. Here the pause replaces the blocking wait.
        """
        poll = self.poller.poll
        handlers = self.handlers
        monotonic = self.clock
        sleep = self.sleep
        gather = self.gather
        gathering = False
        control_fd = self.control.fileno()
        now = monotonic()
        while self.running:
            if now >= self._due:
                self._timers(now)
            if gathering:
                # A socket still ready after its round has a backlog (one datagram a round): serve
                # it now, not a pause later, or a worker behind after a stall would catch up at
                # one packet per socket and `gather`.
                events = poll(0)
                if not events:
                    # Until `gather` after the last wake-up: a round that took that long sleeps not.
                    pause = min(now + gather, self._due) - monotonic()
                    if pause > 0:
                        sleep(pause)
                    events = poll(0)
            else:
                events = poll(max(0.0, min(self._due - now, 1.0)))
            # One clock read per wake-up, handed to every handler of the round.
            woke = monotonic()
            gathering = bool(events) and gather > 0 and (gathering or woke - now < gather)
            now = woke
            if len(events) > 1:
                for fd, _ in events:
                    if fd == control_fd:
                        # Commands first: a re-INVITE's update was sent before its 200, so before
                        # any packet the parties sent once they had the 200, whatever epoll's order.
                        self._control_ready(now)
                        break
            for fd, _ in events:
                handler = handlers.get(fd)
                if handler is not None:
                    handler(now)
        for number in list(self.calls):
            self.end(number, "transcoder stopping")
        self.poller.close()
        self.control.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a media worker of sipmob-transcoder (started by it)")
    parser.add_argument("--fd", type=int, required=True, help="the control socket inherited")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--gather-ms", type=float, default=GATHER * 1000,
                        help="how long packets may gather between rounds once they come that often")
    args = parser.parse_args(argv)
    from sipmob.service.systemd import setup_logging

    setup_logging("sipmob-transcoder", args.log_level)
    # The main process orders the stop (it closes the control socket); a terminal's Ctrl-C or
    # systemd's SIGTERM to the whole group must not end calls before it has said BYE.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from sipmob.media import native

    if not (native.available("OPUS") and native.available("G722")):
        import av  # type: ignore[import-untyped]  # noqa: F401  (the fallback, loaded before the freeze)
    worker = Worker(socket.socket(fileno=args.fd), args.index, args.gather_ms / 1000)
    # What was imported lives as long as the process: out of the collector's sight, a full
    # collection does not stall every channel of this worker.
    gc.collect()
    gc.freeze()
    worker.tell(("ready", worker.index))
    worker.run()


if __name__ == "__main__":
    main()
