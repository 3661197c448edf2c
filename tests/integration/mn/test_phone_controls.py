"""The phone's call controls end to end: baresip calls ``sipmob phone`` (no auto-answer), the user
answers, holds, resumes, sends DTMF and hangs up with the ``sipmob`` command, and `sipmob watch`
prints what happens.

Evidence: baresip's own call events (CALL_RINGING, CALL_ESTABLISHED, CALL_CLOSED with the status
it got, CALL_DTMF_START for the digits it decoded), the phone's RTP counters, and tshark decoding
the RFC 4733 events on the wire. Loopback only; every process is stopped by its PID.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers.baresip import BARESIP, Baresip
from tests.peers.process import terminate
from tests.peers.tshark import TSHARK, LiveCapture, tshark

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import ENV, Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(BARESIP is None, reason="baresip is not installed (apt baresip-core)")]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    da = Slpda(tmp_path / "da").start()
    peers: list[Baresip] = []
    phone: Phone | None = None
    try:
        cn = Baresip(tmp_path, user="cn")
        peers.append(cn)
        desk = Baresip(tmp_path, user="desk")
        peers.append(desk)
        with da.client() as slp:
            slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU,PCMA)")
        phone = Phone(tmp_path, f"{HOST}:{da.port}", ring_timeout=3.0)
        yield {"phone": phone, "cn": cn, "desk": desk, "dir": tmp_path}
    finally:
        if phone is not None:
            phone.stop()
        for peer in peers:
            peer.stop()
        da.stop()


def closed_status(cn: Baresip, start: int = 0) -> str:
    event = cn.wait_call_event("CALL_CLOSED", timeout=10, start=start)
    return str(event.get("param", ""))


def ringing(phone: Phone) -> dict[str, Any] | None:
    return next((c for c in phone.calls() if c["state"] == "ringing"), None)


def test_incoming_call_rings_is_listed_with_the_caller_and_is_answered(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    watch = subprocess.Popen([sys.executable, "-m", "sipmob.mn.cli", "--config", str(phone.config), "watch"],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # the watcher's first poll is in
        cn.dial(phone.uri)
        cn.wait_call_event("CALL_RINGING", timeout=10)
        call = until(lambda: ringing(phone))
        assert call, phone.output()
        listed = phone.sipmob("calls")
        assert f"{call['id']}  sip:cn@127.0.0.1" in listed.stdout and "ringing" in listed.stdout
        done = phone.sipmob("answer", call["id"])
        assert done.returncode == 0, done.stderr + phone.output()
        cn.wait_call_event("CALL_ESTABLISHED", timeout=10)
        assert until(lambda: phone.received() > 20), "no RTP from the CN after answering"
        hung = phone.sipmob("hangup", call["id"])
        assert hung.returncode == 0, hung.stderr
        cn.wait_call_event("CALL_CLOSED", timeout=10)
        assert until(lambda: phone.calls() == [])
        time.sleep(0.5)
    finally:
        terminate(watch)  # type: ignore[arg-type]
    out = watch.stdout.read() if watch.stdout else ""
    errors = watch.stderr.read() if watch.stderr else ""
    assert "is calling" in out and "sip:cn@127.0.0.1" in out, out + errors
    assert f"call {call['id']} with sip:cn@127.0.0.1" in out and "established" in out and "ended" in out


def test_reject_answers_603_and_an_unanswered_call_480(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    cn.dial(phone.uri)
    call = until(lambda: ringing(phone))
    assert call, phone.output()
    assert phone.sipmob("reject", call["id"]).returncode == 0
    assert "603" in closed_status(cn)
    start = len(cn.events)
    cn.dial(phone.uri)
    assert until(lambda: ringing(phone))
    assert "480" in closed_status(cn, start)  # ring_timeout is 3 s
    assert phone.calls() == []



def test_a_caller_who_gives_up_stops_the_ringing(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    cn.dial(phone.uri)
    assert until(lambda: ringing(phone)), phone.output()
    cn.hangup()  # a CANCEL
    assert until(lambda: phone.calls() == [], timeout=5), phone.calls()
    assert "from sip:cn@127.0.0.1" in phone.output() and "cancelled" in phone.output()


def test_answer_of_a_call_that_is_not_ringing_fails_with_a_reason(home: dict[str, Any]) -> None:
    done = home["phone"].sipmob("answer", "7")
    assert done.returncode == 1 and "no ringing call '7'" in done.stderr


def established_call(phone: Phone, cn: Baresip) -> str:
    done = phone.sipmob("call", cn.uri)
    assert done.returncode == 0, done.stderr + phone.output()
    assert until(lambda: phone.received() > 20), "no RTP from the CN"
    return str(phone.calls()[0]["id"])


def test_hold_stops_the_cns_audio_and_resume_brings_it_back(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    cid = established_call(phone, cn)
    held = phone.sipmob("hold", cid)
    assert held.returncode == 0, held.stderr + phone.output()
    assert phone.calls()[0]["state"] == "held"
    time.sleep(0.5)
    before = phone.received()
    time.sleep(1.0)
    assert phone.received() - before < 5, "the CN kept sending while on hold"
    resumed = phone.sipmob("resume", cid)
    assert resumed.returncode == 0, resumed.stderr
    start = phone.received()
    assert until(lambda: phone.received() > start + 20), "no RTP from the CN after resume"
    assert phone.sipmob("resume", cid).returncode == 1  # not on hold any more


@pytest.mark.skipif(TSHARK is None, reason="tshark is not installed")
def test_dtmf_as_rfc4733_events_decoded_by_tshark_and_baresip(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    # SIP of both parties, and RTP datagrams of an RFC 4733 event's size (8 + 12 + 4 bytes): other
    # traffic on lo (media benches) would swell the file until the capture's markers time out.
    capture = LiveCapture(home["dir"] / "dtmf.pcap",
                          f"udp and (port {cn.port} or port {phone.port}"
                          " or (udp[4:2] = 24 and (udp[8] & 0xc0) = 0x80))")
    try:
        cid = established_call(phone, cn)
        start = len(cn.events)
        sent = phone.sipmob("dtmf", cid, "1234")
        assert sent.returncode == 0 and "RFC 4733" in sent.stdout, sent.stderr + phone.output()
        heard = [cn.wait_event(lambda e: e.get("type") == "CALL_DTMF_START", timeout=5, start=start)]
        time.sleep(0.5)
    finally:
        path = capture.stop()
    keys = [e.get("param") for e in cn.events[start:] if e.get("type") == "CALL_DTMF_START"]
    assert heard and keys == ["1", "2", "3", "4"], keys
    # The events go to the CN's audio port, from its 200 OK's SDP.
    answers = tshark("-r", str(path), "-Y", f"sip.Status-Code == 200 && sdp && udp.srcport == {cn.port}",
                     "-T", "fields", "-e", "sdp.media.port")
    port = answers.split()[0]
    rows = tshark("-r", str(path), "-d", f"udp.port=={port},rtp", "-Y", "rtpevent", "-T", "fields",
                  "-e", "rtpevent.event_id", "-e", "rtpevent.end_of_event", "-e", "rtp.marker",
                  "-e", "rtpevent.duration").splitlines()
    events = [r.split("\t") for r in rows if r]
    ends = [e[0] for e in events if e[1] in ("1", "True")]
    assert ends == ["1"] * 3 + ["2"] * 3 + ["3"] * 3 + ["4"] * 3, events
    firsts = [e[0] for e in events if e[2] in ("1", "True")]
    assert firsts == ["1", "2", "3", "4"], events
    assert all(e[3] == "800" for e in events if e[1] in ("1", "True"))


def test_dtmf_goes_as_sip_info_when_the_audio_is_on_a_device(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    cid = established_call(phone, cn)
    moved = phone.sipmob("transfer", cid, "--to", "Desk phone", "--media", "audio")
    assert moved.returncode == 0, moved.stderr + phone.output()
    start = len(cn.events)
    sent = phone.sipmob("dtmf", cid, "9#")
    assert sent.returncode == 0 and "SIP INFO" in sent.stdout, sent.stderr + phone.output()
    cn.wait_event(lambda e: e.get("type") == "CALL_DTMF_START", timeout=5, start=start)
    keys = [e.get("param") for e in cn.events[start:] if e.get("type") == "CALL_DTMF_START"]
    assert keys[:2] == ["9", "#"], keys
    held = phone.sipmob("hold", cid)
    assert held.returncode == 1 and "bring it back first" in held.stderr, held.stderr
    bad = phone.sipmob("dtmf", cid, "12x")
    assert bad.returncode == 1 and "not a DTMF digit" in bad.stderr
    events = json.loads(phone.sipmob("calls", "--json").stdout)
    assert events[0]["id"] == cid
