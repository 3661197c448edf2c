"""The C load generator of the transcoder benchmark builds and counts right, against a UDP echo.

The echo (a thread here) forwards each channel's packets from its target port to its receive port:
channel 0 loses every tenth packet (the 4th, the 14th, ...), channel 1 has its sequence numbers and
timestamps rewritten by a constant (as a media relay does), channel 2 drops its first packet (which
must not shift the pairing of outputs with inputs). The counts are exact. In the second test every
packet is held 45 ms: the only timing asserted is the one no schedule can undercut.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from pathlib import Path

from tests.bench import rtpload
from tests.peers.ports import free_udp_port

HOST = "127.0.0.1"


class Echo:
    def __init__(self, b_ports: list[int], drop_every: dict[int, int], shift: dict[int, int],
                 drop_first: set[int] = frozenset(), hold: float = 0.0) -> None:
        self.socks = []
        for _ in b_ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((HOST, 0))
            self.socks.append(s)
        self.targets = [s.getsockname()[1] for s in self.socks]
        self.b_ports = b_ports
        self.drop_every, self.shift, self.drop_first, self.hold = drop_every, shift, drop_first, hold
        self.dropped = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        held: list[tuple[float, int, bytes]] = []
        index = {s.fileno(): i for i, s in enumerate(self.socks)}
        first: dict[int, int] = {}  # per channel, the first sequence number seen
        while not self.stopping.is_set():
            ready, _, _ = select.select(self.socks, [], [], 0.002)
            for s in ready:
                i = index[s.fileno()]
                data = bytearray(s.recv(2048))
                seq, ts = struct.unpack_from("!HI", data, 2)
                if i not in first:
                    first[i] = seq
                    if i in self.drop_first:
                        continue
                if i in self.drop_every and (seq - first[i]) % 65536 % self.drop_every[i] == 3:
                    continue
                if i in self.shift:
                    struct.pack_into("!HI", data, 2, (seq + self.shift[i]) % 65536,
                                     (ts + 160 * self.shift[i]) % (1 << 32))
                held.append((time.monotonic() + self.hold, i, bytes(data)))
            while held and held[0][0] <= time.monotonic():
                _, i, data = held.pop(0)
                # From the port it came to, as a media relay does (symmetric RTP).
                self.socks[i].sendto(data, (HOST, self.b_ports[i]))

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def b_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        p = free_udp_port(HOST)
        if p not in ports:
            ports.append(p)
    return ports


def test_counts_loss_and_latency_through_an_echo(tmp_path: Path) -> None:
    """Three channels received on one port, told apart by the echo's port they come from."""
    binary = rtpload.build(tmp_path / "build")
    payloads = [bytes([k] * 160) for k in range(100)]  # one per packet: the sample shows which
    receive = b_ports(1) * 3
    echo = Echo(receive, drop_every={0: 10}, shift={1: 1000}, drop_first={2})
    try:
        load = rtpload.Load(targets=echo.targets, b_ports=receive, a_port=free_udp_port(HOST), pt=0,
                            ticks=160, out_ticks=160, payloads=payloads, seconds=1.5, warmup=0.5,
                            src_ports=echo.targets)
        result = rtpload.run(binary, load, tmp_path)
    finally:
        echo.close()
    # 2 s at 20 ms: 100 packets per channel, 75 of them after the 0.5 s warm-up.
    assert result["sent_all"] == 300
    assert result["sent"] == 225
    assert result["send_errors"] == 0 and result["stray"] == 0
    assert result["silent_channels"] == 0
    # Channel 0 sends frames 25..99 in the measured window: 33, 43, ... 93 are dropped. Channel 2's
    # first packet was in the warm-up.
    assert result["lost"] == 7, {k: v for k, v in result.items() if k != "sample"}
    assert abs(result["loss"] - 7 / 225) < 1e-5
    assert result["anchor_late"] == 1  # channel 2: its first output is of the second input
    assert result["unmatched"] == 0
    # Channel 0's sample is the payloads sent, in order, minus the dropped ones, to the last.
    sent = [p[0] for p in result["sample"]]
    assert sent == sorted(set(sent)) and sent[-1] == 99
    assert sent == [k for k in range(sent[0], 100) if k % 10 != 3]
    assert result["latency_p50_ms"] >= 0
    assert result["gap_p99_ms"] >= 20 * 0.5


def test_latency_is_paired_by_timestamp(tmp_path: Path) -> None:
    """Packets held 45 ms are seen at least ~40 ms late, not 5 (the pairing is by frame). Two
    channels, each on a receive port of its own."""
    binary = rtpload.build(tmp_path / "build")
    receive = b_ports(2)
    echo = Echo(receive, drop_every={}, shift={0: 7}, hold=0.045)
    try:
        load = rtpload.Load(targets=echo.targets, b_ports=receive, a_port=free_udp_port(HOST), pt=0,
                            ticks=160, out_ticks=160, payloads=[bytes(160)], seconds=1.0, warmup=0.5)
        result = rtpload.run(binary, load, tmp_path)
    finally:
        echo.close()
    assert result["sent"] == 100 and result["lost"] == 0 and result["stray"] == 0
    assert result["latency_p50_ms"] >= 40
    assert result["anchor_late"] == 0
