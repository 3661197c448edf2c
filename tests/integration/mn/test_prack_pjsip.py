"""Reliable provisional responses (RFC 3262) between the phone and PJSIP with 100rel required.

PJSIP's account has ``prackUse = MANDATORY``: its INVITEs carry ``Require: 100rel``, and as callee
it sends its 18x reliably. Both directions ring first and are answered by hand, so a reliable 180
and its PRACK happen on the wire; a capture shows them (RSeq, RAck naming it, the 200 to the PRACK
before the 200 to the INVITE), and tshark decodes every message without a malformed warning.
Loopback only; every process stopped by PID.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers import tshark
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_udp_port

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytest.importorskip("pjsua2")
pytestmark = [pytest.mark.peer]


@pytest.fixture
def party(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    (tmp_path / "mn").mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn", auto_answer=False, prack="mandatory")
        started.append(cn)
        phone = Phone(tmp_path / "mn", f"{HOST}:{da.port}", auto_answer=False)
        started.append(phone)
        yield {"phone": phone, "cn": cn, "dir": tmp_path}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def capture(party: dict[str, Any], name: str) -> tshark.LiveCapture | None:
    if tshark.TSHARK is None:
        return None
    ports = f"udp port {party['phone'].port} or udp port {party['cn'].port}"
    return tshark.LiveCapture(party["dir"] / f"{name}.pcapng", ports)


def sip_rows(path: Path) -> list[dict[str, str]]:
    names = ("frame.number", "ip.src", "udp.srcport", "sip.Method", "sip.Status-Code", "sip.CSeq.method",
             "sip.RSeq", "sip.RAck", "sip.Require", "sip.Supported")
    rows = tshark.fields(path, "sip", *names)
    return [dict(zip(names, row + [""] * (len(names) - len(row)), strict=True)) for row in rows]


def check_reliable_ringing(path: Path, ringer_port: int) -> None:
    """A reliable 180 from `ringer_port`, a PRACK naming its RSeq, 200 to the PRACK, then the 200
    to the INVITE; and nothing malformed."""
    rows = sip_rows(path)
    ringing = [r for r in rows if r["sip.Status-Code"] == "180" and r["udp.srcport"] == str(ringer_port)]
    assert ringing, rows
    rseq = ringing[0]["sip.RSeq"]
    assert rseq and "100rel" in ringing[0]["sip.Require"].lower(), ringing[0]
    pracks = [r for r in rows if r["sip.Method"] == "PRACK"]
    assert pracks and pracks[0]["sip.RAck"].split()[0] == rseq, (pracks, rseq)
    prack_ok = [r for r in rows if r["sip.Status-Code"] == "200" and r["sip.CSeq.method"] == "PRACK"]
    invite_ok = [r for r in rows if r["sip.Status-Code"] == "200" and r["sip.CSeq.method"] == "INVITE"]
    assert prack_ok and invite_ok, rows
    assert int(prack_ok[0]["frame.number"]) < int(invite_ok[0]["frame.number"]), rows
    assert tshark.malformed(path, "sip") == ""
    assert tshark.malformed(path, "sdp") == ""


def test_pjsip_requiring_100rel_calls_the_phone_which_rings_reliably(party: dict[str, Any]) -> None:
    phone, cn = party["phone"], party["cn"]
    cap = capture(party, "uas")
    try:
        ident = cn.make_call(phone.uri)
        incoming = until(lambda: [c for c in phone.calls() if c["state"] == "ringing"], timeout=10)
        assert incoming, phone.output()
        # PJSIP saw the 180 only because its PRACK was answered: early, and no 420
        cn.wait_call_state("EARLY", call=ident, timeout=10)
        out = phone.sipmob("answer", incoming[0]["id"])
        assert out.returncode == 0, out.stderr + phone.output()
        cn.wait_call_state("CONFIRMED", call=ident, timeout=10)
        assert until(lambda: phone.calls() and phone.calls()[0]["state"] == "confirmed"), phone.calls()
        assert until(lambda: phone.received() > 20), phone.calls()
    finally:
        path = cap.stop() if cap is not None else None
    if path is not None:
        check_reliable_ringing(path, phone.port)
        requires = [r["sip.Require"] for r in sip_rows(path) if r["sip.Method"] == "INVITE"]
        assert any("100rel" in r.lower() for r in requires), requires


def test_the_phone_calls_pjsip_and_pracks_its_reliable_180(party: dict[str, Any]) -> None:
    phone, cn = party["phone"], party["cn"]
    cap = capture(party, "uac")
    result: dict[str, Any] = {}
    placing = threading.Thread(target=lambda: result.update(out=phone.sipmob("call", cn.uri)))
    try:
        placing.start()
        incoming = cn.wait_event(lambda e: e["event"] == "incoming_call", timeout=10)
        assert "100rel" in incoming["message"].lower()  # our Supported, which PJSIP requires
        cn.answer(incoming["call"], 180)
        cn.wait_call_state("EARLY", call=incoming["call"], timeout=10)
        # PJSIP holds its 200 until the 180's PRACK (RFC 3262 §3): the capture shows the order
        cn.answer(incoming["call"], 200)
        cn.wait_call_state("CONFIRMED", call=incoming["call"], timeout=10)
        placing.join(30)
        assert result["out"].returncode == 0, result["out"].stderr + phone.output()
        assert until(lambda: phone.calls() and phone.received() > 20), phone.calls()
    finally:
        placing.join(30)
        path = cap.stop() if cap is not None else None
    if path is not None:
        check_reliable_ringing(path, cn.port)


def test_pjsip_moving_its_media_by_update_while_the_phone_rings_gets_the_phones_audio_there(
        party: dict[str, Any]) -> None:
    """RFC 3311 §5.2 after RFC 3262 §5: the phone's answer went in its reliable 180, so PJSIP may
    offer again before the 200; it recreates its media on a new port and sends UPDATE. The phone
    answers it from the call's state and its RTP goes to the new port once the call is answered."""
    phone, cn = party["phone"], party["cn"]
    cap = capture(party, "early-update")
    try:
        ident = cn.make_call(phone.uri)
        incoming = until(lambda: [c for c in phone.calls() if c["state"] == "ringing"], timeout=10)
        assert incoming, phone.output()
        cn.wait_call_state("EARLY", call=ident, timeout=10)
        start = len(cn.events)
        cn.update(ident, new_media=True)
        # PJSIP's media is renegotiated by the UPDATE's 200 (its media state event)
        cn.wait_event(lambda e: e.get("event") == "media_state" and e.get("call") == ident,
                      timeout=10, start=start)
        out = phone.sipmob("answer", incoming[0]["id"])
        assert out.returncode == 0, out.stderr + phone.output()
        cn.wait_call_state("CONFIRMED", call=ident, timeout=10)
        assert until(lambda: cn.stream(ident)["rx_packets"] > 20, timeout=15), cn.stream(ident)
        stream = cn.stream(ident)
    finally:
        path = cap.stop() if cap is not None else None
    if path is None:
        return
    assert tshark.malformed(path, "sip") == "" and tshark.malformed(path, "sdp") == ""
    names = ("frame.number", "sip.Method", "sip.Status-Code", "sip.CSeq.method", "sdp.media",
             "sdp.media_attr", "sdp.owner.version")
    rows = [dict(zip(names, row + [""] * (len(names) - len(row)), strict=True))
            for row in tshark.fields(path, "sdp", *names)]
    invite = next(r for r in rows if r["sip.Method"] == "INVITE")
    early = next(r for r in rows if r["sip.Status-Code"] == "180")
    update = next(r for r in rows if r["sip.Method"] == "UPDATE")
    update_ok = next(r for r in rows if r["sip.Status-Code"] == "200" and r["sip.CSeq.method"] == "UPDATE")
    moved_to = update["sdp.media"].split(" ")[1]
    assert moved_to != invite["sdp.media"].split(" ")[1], (invite, update)  # really a new port
    # our port kept, a codec subset, sendrecv answered with sendrecv, the version kept (nothing of
    # ours changed: RFC 3264 §8)
    assert update_ok["sdp.media"].split(" ")[1] == early["sdp.media"].split(" ")[1], (early, update_ok)
    assert set(update_ok["sdp.media"].split(" ")[3:]) <= set(update["sdp.media"].split(" ")[3:]), update_ok
    assert not {"sendonly", "recvonly", "inactive"} & set(update_ok["sdp.media_attr"].split(",")), update_ok
    assert update_ok["sdp.owner.version"] == early["sdp.owner.version"], (early, update_ok)
    # the phone's audio reaches PJSIP's new port, from the port of the phone's answer
    assert stream["local_rtp"].endswith(f":{moved_to}"), stream
    assert stream["remote_rtp"].endswith(f":{early['sdp.media'].split(' ')[1]}"), stream
