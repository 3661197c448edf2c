"""Session timers (RFC 4028) between the phone and independent peers, with the shortest interval
allowed (90 s), so each test lasts about a minute.

- An interval below 90 s gets 422 with Min-SE, and a refresh that never comes ends the call.
- The phone as the refresher, as caller and as callee: sipp as the CN makes it so (``refresher=uac``
  in its 200, or ``refresher=uas`` in its INVITE) and expects an UPDATE without a body at about
  half the interval; as callee its SDP states ``a=rtcp`` (RFC 3605) on a port of its own, and the
  phone's RTCP reports go there.
- PJSIP as the refresher: pjsua calls with ``Session-Expires: 90`` and refreshes on its own; the
  phone answers each refresh with the agreed ``Session-Expires`` and the call outlives the point
  (60 s) at which a missed refresh would have ended it.

Where a test captures, tshark decodes every SIP message (and RTCP) without a malformed warning.
Loopback only; every process stopped by PID.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers import tshark
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_udp_port
from tests.peers.sipp import SIPP, SippProcess, run_scenario

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
try:
    import pjsua2  # noqa: F401
    HAVE_PJSUA2 = True
except ImportError:
    HAVE_PJSUA2 = False
pytestmark = [pytest.mark.peer]


@pytest.fixture
def setting(tmp_path: Path) -> Iterator[dict[str, Any]]:
    (tmp_path / "da").mkdir()
    (tmp_path / "mn").mkdir()
    da = Slpda(tmp_path / "da").start()
    try:
        # sipp sends no RTP: the media watchdog would end its calls before the timers matter
        phone = Phone(tmp_path / "mn", f"{HOST}:{da.port}", auto_answer=True, media_timeout=0)
        try:
            yield {"phone": phone, "dir": tmp_path, "da": da}
        finally:
            phone.stop()
    finally:
        da.stop()


def sip_rows(path: Path) -> list[dict[str, str]]:
    names = ("frame.time_relative", "udp.srcport", "sip.Method", "sip.Status-Code", "sip.CSeq.method",
             "sip.Session-Expires", "sip.Content-Length")
    rows = tshark.fields(path, "sip", *names)
    return [dict(zip(names, row + [""] * (len(names) - len(row)), strict=True)) for row in rows]


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_a_too_small_interval_gets_422_and_a_refresh_that_never_comes_ends_the_call(
        setting: dict[str, Any]) -> None:
    """sipp calls with ``Session-Expires: 30`` (422 with Min-SE 90), again with 90, and never
    refreshes: the phone BYEs at about 60 s (RFC 4028 §10), not before the refresh was due
    (45 s), and the call is gone."""
    phone = setting["phone"]
    started = time.monotonic()
    result = run_scenario(SCENARIOS / "uac_refresh_never_comes.xml", f"127.0.0.1:{phone.port}",
                          extra_args=["-s", "mn", "-mp", str(free_udp_port())], timeout=100,
                          workdir=setting["dir"] / "sipp")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + phone.output()
    assert 45 < took < 85, took
    assert "no session refresh" in phone.output()
    assert until(lambda: phone.calls() == [])


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_the_phone_as_refresher_sends_an_update_at_half_the_interval(setting: dict[str, Any]) -> None:
    phone, tmp = setting["phone"], setting["dir"]
    rtcp_port = free_udp_port()
    cn = SippProcess(SCENARIOS / "uas_phone_refreshes.xml", workdir=tmp / "sipp", timeout=120,
                     extra_args=["-mp", str(free_udp_port()), "-set", "rtcpport", str(rtcp_port)])
    ports = f"udp port {phone.port} or udp port {cn.local_port} or udp dst port {rtcp_port}"
    capture = tshark.LiveCapture(tmp / "refresh.pcapng", ports) if tshark.TSHARK is not None else None
    try:
        cn.wait_listening()
        out = phone.sipmob("call", f"sip:cn@127.0.0.1:{cn.local_port}")
        assert out.returncode == 0, out.stderr + phone.output()
        up = time.monotonic()
        messages = tmp / "sipp" / "messages.log"
        assert until(lambda: messages.exists() and "UPDATE sip:" in messages.read_text(errors="replace"),
                     timeout=70), phone.output()
        took = time.monotonic() - up
        assert 35 < took < 60, took  # §10: at half of the 90 s, not at once and not too late
        call = phone.calls()[0]
        assert call["state"] == "confirmed"
        done = phone.sipmob("hangup", str(call["id"]))
        assert done.returncode == 0, done.stderr
        result = cn.wait(30)
        assert result.returncode == 0, result.stdout + "\n".join(result.errors) + phone.output()
    finally:
        cn.stop()
        path = capture.stop() if capture is not None else None
    if path is not None:
        updates = [r for r in sip_rows(path) if r["sip.Method"] == "UPDATE"]
        assert len(updates) == 1 and updates[0]["sip.Content-Length"] in ("", "0"), updates
        assert tshark.malformed(path, "sip") == ""
        # RFC 3605: the phone's RTCP (sender reports every 5 s) went to the port a=rtcp stated
        as_rtcp = ("-r", str(path), "-d", f"udp.port=={rtcp_port},rtcp")
        reports = tshark.tshark(*as_rtcp, "-Y", f"udp.dstport == {rtcp_port} && rtcp.pt == 200",
                                "-T", "fields", "-e", "rtcp.senderssrc").split()
        assert len(reports) >= 3, reports
        assert tshark.tshark(*as_rtcp, "-Y", "rtcp && _ws.malformed").strip() == ""


@pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")
def test_the_phone_as_callee_refreshes_when_the_caller_names_it_the_refresher(
        setting: dict[str, Any]) -> None:
    """sipp calls with ``Session-Expires: 90;refresher=uas``: the phone agrees and sends the
    refresh UPDATE itself about 45 s later (RFC 4028 §9, §10)."""
    phone = setting["phone"]
    started = time.monotonic()
    result = run_scenario(SCENARIOS / "uac_phone_refreshes.xml", f"127.0.0.1:{phone.port}",
                          extra_args=["-s", "mn", "-mp", str(free_udp_port())], timeout=100,
                          workdir=setting["dir"] / "sipp")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stdout + "\n".join(result.errors) + phone.output()
    assert 35 < took < 65, took
    assert until(lambda: phone.calls() == [])


@pytest.mark.skipif(not HAVE_PJSUA2, reason="pjsua2 is not installed (tests/requirements.txt)")
def test_pjsip_refreshing_every_45_s_keeps_the_call_past_the_expiry(setting: dict[str, Any]) -> None:
    phone, tmp = setting["phone"], setting["dir"]
    cn = Pjsua(free_udp_port(), "cn", workdir=tmp / "cn", session_expires=90)
    capture = (tshark.LiveCapture(tmp / "pjsip.pcapng", f"udp port {phone.port} or udp port {cn.port}")
               if tshark.TSHARK is not None else None)
    try:
        ident = cn.make_call(phone.uri)
        cn.wait_call_state("CONFIRMED", call=ident, timeout=10)
        up = time.monotonic()
        # past 60 s (90 - min(32, 30)): had PJSIP's refresh at 45 s not been taken, the call
        # would have ended by now
        assert not until(lambda: not phone.calls(), timeout=70), phone.output()
        assert time.monotonic() - up > 65
        assert phone.calls()[0]["state"] == "confirmed"
        assert cn.calls()[0]["state"] == "CONFIRMED"
        assert "no session refresh" not in phone.output()
    finally:
        path = capture.stop() if capture is not None else None
        cn.stop()
    if path is not None:
        rows = sip_rows(path)
        ok = [r for r in rows if r["sip.Status-Code"] == "200" and r["udp.srcport"] == str(phone.port)
              and r["sip.CSeq.method"] in ("INVITE", "UPDATE")]
        # the 200 to the INVITE and at least one refresh, each stating the agreed interval
        assert len(ok) >= 2 and all(r["sip.Session-Expires"].startswith("90") for r in ok), rows
        assert tshark.malformed(path, "sip") == ""
        assert tshark.malformed(path, "sdp") == ""
