"""linphone (5.1, `linphone-daemon`) holds and resumes a call that is on the phone.

The phone calls linphone (its callee: ending an outgoing call has crashed it, see PEERS.md), then
linphone pauses the call (a re-INVITE offering ``a=sendonly``) and resumes it (``a=sendrecv``).
The phone must answer ``recvonly`` and stop sending while held, show "held by the remote party",
and send again once resumed; tshark decodes every SIP message and SDP without a malformed warning.
Loopback only; every process stopped by PID.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers import tshark
from tests.peers.linphone import LINPHONE_DAEMON, Linphone
from tests.peers.ports import free_udp_port

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(LINPHONE_DAEMON is None, reason="linphone-daemon is not installed (apt "
                                 "linphone-cli)")]


@pytest.fixture
def party(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    (tmp_path / "mn").mkdir()
    da = Slpda(tmp_path / "da").start()
    started: list[Any] = []
    try:
        cn = Linphone(free_udp_port(), "cn", workdir=tmp_path / "cn")
        started.append(cn)
        # linphone without a sound card may send no RTP: the media watchdog stays out of this test
        phone = Phone(tmp_path / "mn", f"{HOST}:{da.port}", media_timeout=0)
        started.append(phone)
        yield {"phone": phone, "cn": cn, "dir": tmp_path}
    finally:
        for peer in reversed(started):
            peer.stop()
        da.stop()


def audio(phone: Phone) -> dict[str, Any]:
    (call,) = phone.calls()
    return dict(next(s for s in call["streams"] if s["media"] == "audio"))


def test_linphone_holds_and_resumes_the_call_on_the_phone(party: dict[str, Any]) -> None:
    phone, cn = party["phone"], party["cn"]
    ports = f"udp port {phone.port} or udp port {cn.port}"
    capture = tshark.LiveCapture(party["dir"] / "hold.pcapng", ports) if tshark.TSHARK is not None else None
    try:
        out = phone.sipmob("call", cn.uri)
        assert out.returncode == 0, out.stderr + phone.output() + cn.output()[-3000:]
        assert until(lambda: cn.call_state() == "StreamsRunning", timeout=10), cn.command("call-status 1")
        assert until(lambda: phone.calls() and phone.calls()[0]["sending"]), phone.calls()
        assert "hold" not in audio(phone)

        cn.ok("call-pause 1")
        assert until(lambda: audio(phone).get("hold") == "held by the remote party"), phone.calls()
        assert not phone.calls()[0]["sending"]
        assert until(lambda: cn.call_state() == "Paused", timeout=10), cn.command("call-status 1")

        cn.ok("call-resume 1")
        assert until(lambda: "hold" not in audio(phone) and phone.calls()[0]["sending"]), phone.calls()
        assert until(lambda: cn.call_state() == "StreamsRunning", timeout=10), cn.command("call-status 1")
        assert phone.calls()[0]["state"] == "confirmed"
    finally:
        path = capture.stop() if capture is not None else None
    if path is not None:
        rows = tshark.fields(path, "sdp && udp.srcport == " + str(phone.port), "sdp.media_attr")
        named = ("sendrecv", "recvonly", "sendonly", "inactive")
        directions = [a for row in rows for a in row[0].split(",") if a in named]
        assert "recvonly" in directions, rows  # the answer to linphone's sendonly (RFC 3264 §6.1)
        assert tshark.malformed(path, "sip") == ""
        assert tshark.malformed(path, "sdp") == ""
