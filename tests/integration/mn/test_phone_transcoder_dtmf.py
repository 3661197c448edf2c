"""DTMF through the transcoder when the phone moved a call there (RFC 4117: the phone is the controller).

PJSIP is the CN speaking PCMA only, baresip a desk phone speaking PCMU only; `sipmob transfer`
puts the transcoder between them (PCMA <-> PCMU). The CN's dialog ends at the phone, so its INFO
comes to the phone, which passes it to the transcoder with ``Side=A``; the transcoder plays the
digit as RFC 4733 events into the desk phone's stream. baresip must decode the digit from those
events, tshark must see the INFO at each hop and the events (marked start, three ends) on the
desk phone's port. The CN's own RFC 2833 events cross the transcoder with their timestamps
rewritten and reach baresip the same way. A flood of INFO from the CN is bounded by the phone.
"""

from __future__ import annotations

import re
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.transcoder.transcoder_process import Transcoder
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_udp_port
from tests.peers.sipp import SIPP, SippProcess
from tests.peers.tshark import TSHARK, LiveCapture, tshark

from sipmob.media import dtmf

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")]
pj = pytest.importorskip("pjsua2")
SCENARIOS = Path(__file__).resolve().parent / "scenarios"


class Home:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.stoppers: list[Any] = []
        (directory / "da").mkdir()
        self.da = Slpda(directory / "da").start()
        self.stoppers.append(self.da.stop)
        self.desk = Baresip(directory, user="desk", codecs="PCMU")
        self.stoppers.append(self.desk.stop)
        with self.da.client() as slp:
            slp.register(self.desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
        self.cn = Pjsua(free_udp_port(), "cn", workdir=directory / "cn", codecs=["PCMA/8000"])
        self.stoppers.append(self.cn.stop)
        (directory / "tx").mkdir()
        self.transcoder = Transcoder(directory / "tx",
                                     slp=f'das = ["{HOST}:{self.da.port}"]\nupdate_interval = 0.5').start()
        self.stoppers.append(self.transcoder.stop)
        self.phone = Phone(directory, f"{HOST}:{self.da.port}", auto_answer=True)
        self.stoppers.append(self.phone.stop)

    def moved(self, device: str = "desk-phone", name: str = "Desk phone", settle: bool = True) -> int:
        """A call to the CN, moved to ``device`` through the transcoder; the CN's call id. With
        ``settle``, once the CN sends its RTP to the transcoder (`settled`)."""
        with self.da.client() as slp:
            assert until(lambda: bool(getattr(slp.udp(slp.srv_rqst("service:sip-transcoder")), "urls", ())),
                         10), self.transcoder.output()
        done = self.phone.sipmob("call", self.cn.uri)
        assert done.returncode == 0, done.stderr + self.phone.output()
        assert until(lambda: self.phone.received() > 20), "no RTP from the CN"
        done = self.phone.sipmob("transfer", "1", "--to", device)
        assert done.returncode == 0, done.stderr + self.phone.output() + self.transcoder.output()
        assert done.stdout.strip() == f"call 1: audio on {name} via transcoder: PCMA <-> PCMU"
        [call] = self.cn.calls()
        if settle:
            self.settled()
        return int(call["id"])

    def settled(self) -> None:
        # PJSIP follows where RTP comes from (latching): the phone's last packets (its grace
        # period) can win it back from the transcoder for a while, and meanwhile its RTP (and
        # events) go to the phone. Wait until the phone hears nothing from it for half a second.
        def cn_sends_elsewhere() -> bool:
            before = self.phone.received()
            time.sleep(0.5)
            return self.phone.received() == before

        assert until(cn_sends_elsewhere, 15), "PJSIP still sends its RTP to the phone"

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            stop()


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home(tmp_path)
    try:
        yield h
    finally:
        h.stop()


def desk_digits(h: Home, start: int, count: int) -> list[str]:
    until(lambda: len([e for e in h.desk.events[start:] if e.get("type") == "CALL_DTMF_START"]) >= count, 10)
    time.sleep(0.5)  # nothing more should come
    return [e.get("param") for e in h.desk.events[start:] if e.get("type") == "CALL_DTMF_START"]


def capture(h: Home, name: str, *more: int) -> LiveCapture:
    # SIP of every party, and RTP datagrams of an RFC 4733 event's size (12 + 4 octets).
    ports = " or ".join(f"port {p}" for p in (h.phone.port, h.transcoder.port, h.cn.port, h.desk.port, *more))
    return LiveCapture(h.dir / name, f"udp and ({ports} or (udp[4:2] = 24 and (udp[8] & 0xc0) = 0x80))")


def events_to_desk(h: Home, path: Path) -> list[list[str]]:
    answers = tshark("-r", str(path), "-Y", f"sip.Status-Code == 200 && sdp && udp.srcport == {h.desk.port}",
                     "-T", "fields", "-e", "sdp.media.port").split()
    assert answers, "the desk phone's answer is not in the capture"
    port = answers[-1]
    rows = tshark("-r", str(path), "-d", f"udp.port=={port},rtp", "-d", "rtp.pt==101,rtpevent",
                  "-Y", f"rtpevent && udp.dstport == {port}", "-T", "fields", "-e", "rtpevent.event_id",
                  "-e", "rtpevent.end_of_event", "-e", "rtp.marker", "-e", "rtp.timestamp").splitlines()
    return [r.split("\t") for r in rows if r]


def test_the_cns_sip_info_is_played_to_the_desk_phone_as_rfc4733_events(home: Home) -> None:
    live = capture(home, "info.pcap")  # from the start: the desk phone's answer names its port
    try:
        cn_call = home.moved()
        start = len(home.desk.events)
        home.cn.dtmf(cn_call, "5#", method="info")
        digits = desk_digits(home, start, 2)
    finally:
        path = live.stop()
    assert digits == ["5", "#"], home.phone.output() + home.transcoder.output()
    infos = tshark("-r", str(path), "-Y", 'sip.Method == "INFO"', "-T", "fields", "-e", "udp.srcport",
                   "-e", "udp.dstport", "-e", "sip.Content-Type").splitlines()
    hops = [tuple(r.split("\t")) for r in infos]
    cn_to_phone = (str(home.cn.port), str(home.phone.port), "application/dtmf-relay")
    assert hops.count(cn_to_phone) == 2, hops
    assert sum(1 for r in hops if r[1] == str(home.transcoder.port)) == 2, hops
    events = events_to_desk(home, path)
    ends = [e[0] for e in events if e[1] in ("1", "True")]
    assert ends == ["5"] * 3 + ["11"] * 3, events
    assert [e[0] for e in events if e[2] in ("1", "True")] == ["5", "11"], events
    assert len({e[3] for e in events if e[0] == "5"}) == 1  # one timestamp per event


def test_the_cns_rfc2833_events_cross_the_transcoder_to_the_desk_phone(home: Home) -> None:
    live = capture(home, "events.pcap")  # from the start: the desk phone's answer names its port
    try:
        cn_call = home.moved()
        start = len(home.desk.events)
        home.cn.dtmf(cn_call, "73", method="rfc2833")
        digits = desk_digits(home, start, 2)
    finally:
        path = live.stop()
    assert digits == ["7", "3"], home.transcoder.output()
    ends = [e[0] for e in events_to_desk(home, path) if e[1] in ("1", "True")]
    assert ends.count("7") >= 3 and ends.count("3") >= 3, ends
    assert not tshark("-r", str(path), "-Y", 'sip.Method == "INFO"')


def test_a_flood_of_info_from_the_cn_is_bounded_by_the_phone(home: Home) -> None:
    """200 INFO digits at once from PJSIP: the phone passes at most its per-call burst and rate on
    (the rest get 503) and the call stays up with its audio."""
    cn_call = home.moved()
    start = len(home.desk.events)
    began = time.monotonic()
    home.cn.dtmf(cn_call, "1" * 200, method="info")
    assert until(lambda: home.phone.output().count("passed to the transcoder") >= 16, 20), home.phone.output()
    time.sleep(3.0)
    elapsed = time.monotonic() - began
    passed = home.phone.output().count("passed to the transcoder")
    played = len(desk_digits(home, start, 1))
    print(f"200 INFO digits from PJSIP: {passed} passed on in {elapsed:.1f} s, "
          f"{played} played to the desk phone")
    assert passed <= 16 + 8 * elapsed, (passed, elapsed)
    assert 0 < played <= passed
    [call] = home.phone.calls()
    assert call["state"] == "confirmed"


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_digits_for_a_desk_phone_without_telephone_event_reach_it_as_sip_info(home: Home) -> None:
    """sipp as a PCMU desk phone without telephone-event: the CN's RFC 2833 events become one INFO
    each at the transcoder, which the phone passes on; the CN's INFO gets 488 from the transcoder
    and the phone passes it on itself. sipp receives both digits as INFO, once each."""
    plain = SippProcess(SCENARIOS / "uas_no_telephone_event.xml", workdir=home.dir / "sipp", timeout=60,
                        # -rtp_echo: it sends the transcoder's audio back, so the CN gets audio
                        # from the transcoder and PJSIP's address latching settles on it rather
                        # than on the phone's last packets
                        extra_args=["-aa", "-mp", str(free_udp_port()), "-rtp_echo"])
    live = None
    try:
        plain.wait_listening()
        with home.da.client() as slp:
            slp.register(f"sip:plain@127.0.0.1:{plain.local_port}",
                         "(name=Plain phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
        live = capture(home, "plain.pcap", plain.local_port)
        cn_call = home.moved("plain-phone", "Plain phone", settle=False)
        # The desk phone's audio (sipp echoes what it gets): a second of it from the test, to the
        # transcoder's port for it, named in the INVITE sipp received.
        log = plain.workdir / "messages.log"
        assert until(lambda: log.exists() and "m=audio" in log.read_text(errors="replace"), 10)
        port = int(re.findall(r"m=audio (\d+) ", log.read_text(errors="replace"))[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as desk_audio:
            for seq in range(50):
                desk_audio.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0x7777) + b"\xff" * 160,
                                  ("127.0.0.1", port))
                time.sleep(0.02)
            home.settled()
        home.cn.dtmf(cn_call, "7", method="rfc2833")
        assert until(lambda: "digit 7 from sip:cn" in home.phone.output(), 10), \
            home.phone.output() + home.transcoder.output()
        home.cn.dtmf(cn_call, "9", method="info")
        time.sleep(2.0)
    finally:
        path = live.stop() if live is not None else None
        home.phone.sipmob("hangup", "1")
        plain.stop()
    assert path is not None
    rows = tshark("-r", str(path), "-Y", f'sip.Method == "INFO" && udp.dstport == {plain.local_port}',
                  "-T", "fields", "-e", "sip.Content-Type", "-e", "text").splitlines()
    # tshark's text lines of the body: "Timestamps,Signal=7\r\n,Duration=200\r\n"
    bodies = [r.split("\t")[1].split(",", 1)[1].replace("\\r\\n,", "\r\n").replace("\\r\\n", "\r\n").encode()
              for r in rows]
    assert [r.split("\t")[0] for r in rows] == ["application/dtmf-relay"] * 2, rows
    assert [dtmf.parse_info(b, "application/dtmf-relay").digit for b in bodies] == ["7", "9"], rows
    assert all(dtmf.info_side(b) is None for b in bodies), rows  # Side= stays between us and the transcoder
