"""DTMF across `sipmob-transcoder` between SIP INFO and RFC 4733, with the test as the 3PCC controller.

Under RFC 4117 the parties' dialogs end at the controller, so a party's INFO reaches the
controller, which passes it to the transcoder in its own dialog with ``Side=A`` or ``Side=B``
(`sipmob.transcoder.invocation`). Here the test is that controller and each party is a UDP socket:

- INFO from A's controller leg, B has telephone-event: B's RTP carries the digit as RFC 4733 events
  (decoded by tshark's ``rtpevent``): a marked start, updates, three end packets, one timestamp,
  the duration the INFO gave on B's event clock, numbered in the same sequence as B's audio, one SSRC.
- events from A, B without telephone-event: one INFO per digit to the controller, whatever the
  end retransmissions, with its duration and ``Side=A``; decoded by tshark's SIP dissector.
- a side without telephone-event: INFO for it gets 488 (the controller passes it on itself);
  wrong bodies 415/400; an INFO in the dialog from a host other than the controller's, 403.
- attack: a stranger's INFO, re-INVITE and BYE in the call with CSeq 2**31-1 get 403 and change
  nothing: the call goes on and the controller's next requests are in order.
- attack: 300 INFOs and 500 distinct events as fast as a socket can send: the work done (events
  generated, INFOs sent) stays within the per-call bound, and the call keeps its audio.
"""

from __future__ import annotations

import itertools
import socket
import struct
import threading
import time
from pathlib import Path

import pytest
from tests.integration.transcoder.test_transcoder import pair, rtp
from tests.integration.transcoder.transcoder_process import HOST, Controller, Transcoder, invocation, side
from tests.peers.tshark import TSHARK, LiveCapture, tshark

from sipmob.media import dtmf
from sipmob.sdp.session import parse

pytestmark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")

PCMU_TE = [(0, "PCMU/8000"), (101, "telephone-event/8000")]
OPUS_TE = [(111, "opus/48000/2"), (110, "telephone-event/48000")]
PCMA = [(8, "PCMA/8000")]


class Talker(threading.Thread):
    """Party A's audio: one PCMU packet every 20 ms until stopped (bounded by ``seconds``)."""

    def __init__(self, sock: socket.socket, port: int, seconds: float = 20.0) -> None:
        super().__init__(daemon=True)
        self.sock, self.port, self.seconds = sock, port, seconds
        self.halt = threading.Event()
        self.seq = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.halt.is_set() and time.monotonic() < deadline:
            self.sock.sendto(rtp(self.seq), (HOST, self.port))
            self.seq += 1
            self.halt.wait(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def receive(sock: socket.socket, seconds: float) -> list[bytes]:
    out = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(2048))
        except TimeoutError:
            break
    return out


def event(seq: int, ts: int, code: int, duration: int, end: bool, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, 101 | (0x80 if marker else 0), seq, ts, 0x5555) + \
        dtmf.event_payload(code, duration, end=end)


def test_an_info_digit_from_a_becomes_rfc4733_events_in_bs_stream(tmp_path: Path) -> None:
    a, a_rtcp = pair()
    b, b_rtcp = pair()
    b_port = b.getsockname()[1]
    try:
        capture = LiveCapture(tmp_path / "events.pcap", f"udp dst port {b_port}")
        with capture, Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
            ok = c.invite(invocation(side(a.getsockname()[1], PCMU_TE), side(b.getsockname()[1], OPUS_TE)))
            assert ok.status == 200
            talker = Talker(a, parse(ok.body).media[0].port)
            talker.start()
            try:
                receive(b, 0.5)  # the stream is running
                reply = c.info(b"Signal=5\r\nDuration=200\r\nSide=A\r\n")
                assert reply.status == 200
                # PJSIP's retransmission of the same INFO is absorbed by the transaction layer:
                # a second INFO is a second press (sent as application/dtmf, the bare digit).
                assert c.info(b"#\r\nSide=A\r\n", "application/dtmf").status == 200
                packets = receive(b, 1.5)
            finally:
                talker.stop()
            assert c.bye().status == 200
        path = capture.path
    finally:
        for s in (a, a_rtcp, b, b_rtcp):
            s.close()
    headers = [struct.unpack_from("!BBHII", p) for p in packets]
    assert len({h[4] for h in headers}) == 1, "one SSRC for audio and events"
    seqs = [h[2] for h in headers]
    assert all((y - x) % 65536 == 1 for x, y in itertools.pairwise(seqs)), "one sequence"
    events = [(h, p[12:16]) for h, p in zip(headers, packets, strict=True) if h[1] & 0x7F == 110]
    by_ts: dict[int, list[bytes]] = {}
    for h, payload in events:
        by_ts.setdefault(h[3], []).append(payload)
    assert [v[0][0] for v in by_ts.values()] == [5, 11], by_ts
    five, pound = by_ts.values()
    assert [p[1] & 0x80 for p in five[-3:]] == [0x80] * 3 and not any(p[1] & 0x80 for p in five[:-3])
    assert int.from_bytes(five[-1][2:4], "big") == 200 * 48  # 200 ms on the 48 kHz event clock
    assert int.from_bytes(pound[-1][2:4], "big") == dtmf.DEFAULT_DURATION_MS * 48
    durations = [int.from_bytes(p[2:4], "big") for p in five]
    assert durations == sorted(durations)
    marked = [h[3] for h, _ in events if h[1] & 0x80]
    assert marked == list(by_ts), "the marker on each event's first packet only"
    # tshark reads the same: the two digits, three ends each.
    rows = tshark("-r", str(path), "-d", f"udp.port=={b_port},rtp", "-d", "rtp.pt==110,rtpevent",
                  "-Y", "rtpevent", "-T", "fields", "-e", "rtpevent.event_id", "-e", "rtpevent.end_of_event",
                  "-e", "rtpevent.duration").splitlines()
    decoded = [r.split("\t") for r in rows if r]
    assert [r[0] for r in decoded if r[1] in ("1", "True")] == ["5"] * 3 + ["11"] * 3, decoded


def test_events_from_a_for_a_b_without_telephone_event_become_one_info_per_digit(tmp_path: Path) -> None:
    a, a_rtcp = pair()
    b, b_rtcp = pair()
    try:
        with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
            capture = LiveCapture(tmp_path / "info.pcap", f"udp port {c.local[1]}")
            with capture:
                ok = c.invite(invocation(side(a.getsockname()[1], PCMU_TE), side(b.getsockname()[1], PCMA)))
                assert ok.status == 200
                port_a = parse(ok.body).media[0].port
                seq = 0
                for i in range(10):
                    a.sendto(rtp(i), (HOST, port_a))
                    seq += 1
                # 7 (120 ms, its end sent three times), then 7 again (a second press), then 3
                # whose three ends are all lost (given when 0 starts), then 0.
                schedule = [(1600, 7, [160, 480], 960), (4000, 7, [160], 800), (8000, 3, [160, 320], None),
                            (12000, 0, [160], 640)]
                for ts, code, updates, end in schedule:
                    for n, duration in enumerate(updates):
                        a.sendto(event(seq, ts, code, duration, False, n == 0), (HOST, port_a))
                        seq += 1
                        time.sleep(0.02)
                    for _ in range(3 if end is not None else 0):
                        a.sendto(event(seq, ts, code, end or 0, True), (HOST, port_a))
                        seq += 1
                        time.sleep(0.02)
                requests = c.serve(3.0)
                assert c.bye().status == 200
            # B heard none of the events: only audio (payload type 8) reached it.
            assert {p[1] & 0x7F for p in receive(b, 0.5)} <= {8}
    finally:
        for s in (a, a_rtcp, b, b_rtcp):
            s.close()
    infos = [r for r in requests if r.method == "INFO"]
    got = [(dtmf.parse_info(r.body, r.headers.get("Content-Type") or ""), dtmf.info_side(r.body))
           for r in infos]
    assert got == [(dtmf.Digit("7", 120), "A"), (dtmf.Digit("7", 100), "A"), (dtmf.Digit("3", 40), "A"),
                   (dtmf.Digit("0", 80), "A")], got
    rows = tshark("-r", str(capture.path), "-Y", 'sip.Method == "INFO"', "-T", "fields", "-e", "sip.Method",
                  "-e", "sip.Content-Type").splitlines()
    assert rows == ["INFO\tapplication/dtmf-relay"] * 4, rows


def test_info_for_a_side_without_telephone_event_gets_488_and_bad_bodies_are_refused(tmp_path: Path) -> None:
    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
        assert c.invite(invocation(side(0, PCMU_TE), side(0, PCMA))).status == 200
        assert c.info(b"Signal=1\r\nSide=A\r\n").status == 488  # B cannot take events
        assert c.info(b"Signal=1\r\nSide=B\r\n").status == 200  # A can
        assert c.info(b"Signal=1\r\n").status == 400  # which party?
        assert c.info(b"Signal=Z\r\nSide=B\r\n").status == 400
        assert c.info(b"hello", "text/plain").status == 415
        # Someone else who knows the dialog (another host, allowed to invoke calls of its own)
        # does not speak for this call's parties.
        with Controller(transcoder.uri, bind="127.0.0.2") as other:
            other.call_id, other.from_tag, other.to, other.cseq = c.call_id, c.from_tag, c.to, c.cseq + 10
            assert other.info(b"Signal=1\r\nSide=B\r\n").status == 403
        # A refused request is not counted in the dialog (RFC 3261 §12.2.2): ours go on in order.
        assert c.info(b"Signal=2\r\nSide=B\r\n").status == 200
        assert c.bye().status == 200


def test_a_strangers_info_reinvite_and_bye_with_the_highest_cseq_get_403_and_the_call_goes_on(
        tmp_path: Path) -> None:
    """Attack: a host that knows the call's Call-ID and tags (allowed to invoke calls of its own)
    sends INFO, re-INVITE and BYE in it with CSeq 2**31-1. Each gets 403 before it changes the
    dialog: the call is not ended, and the controller's next requests, numbered as before, are
    not answered 500 for being lower than the stranger's (RFC 3261 §12.2.2)."""
    offer = invocation(side(0, PCMU_TE), side(0, PCMA))
    with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
        assert c.invite(offer).status == 200
        with Controller(transcoder.uri, bind="127.0.0.2") as other:
            other.call_id, other.from_tag, other.to = c.call_id, c.from_tag, c.to
            other.cseq = 2**31 - 2  # each request takes the next number: the highest legal one
            assert other.info(b"Signal=1\r\nSide=B\r\n").status == 403
            other.cseq = 2**31 - 2
            branch = other._send("INVITE", offer)
            assert other._final("INVITE", 5.0).status == 403
            other._send("ACK", cseq=other.cseq, branch=branch)  # §17.1.1.3: the 403's ACK
            other.cseq = 2**31 - 2
            assert other.bye().status == 403
        assert c.info(b"Signal=1\r\nSide=B\r\n").status == 200
        assert c.reinvite(offer).status == 200
        assert c.info(b"Signal=2\r\nSide=B\r\n").status == 200
        assert c.bye().status == 200


def test_a_flood_of_info_and_of_events_costs_a_bounded_amount_of_work(tmp_path: Path) -> None:
    """300 INFOs and 500 distinct events, each as fast as it goes: the transcoder plays or sends
    at most its per-call burst plus its rate over the time taken, and the call's audio goes on."""
    a, a_rtcp = pair()
    b, b_rtcp = pair()
    try:
        with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
            ok = c.invite(invocation(side(a.getsockname()[1], PCMU_TE), side(b.getsockname()[1], PCMU_TE)))
            assert ok.status == 200
            port_a = parse(ok.body).media[0].port
            started = time.monotonic()
            statuses = [c.info(b"Signal=1\r\nDuration=100\r\nSide=A\r\n").status for _ in range(300)]
            elapsed = time.monotonic() - started
            played = statuses.count(200)
            assert set(statuses) <= {200, 503} and statuses.count(503) > 0
            assert played <= 16 + 8 * elapsed + 1, (played, elapsed)
            # B is a side with telephone-event: the digits taken are events there, paced (each
            # one 100 ms and a 50 ms gap), never more digits than were taken.
            packets = receive(b, 4.0)
            ends = {struct.unpack_from("!I", p, 4)[0] for p in packets if p[1] & 0x7F == 101 and p[13] & 0x80}
            assert 0 < len(ends) <= played, (len(ends), played)
            print(f"300 INFOs in {elapsed:.2f} s: {played} taken, {statuses.count(503)} got 503, "
                  f"{len(ends)} digits played to B in the 4 s after")
        # A second call, B without telephone-event: a flood of events from A comes back as INFOs.
        with Transcoder(tmp_path) as transcoder, Controller(transcoder.uri) as c:
            ok = c.invite(invocation(side(a.getsockname()[1], PCMU_TE), side(b.getsockname()[1], PCMA)))
            port_a = parse(ok.body).media[0].port
            started = time.monotonic()
            for n in range(500):
                a.sendto(event(n, n * 800, n % 10, 400, True), (HOST, port_a))
            elapsed = time.monotonic() - started
            requests = c.serve(4.0)
            infos = [r for r in requests if r.method == "INFO"]
            assert 0 < len(infos) <= 16 + 8 * (elapsed + 4.0), (len(infos), elapsed)
            print(f"500 events in {elapsed:.2f} s: {len(infos)} INFOs to the controller in the 4 s after")
            for n in range(5):  # the call still carries audio
                a.sendto(rtp(1000 + n), (HOST, port_a))
            assert any(p[1] & 0x7F == 8 for p in receive(b, 2.0))
            assert c.bye().status == 200
        assert "digits dropped (over the rate)" in transcoder.output()
    finally:
        for s in (a, a_rtcp, b, b_rtcp):
            s.close()
