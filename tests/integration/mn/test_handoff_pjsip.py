"""``sipmob phone`` in Session Handoff mode end to end (draft Figs. 4 and 5): PJSIP as the CN, a
second ``sipmob phone`` as the mobility-enhanced device (registered in the real `sipmob-slpda`),
the ``sipmob`` command as the user.

Evidence comes from every side: PJSIP reports the INVITE with Replaces and the replaced call
(its own events), the phone lists the call as handed off and then as its own again, and the RTP
counters show the CN's media reaching the device, then the phone. The security rules are checked
with a stranger's REFER to the device and a stranger's INVITE with Replaces to the phone, each
refused while the established call keeps its media. Loopback only; every process stopped by PID.
"""

from __future__ import annotations

import re
import secrets
import socket
import sys
import time
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
def home(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    (tmp_path / "mn").mkdir()
    (tmp_path / "tv").mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        address = f"{HOST}:{da.port}"
        cn = Pjsua(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        tv = Phone(tmp_path / "tv", address, auto_answer=False, user="tv", extra=(
            '[device]\nenabled = true\nname = "TV"\nroom = "living room"\nowners = ["sip:mn@127.0.0.1"]\n'))
        started.append(tv)
        phone = Phone(tmp_path / "mn", address, auto_answer=True)
        started.append(phone)
        # the device registers itself: wait until the phone finds it
        assert until(lambda: "mobility" in phone.sipmob("devices", "--json").stdout, timeout=10), \
            phone.sipmob("devices", "--json")
        yield {"phone": phone, "tv": tv, "cn": cn, "dir": tmp_path, "da": da}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def call_cn(phone: Phone, cn: Pjsua) -> None:
    out = phone.sipmob("call", cn.uri)
    assert out.returncode == 0, out.stderr + phone.output()
    cn.wait_call_state("CONFIRMED", timeout=5)
    assert until(lambda: phone.calls() and phone.received() > 20), phone.calls()


def handed_off(phone: Phone, tv: Phone, cn: Pjsua) -> None:
    out = phone.sipmob("transfer", "1", "--to", "tv", "--mode", "handoff")
    assert out.returncode == 0, out.stderr + phone.output() + tv.output()
    assert "handed off to TV [REFER 202, NOTIFY 100, 200]" in out.stdout  # each step the TV reported
    cn.wait_event(lambda e: e["event"] == "replaced", timeout=5)
    (record,) = phone.calls()
    assert record["state"] == "handed off to TV"
    assert until(lambda: tv.calls() and tv.received() > 20), tv.output()


def test_transfer_by_handoff_then_retrieve_by_nested_refer(home: dict[str, Any]) -> None:
    phone, tv, cn = home["phone"], home["tv"], home["cn"]
    call_cn(phone, cn)
    handed_off(phone, tv, cn)
    # the CN got the device's INVITE with Replaces and Referred-By naming the phone (pjsua's log)
    assert re.search(r"^Replaces: ", cn.log(), re.M)
    assert re.search(r"^Referred-By: <?sip:mn@127\.0\.0\.1", cn.log(), re.M)
    before = len(cn.events)

    out = phone.sipmob("retrieve", "1")
    assert out.returncode == 0, out.stderr + phone.output() + tv.output()
    assert "retrieved from TV" in out.stdout
    cn.wait_event(lambda e: e["event"] == "replaced", timeout=5, start=before)
    (pc,) = phone.calls()
    assert pc["id"] == "1" and pc["state"] == "confirmed"
    assert until(lambda: phone.received() > 20), phone.calls()
    assert until(lambda: not tv.calls()), tv.calls()
    assert re.search(r"^Referred-By: <?sip:tv@127\.0\.0\.1", cn.log(), re.M)


def test_auto_mode_hands_off_to_an_enhanced_device(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    call_cn(phone, cn)
    out = phone.sipmob("transfer", "1", "--to", "tv")
    assert out.returncode == 0 and "handed off" in out.stdout, out.stderr


def stranger_sends(port: int, method: str, target: str, headers: str, body: str = "") -> int:
    """A request from a party nobody knows, over its own UDP socket; the final status it gets."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(0.5)
        me = f"{HOST}:{sock.getsockname()[1]}"
        text = (f"{method} {target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{secrets.token_hex(6)}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:stranger@{me}>;tag={secrets.token_hex(4)}\r\n"
                f"To: <{target}>\r\nCall-ID: {secrets.token_hex(8)}@stranger\r\nCSeq: 1 {method}\r\n"
                f"Contact: <sip:stranger@{me}>\r\n{headers}"
                f"Content-Length: {len(body)}\r\n\r\n{body}")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            sock.sendto(text.encode(), (HOST, port))
            try:
                while True:
                    data = sock.recv(65535).decode(errors="replace")
                    status = int(data.split(" ", 2)[1])
                    if status >= 200:
                        return status
            except TimeoutError:
                continue
    raise AssertionError(f"no final answer to the stranger's {method}")


def cn_dialog(cn: Pjsua) -> tuple[str, str, str]:
    """(Call-ID, the CN's tag, the phone's tag) of the CN's call, from the INVITE pjsua reported
    and the 200 it logged."""
    invite = next(e for e in cn.events if e["event"] == "incoming_call")["message"]
    call_id = re.search(r"^Call-ID:\s*(\S+)", invite, re.M | re.I).group(1)  # type: ignore[union-attr]
    their = re.search(r"^From:.*;tag=([^;\s>]+)", invite, re.M | re.I).group(1)  # type: ignore[union-attr]
    tags = set(re.findall(r"^To:.*;tag=([^;\s>]+)", cn.log(), re.M | re.I))
    (ours,) = tags
    return call_id, ours, their


def test_a_strangers_refer_to_the_device_is_refused(home: dict[str, Any]) -> None:
    phone, tv, cn = home["phone"], home["tv"], home["cn"]
    call_cn(phone, cn)
    status = stranger_sends(tv.port, "REFER", tv.uri, f"Refer-To: <{cn.uri}>\r\n")
    assert status == 403
    assert not tv.calls()
    (pc,) = phone.calls()
    assert pc["state"] == "confirmed"
    seen = phone.received()
    assert until(lambda: phone.received() > seen + 10), "media stopped"


def test_a_strangers_invite_with_replaces_to_the_phone_is_refused(home: dict[str, Any]) -> None:
    phone, cn = home["phone"], home["cn"]
    call_cn(phone, cn)
    call_id, cn_tag, phone_tag = cn_dialog(cn)
    # the stranger knows the dialog exactly: Replaces names it as the phone sees it (RFC 3891 §3)
    sdp = ("v=0\r\no=s 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 9 RTP/AVP 0\r\n")
    status = stranger_sends(phone.port, "INVITE", phone.uri,
                            f"Replaces: {call_id};to-tag={phone_tag};from-tag={cn_tag}\r\n"
                            "Content-Type: application/sdp\r\n", sdp)
    assert status == 403
    (pc,) = phone.calls()
    assert pc["id"] == "1" and pc["state"] == "confirmed"
    seen = phone.received()
    assert until(lambda: phone.received() > seen + 10), "media stopped"


def test_pjsip_cannot_be_a_handoff_device_and_the_call_stays(home: dict[str, Any]) -> None:
    """PJSIP registered as mobility-enhanced: pjsua-lib drops a REFER outside a dialog unanswered
    ("unhandled by any modules" in its log), so it cannot be the device of Fig. 4; the phone says
    so within its device timeout and the call with the CN stays where it was, media flowing."""
    phone, cn = home["phone"], home["cn"]
    device = Pjsua(free_udp_port(), "pjdev", workdir=home["dir"] / "pjdev")
    try:
        with home["da"].client() as slp:
            slp.register(device.uri, "(name=PJ device),(media=audio-sendrecv),(audio-codecs=PCMU,PCMA),"
                                     "(mobility=enhanced)")
        call_cn(phone, cn)
        out = phone.sipmob("transfer", "1", "--to", "pj-device")
        assert out.returncode == 1
        assert "PJ device did not answer our REFER" in out.stderr
        assert "unhandled by any modules" in device.log()
        (pc,) = phone.calls()
        assert pc["state"] == "confirmed"
        seen = phone.received()
        assert until(lambda: phone.received() > seen + 10), "media stopped"
    finally:
        device.stop()


@pytest.mark.skipif(tshark.TSHARK is None, reason="tshark is not installed (apt install tshark)")
def test_tshark_decodes_every_message_of_a_handoff_and_a_retrieval(home: dict[str, Any]) -> None:
    phone, tv, cn = home["phone"], home["tv"], home["cn"]
    capture = tshark.LiveCapture(home["dir"] / "sh.pcapng",
                                 f"udp port {phone.port} or udp port {tv.port} or udp port {cn.port}")
    try:
        call_cn(phone, cn)
        handed_off(phone, tv, cn)
        out = phone.sipmob("retrieve", "1")
        assert out.returncode == 0, out.stderr
    finally:
        path = capture.stop()
    rows = tshark.fields(path, "sip && sip.Request-Line", "sip.Method", "sip.Replaces", "sip.Referred-by",
                         "sip.Refer-To", "sip.Target-Dialog")
    methods = {row[0] for row in rows}
    assert {"INVITE", "ACK", "REFER", "NOTIFY", "BYE", "OPTIONS"} <= methods
    assert sum(1 for row in rows if row[0] == "INVITE" and row[1] and row[2]) >= 2  # Figs. 4 and 5
    assert any(row[0] == "REFER" and "method=REFER" in row[3] for row in rows)  # the nested REFER
    # the TV's REFER back names the nested REFER's dialog (RFC 4538)
    assert any(row[0] == "REFER" and "Replaces" in row[3] and row[4] for row in rows)
    assert tshark.malformed(path, "sip") == ""
    assert tshark.expert_errors(path, "sip") == []
