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
from tests.peers.tshark import TSHARK, LiveCapture, tshark

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)"),
              pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")]
pj = pytest.importorskip("pjsua2")


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

    def moved(self) -> int:
        """A call to the CN, moved to the desk phone through the transcoder; the CN's call id."""
        with self.da.client() as slp:
            assert until(lambda: bool(getattr(slp.udp(slp.srv_rqst("service:sip-transcoder")), "urls", ())),
                         10), self.transcoder.output()
        done = self.phone.sipmob("call", self.cn.uri)
        assert done.returncode == 0, done.stderr + self.phone.output()
        assert until(lambda: self.phone.received() > 20), "no RTP from the CN"
        done = self.phone.sipmob("transfer", "1", "--to", "desk-phone")
        assert done.returncode == 0, done.stderr + self.phone.output() + self.transcoder.output()
        assert done.stdout.strip() == "call 1: audio on Desk phone via transcoder: PCMA <-> PCMU"
        [call] = self.cn.calls()
        return int(call["id"])

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


def capture(h: Home, name: str) -> LiveCapture:
    # SIP of every party, and RTP datagrams of an RFC 4733 event's size (12 + 4 octets).
    ports = " or ".join(f"port {p}" for p in (h.phone.port, h.transcoder.port, h.cn.port, h.desk.port))
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
