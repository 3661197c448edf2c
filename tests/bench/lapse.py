"""What the benchmarks of a moving call share: the CN's media and the SIP that moved it, read back from
a tshark capture on `lo`, and the gaps in that media.

Responsible for: sending one control command and taking its t0 with the capture's clock
(`command`: wall clock, as tshark's frame.time_epoch, kernel timestamps taken on `lo`), reading the
RTP packets and the SIP messages of a capture (`read_rtp`, `sip_messages`), the media ports each SIP
party announced in its SDP (`announced_ports`), gaps and losses in a stream (`longest_gap`, `missing`,
`switch`), which SIP steps lie inside a gap (`steps_within`), packets that reached a closed port
(`bounced`, from the ICMP the kernel answers with), and whether nothing at all crossed `lo` meanwhile
(`udp_times`, `silence`: the whole machine stalled), and how figures are printed (`spread`,
`percentile`, `verdict`).

Not here: starting the processes and the capture, or the figures each benchmark derives
(bench_mn_lapse.py, bench_sh.py).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import socket
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from tests.peers.tshark import tshark

from sipmob.mn.control import encode

SETTLE = 0.4  # seconds between an action's reply and the next command: the stream runs steady
LEAD = 0.2  # seconds before t0 that belong to an action's window (the old place's last packets)
GAP_TARGET = 2.0  # packet intervals (draft §7.1: "there will be no media lapse")


@dataclasses.dataclass(frozen=True, slots=True)
class Packet:
    time: float
    src: int
    dst: int
    ssrc: int
    seq: int


@dataclasses.dataclass(frozen=True, slots=True)
class SipMessage:
    time: float
    src: int
    dst: int
    label: str  # "INVITE", "INVITE (Replaces)", "200 INVITE", ...


def command(path: Path, name: str, args: dict[str, object], timeout: float = 20.0) -> float:
    """Send one control request and wait for its reply; the wall-clock time it was written."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        data = encode({"id": 1, "command": name, "args": args})
        t0 = time.time()
        s.sendall(data)
        reply = b""
        while b"\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                raise RuntimeError(f"{name}: the phone closed the control connection")
            reply += chunk
    if b'"ok":true' not in reply:
        raise RuntimeError(f"{name} failed: {reply.decode(errors='replace').strip()}")
    return t0


def _decode_as(ports: Iterable[int], protocol: str) -> list[str]:
    return [a for p in sorted(ports) for a in ("-d", f"udp.port=={p},{protocol}")]


def read_rtp(capture: Path, ports: set[int] | None = None) -> list[Packet]:
    """Every RTP packet of the capture in time order: on `ports` (decoded as RTP), or all that
    Wireshark's heuristic takes for RTP when no ports are given."""
    decode = _decode_as(ports, "rtp") if ports is not None else ["-o", "rtp.heuristic_rtp:TRUE"]
    out = tshark("-r", str(capture), *decode, "-Y", "rtp", "-T", "fields", "-e", "frame.time_epoch",
                 "-e", "udp.srcport", "-e", "udp.dstport", "-e", "rtp.ssrc", "-e", "rtp.seq", timeout=120)
    packets = []
    for line in out.splitlines():
        row = line.split("\t")
        if len(row) == 5 and all(row):
            packets.append(Packet(float(row[0]), int(row[1]), int(row[2]), int(row[3], 0), int(row[4])))
    packets.sort(key=lambda p: p.time)
    return packets


def announced_ports(capture: Path, sip_ports: Sequence[int]) -> dict[int, set[int]]:
    """The media ports each SIP port announced in its SDP (port 9 of an OPTIONS answer left out:
    capabilities, not a stream, RFC 3264 §9)."""
    out = tshark("-r", str(capture), *_decode_as(sip_ports, "sip"), "-Y", "sdp", "-T", "fields",
                 "-e", "udp.srcport", "-e", "sdp.media.port", timeout=120)
    by_sender: dict[int, set[int]] = defaultdict(set)
    for line in out.splitlines():
        src, _, media = line.partition("\t")
        by_sender[int(src)] |= {int(p) for p in media.split(",") if p.isdigit() and int(p) not in (0, 9)}
    return by_sender


def sip_messages(capture: Path, sip_ports: Sequence[int]) -> list[SipMessage]:
    """The SIP messages between `sip_ports`, in time order; an INVITE with Replaces says so."""
    out = tshark("-r", str(capture), *_decode_as(sip_ports, "sip"), "-Y", "sip", "-T", "fields",
                 "-e", "frame.time_epoch", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "sip.Method",
                 "-e", "sip.Status-Code", "-e", "sip.CSeq.method", "-e", "sip.Replaces", timeout=120)
    ours = set(sip_ports)
    messages = []
    for line in out.splitlines():
        row = line.split("\t")
        if len(row) < 6 or not row[0]:
            continue
        src, dst = int(row[1]), int(row[2])
        if src not in ours or dst not in ours:
            continue
        method, status, cseq = row[3], row[4], row[5]
        label = f"{status} {cseq}" if status else method + (" (Replaces)" if len(row) > 6 and row[6] else "")
        messages.append(SipMessage(float(row[0]), src, dst, label))
    messages.sort(key=lambda m: m.time)
    return messages


def bounced(capture: Path, packets: Sequence[Packet]) -> set[Packet]:
    """The `packets` that reached a closed port: each is the last one from its source to its
    destination before an ICMP port unreachable that quotes them (the kernel answers at once; the
    capture must include icmp). They reached no one."""
    out = tshark("-r", str(capture), "-Y", "icmp.type == 3 && icmp.code == 3", "-T", "fields",
                 "-e", "frame.time_epoch", "-e", "udp.srcport", "-e", "udp.dstport", timeout=120)
    by_flow: dict[tuple[int, int], list[Packet]] = defaultdict(list)
    for packet in packets:
        by_flow[(packet.src, packet.dst)].append(packet)
    out_packets: set[Packet] = set()
    for line in out.splitlines():
        row = line.split("\t")
        if len(row) != 3 or not row[0]:
            continue
        # the quoted datagram's ports are the last of each field (the ICMP itself has none)
        src, dst = (int(v.split(",")[-1]) for v in row[1:])
        before = [p for p in by_flow.get((src, dst), ()) if p.time <= float(row[0])]
        if before:
            out_packets.add(before[-1])
    return out_packets


def udp_times(capture: Path) -> list[float]:
    """When each UDP datagram of the capture crossed `lo`, whoever sent it, in time order: the
    machine's pulse, to tell a stall of the whole machine from one of a sender."""
    out = tshark("-r", str(capture), "-Y", "udp && !icmp", "-T", "fields", "-e", "frame.time_epoch",
                 timeout=120)
    return sorted(float(line) for line in out.splitlines() if line)


def silence(times: Sequence[float], start: float, end: float) -> float:
    """The longest stretch between `start` and `end` in which nothing in `times` happened."""
    inside = times[bisect.bisect_right(times, start):bisect.bisect_left(times, end)]
    return longest_gap([start, *inside, end])


def unwrapped(seqs: Iterable[int]) -> list[int]:
    """16-bit sequence numbers in arrival order, extended across wrap-around (RFC 3550 §A.1)."""
    out: list[int] = []
    for seq in seqs:
        if not out:
            out.append(seq)
            continue
        last = out[-1]
        delta = (seq - last) % 65536
        out.append(last + delta if delta < 32768 else last + delta - 65536)
    return out


def missing(seqs: Iterable[int]) -> int:
    extended = set(unwrapped(seqs))
    return (max(extended) - min(extended) + 1 - len(extended)) if extended else 0


def lost(packets: Sequence[Packet]) -> int:
    """Sequence numbers missing within each SSRC of `packets`."""
    return sum(missing(p.seq for p in packets if p.ssrc == s) for s in {p.ssrc for p in packets})


def longest_gap(times: Sequence[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def widest(packets: Sequence[Packet]) -> tuple[Packet, Packet] | None:
    """The two consecutive packets with the longest gap between them."""
    pairs = list(itertools.pairwise(packets))
    return max(pairs, key=lambda ab: ab[1].time - ab[0].time) if pairs else None


def where_longest(packets: Sequence[Packet], t0: float) -> str:
    pair = widest(packets)
    if pair is None:
        return "-"
    a, b = pair
    return f"{(a.time - t0) * 1000:+.0f}ms {a.src}->{a.dst} then {b.src}->{b.dst}"


def switch(packets: Sequence[Packet], old: set[int], new: set[int]) -> tuple[Packet, Packet] | None:
    """The CN's last packet at the old place before its first at the new one, and that first one."""
    first = next((p for p in packets if p.dst in new), None)
    if first is None:
        return None
    before = [p for p in packets if p.dst in old and p.time <= first.time]
    return (before[-1], first) if before else None


def steps_within(messages: Sequence[SipMessage], start: float, end: float) -> str:
    """The SIP messages sent between two instants, each with its time after `start`."""
    inside = [m for m in messages if start <= m.time <= end]
    return ", ".join(f"{m.label} +{(m.time - start) * 1000:.1f}" for m in inside) or "no SIP"


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(values: Sequence[float], digits: int = 2) -> str:
    """p50, p95 and max of `values`."""
    if not values:
        return "n=0"
    return (f"p50 {percentile(values, 0.5):.{digits}f} p95 {percentile(values, 0.95):.{digits}f} "
            f"max {max(values):.{digits}f}")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"
