"""The CN's re-INVITEs and UPDATEs answered by RFC 3264 from the call's state, PJSIP as the CN.

PJSIP holds with ``a=sendonly`` and resumes, recreates its media on a new port, and as caller
re-INVITEs with the one codec it kept (pjsua's codec lock). Evidence from both sides: PJSIP's own
stream (where it receives, how many packets), the phone's ``calls`` (who holds, codec, sending),
and a capture in which tshark's decoding of every SDP answer is checked against its offer
(direction reversed, codecs a subset, ``o=`` version up exactly when the description changed).
Loopback only; every process stopped by PID.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers import tshark
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_udp_port
from tests.peers.sipp import SIPP, SippProcess

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
pytest.importorskip("pjsua2")
pytestmark = [pytest.mark.peer]

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
REVERSED = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


@pytest.fixture
def party(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    (tmp_path / "mn").mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        phone = Phone(tmp_path / "mn", f"{HOST}:{da.port}", auto_answer=True)
        started.append(phone)
        yield {"phone": phone, "cn": cn, "dir": tmp_path, "da": da}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def sip_capture(party: dict[str, Any], name: str) -> tshark.LiveCapture | None:
    if tshark.TSHARK is None:
        return None
    ports = f"udp port {party['phone'].port} or udp port {party['cn'].port}"
    return tshark.LiveCapture(party["dir"] / f"{name}.pcapng", ports)


def audio(phone: Phone) -> dict[str, Any]:
    (call,) = phone.calls()
    return dict(next(s for s in call["streams"] if s["media"] == "audio"))


def sent(phone: Phone) -> int:
    return int(phone.calls()[0]["rtp_sent"])


def call_cn(phone: Phone, cn: Pjsua) -> int:
    out = phone.sipmob("call", cn.uri)
    assert out.returncode == 0, out.stderr + phone.output()
    cn.wait_call_state("CONFIRMED", timeout=5)
    assert until(lambda: phone.calls() and phone.received() > 20), phone.calls()
    return int(cn.calls()[0]["id"])


def media_up(cn: Pjsua, start: int) -> None:
    cn.wait_event(lambda e: e["event"] == "media_state", timeout=5, start=start)


def test_hold_resume_and_new_port_from_pjsip(party: dict[str, Any]) -> None:
    phone, cn = party["phone"], party["cn"]
    capture = sip_capture(party, "oa")
    try:
        ident = call_cn(phone, cn)
        assert "hold" not in audio(phone) and audio(phone)["codec"] == "PCMU/8000"

        before = len(cn.events)
        cn.hold(ident)
        media_up(cn, before)
        assert until(lambda: audio(phone).get("hold") == "held by the remote party"), phone.calls()
        assert not phone.calls()[0]["sending"]
        frozen = sent(phone)
        assert until(lambda: phone.received() > 0)  # PJSIP still sends (sendonly)
        assert not until(lambda: sent(phone) > frozen + 2, timeout=1.0), "the phone sends while held"

        before = len(cn.events)
        cn.unhold(ident)
        media_up(cn, before)
        assert until(lambda: "hold" not in audio(phone) and phone.calls()[0]["sending"]), phone.calls()
        assert until(lambda: sent(phone) > frozen + 20)

        old = cn.stream(ident)
        before = len(cn.events)
        cn.reinvite_new_media(ident)
        media_up(cn, before)
        new = cn.stream(ident)
        assert new["local_rtp"] != old["local_rtp"], (old, new)
        # the phone's RTP reaches PJSIP's new socket (a fresh stream: its counter started at 0)
        assert until(lambda: cn.stream(ident)["rx_packets"] > 20, timeout=5), (new, phone.output())
        (pc,) = phone.calls()
        assert pc["state"] == "confirmed"
    finally:
        path = capture.stop() if capture is not None else None
    if path is not None:
        pairs = check_answers(path, expect_hold=True)
        # the phone allows UPDATE: pjsua locks its codec with one (RFC 3311), answered in its 200
        assert any(p["offer"]["method"] == "UPDATE" for p in pairs), pairs


def test_codec_lock_from_pjsip_as_caller_is_answered_with_its_subset(party: dict[str, Any]) -> None:
    phone, cn = party["phone"], party["cn"]
    capture = sip_capture(party, "lock")
    try:
        ident = cn.make_call(phone.uri)
        cn.wait_call_state("CONFIRMED", call=ident, timeout=5)
        assert until(lambda: phone.calls() and phone.received() > 20), phone.calls()
        # pjsua offered its whole list, the phone answered PCMU and PCMA: pjsua re-offers the one it
        # kept (its codec lock) and the phone's answer is that one codec, not its first list again
        assert until(lambda: "re-offered" in phone.output(), timeout=5), phone.output()
        stream = cn.stream(ident)
        assert audio(phone)["codec"].startswith(stream["codec"]), (audio(phone), stream)
        assert until(lambda: cn.stream(ident)["rx_packets"] > 20)
    finally:
        path = capture.stop() if capture is not None else None
    if path is not None:
        rows = check_answers(path, expect_hold=False)
        reoffers = [r for r in rows if r["offer"]["cseq"] > 1]
        assert reoffers, rows
        last = reoffers[-1]
        assert len([f for f in last["answer"]["formats"] if f in ("0", "8")]) == 1, last


def _sdp_rows(path: Path) -> list[dict[str, Any]]:
    rows = tshark.fields(path, "sdp", "frame.number", "sip.Call-ID", "sip.CSeq.seq", "sip.CSeq.method",
                         "sip.Status-Code", "sdp.owner.username", "sdp.owner.version", "sdp.media",
                         "sdp.media_attr")
    out = []
    for number, call_id, cseq, method, status, user, version, media, attrs in rows:
        formats = media.split(" ")[3:] if media else []
        direction = next((a for a in attrs.split(",") if a in DIRECTIONS), "sendrecv")
        out.append({"frame": int(number), "call_id": call_id, "cseq": int(cseq), "method": method,
                    "status": status, "user": user, "version": int(version), "formats": formats,
                    "direction": direction, "media": media})
    return out


def check_answers(path: Path, *, expect_hold: bool) -> list[dict[str, Any]]:
    """Every offer from the CN (INVITE, re-INVITE, UPDATE) and the phone's answer in its 200:
    RFC 3264 §6 and §8."""
    assert tshark.malformed(path, "sdp") == ""
    rows = _sdp_rows(path)
    pairs = []
    for offer in (r for r in rows if r["method"] in ("INVITE", "UPDATE") and not r["status"]
                  and r["user"] != "sipmob"):
        answer = next((r for r in rows if r["status"] == "200" and r["call_id"] == offer["call_id"]
                       and (r["cseq"], r["method"]) == (offer["cseq"], offer["method"])
                       and r["frame"] > offer["frame"]), None)
        assert answer is not None and answer["user"] == "sipmob", offer
        assert answer["direction"] == REVERSED[offer["direction"]], (offer, answer)
        assert set(answer["formats"]) <= set(offer["formats"]), (offer, answer)
        pairs.append({"offer": offer, "answer": answer})
    ours = [r for r in rows if r["user"] == "sipmob"]
    for prev, this in itertools.pairwise(ours):
        changed = (prev["media"], prev["direction"]) != (this["media"], this["direction"])
        assert this["version"] == prev["version"] + (1 if changed else 0), (prev, this)
    if expect_hold:
        assert any(p["offer"]["direction"] == "sendonly" for p in pairs), pairs
    return pairs


def test_on_a_device_the_cns_hold_and_new_port_are_carried_to_it(party: dict[str, Any]) -> None:
    """RFC 3725: after a transfer the phone re-INVITEs the device with its part of each new offer
    of the CN; the device (a second ``sipmob phone``) holds, resumes and sends to the new port."""
    phone, cn, tmp = party["phone"], party["cn"], party["dir"]
    (tmp / "desk").mkdir()
    desk = Phone(tmp / "desk", f"{HOST}:{party['da'].port}", auto_answer=True, user="desk")
    try:
        with party["da"].client() as slp:
            slp.register(desk.uri, "(name=Desk phone),(media=audio-sendrecv),(audio-codecs=PCMU,PCMA)")
        ident = call_cn(phone, cn)
        done = phone.sipmob("transfer", "1", "--to", "desk-phone", "--mode", "mnc")
        assert done.returncode == 0, done.stderr + phone.output()
        assert until(lambda: desk.calls() and desk.received() > 20), desk.output()

        before = len(cn.events)
        cn.hold(ident)
        media_up(cn, before)
        assert until(lambda: audio(desk).get("hold") == "held by the remote party"), desk.calls()
        assert until(lambda: audio(phone).get("hold") == "held by the remote party"), phone.calls()
        assert not desk.calls()[0]["sending"]

        before = len(cn.events)
        cn.unhold(ident)
        media_up(cn, before)
        assert until(lambda: "hold" not in audio(desk) and desk.calls()[0]["sending"]), desk.calls()

        old = cn.stream(ident)
        before = len(cn.events)
        cn.reinvite_new_media(ident)
        media_up(cn, before)
        assert cn.stream(ident)["local_rtp"] != old["local_rtp"]
        assert until(lambda: cn.stream(ident)["rx_packets"] > 20, timeout=5), desk.output()
        assert "carried to Desk phone" in phone.output()

        # our own later move uses the CN's current description: the retrieved audio reaches the new port
        done = phone.sipmob("retrieve", "1")
        assert done.returncode == 0, done.stderr + phone.output()
        seen = cn.stream(ident)["rx_packets"]
        assert until(lambda: cn.stream(ident)["rx_packets"] > seen + 20, timeout=5), phone.output()
        assert phone.calls()[0]["sending"]
        # and the CN sends to the phone again, not to the device it left
        heard = phone.received()
        assert until(lambda: phone.received() > heard + 20, timeout=5), phone.output()
    finally:
        desk.stop()


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_a_device_that_refuses_the_cns_new_offer_loses_its_stream_not_the_call(party: dict[str, Any]) -> None:
    """The device (sipp) takes the transfer, then answers its part of the CN's hold 488: the phone
    answers the CN with that stream disabled (port 0) and ends the device's dialog; the call stays."""
    phone, cn, tmp = party["phone"], party["cn"], party["dir"]
    device = SippProcess(SCENARIOS / "uas_reject_reinvite.xml", workdir=tmp / "sipp", timeout=30,
                         extra_args=["-aa", "-mp", str(free_udp_port())])
    try:
        device.wait_listening()
        with party["da"].client() as slp:
            slp.register(f"sip:cn@127.0.0.1:{device.local_port}",
                         "(name=Stubborn phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
        ident = call_cn(phone, cn)
        done = phone.sipmob("transfer", "1", "--to", "stubborn-phone", "--mode", "mnc")
        assert done.returncode == 0, done.stderr + phone.output()
        capture = sip_capture(party, "refused")
        try:
            cn.hold(ident)
            # PJSIP reports no media state for a call left without media: the phone's word it is
            assert until(lambda: "refused the CN's new offer" in phone.output()), phone.output()
            assert until(lambda: phone.calls()[0]["devices"] == []), phone.calls()
            (call,) = phone.calls()
            assert call["state"] == "confirmed" and call["streams"] == []
            assert cn.calls()[0]["state"] == "CONFIRMED"
        finally:
            path = capture.stop() if capture is not None else None
        if path is not None:
            held = [p for p in _pairs(path) if p["offer"]["direction"] == "sendonly"]
            assert held and all(p["answer"]["media"].startswith("audio 0 ") for p in held), held
        result = device.wait(timeout=10)
        assert result.returncode == 0, result.stdout
    finally:
        device.stop()


def _pairs(path: Path) -> list[dict[str, Any]]:
    rows = _sdp_rows(path)
    return [{"offer": o, "answer": a} for o in rows if o["method"] == "INVITE" and not o["status"]
            for a in rows if a["status"] == "200" and a["cseq"] == o["cseq"] and a["call_id"] == o["call_id"]]


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_glare_on_the_device_leg_is_retried_and_the_cn_gets_the_devices_answer(party: dict[str, Any]) -> None:
    """The device (sipp) answers the phone's re-INVITE carrying the CN's hold 491; the phone tries
    again after the §14.1 back-off and answers the CN with the device's recvonly."""
    phone, cn, tmp = party["phone"], party["cn"], party["dir"]
    device = SippProcess(SCENARIOS / "uas_491_then_accept.xml", workdir=tmp / "sipp", timeout=40,
                         extra_args=["-aa", "-mp", str(free_udp_port())])
    try:
        device.wait_listening()
        with party["da"].client() as slp:
            slp.register(f"sip:dev@127.0.0.1:{device.local_port}",
                         "(name=Glare phone),(media=audio-sendrecv),(audio-codecs=PCMU)")
        ident = call_cn(phone, cn)
        done = phone.sipmob("transfer", "1", "--to", "glare-phone", "--mode", "mnc")
        assert done.returncode == 0, done.stderr + phone.output()
        capture = sip_capture(party, "glare")
        try:
            before = len(cn.events)
            cn.hold(ident)
            media_up(cn, before)
            assert until(lambda: "carried to Glare phone" in phone.output(), timeout=10), phone.output()
            assert audio(phone).get("hold") == "held by the remote party"
            (call,) = phone.calls()
            assert call["state"] == "confirmed" and call["devices"]
        finally:
            path = capture.stop() if capture is not None else None
        if path is not None:
            held = [p for p in _pairs(path) if p["offer"]["direction"] == "sendonly"]
            assert held and all(p["answer"]["direction"] == "recvonly"
                                and not p["answer"]["media"].startswith("audio 0") for p in held), held
        done = phone.sipmob("retrieve", "1")  # the device gets its BYE
        assert done.returncode == 0, done.stderr
        result = device.wait(timeout=15)
        assert result.returncode == 0, result.stdout
    finally:
        device.stop()
