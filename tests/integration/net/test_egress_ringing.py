"""An outgoing call still ringing when its egress fails is moved before it is answered.

``sipmob phone`` in `home` (`twowan.TwoWan`, priority: wan1 first) calls PJSIP in `internet`, which
rings and is answered by the test only after the failure:
- with 100rel (PJSIP's reliable 183 carries its answer, PRACKed) and wan1 failing one way (what
  the home sends over wan1 is lost, what comes in still arrives; the probes find it), the phone
  sends an UPDATE (RFC 3311) in the early dialog from wan2's address; the callee's 2xx still
  reaches the INVITE's Via, and the call is up with its media on wan2;
- without 100rel and wan1's link down, the phone CANCELs the INVITE (from wan2, with the
  INVITE's Via, RFC 3261 §9.1) and INVITEs again from wan2; the callee rings anew and answers.
The capture at the CN says where SIP and RTP come from. Needs root, pjsua2.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integration.net.twowan import (
    CN,
    HOME1,
    HOME2,
    CaptureAtCN,
    HomePhone,
    TwoWan,
    egress_toml,
    phone_stage,
    until,
)
from tests.peers.netns import available
from tests.peers.pjsua import Pjsua

pytest.importorskip("pjsua2")
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not available(), reason="needs network namespaces (root)")]

PORT = 5070


@pytest.fixture
def stage(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    prack = request.param
    def callee(net: TwoWan) -> Pjsua:
        return Pjsua(PORT, "cn", workdir=tmp_path / "cn", auto_answer=False, prack=prack, host=CN,
                     wrap=net.internet.command)

    with phone_stage(tmp_path, egress_toml(interval=0.5, down_after=3, probe_port=PORT),
                     phone_dir=tmp_path / "mn", cn=callee) as stage:
        yield stage


def call_in_background(phone: HomePhone, uri: str) -> tuple[threading.Thread, list[Any]]:
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(phone.command("call", timeout=60, uri=uri))
        except Exception as exc:  # the test reports it
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def ring(cn: Pjsua, start: int = 0, status: int = 180) -> int:
    incoming = cn.wait_event(lambda e: e["event"] == "incoming_call", 10, start)
    cn.answer(incoming["call"], status)
    return int(incoming["call"])


def established(phone: HomePhone, capture: CaptureAtCN, thread: threading.Thread, result: list[Any],
                since: float) -> None:
    thread.join(30)
    assert result and "established" in str(result[0]), (result, phone.output()[-4000:])
    calls = phone.command("calls")
    assert len(calls) == 1 and calls[0]["state"] == "confirmed", calls
    assert phone.command("egress")["egresses"][1]["calls"] == ["1"]  # on wan2
    assert until(lambda: len(capture.rtp_from(HOME2, since)) > 20, 5), phone.output()[-4000:]
    before = phone.received()
    assert until(lambda: phone.received() > before + 20, 5), \
        f"no RTP from the callee\n{phone.output()[-4000:]}"


@pytest.mark.parametrize("stage", ["mandatory"], indirect=True)
def test_a_call_ringing_with_100rel_moves_by_update_in_its_early_dialog(stage: dict[str, Any]) -> None:
    net, cn, phone, capture = stage["net"], stage["cn"], stage["phone"], stage["capture"]
    thread, result = call_in_background(phone, cn.uri)
    call = ring(cn, status=183)  # PJSIP's answer goes in a 183 (its 180 has no body)
    assert until(lambda: capture.sip_from(HOME1, 0, "PRACK", PORT), 5), "no PRACK: the 183 was not reliable"
    t0 = time.monotonic()
    net.upstream_dead(net.wan1, outbound_only=True)
    assert until(lambda: capture.sip_from(HOME2, t0, "UPDATE", PORT), 10), phone.output()[-4000:]
    assert until(lambda: "moved to 10.200.2.2 by UPDATE while ringing" in phone.output(), 5), \
        phone.output()[-4000:]
    cn.answer(call, 200)
    established(phone, capture, thread, result, t0)
    assert not capture.sip_from(HOME2, t0, "CANCEL", PORT) and not capture.sip_from(HOME2, t0, "INVITE", PORT)
    assert len([e for e in cn.events if e["event"] == "incoming_call"]) == 1


@pytest.mark.parametrize("stage", [None], indirect=True)
def test_a_call_ringing_without_100rel_is_cancelled_and_invited_again_from_the_survivor(
        stage: dict[str, Any]) -> None:
    net, cn, phone, capture = stage["net"], stage["cn"], stage["phone"], stage["capture"]
    thread, result = call_in_background(phone, cn.uri)
    ring(cn)
    mark = len(cn.events)
    t0 = time.monotonic()
    net.link_down("h1")
    assert until(lambda: capture.sip_from(HOME2, t0, "CANCEL", PORT), 5), phone.output()[-4000:]
    second = ring(cn, mark)  # a new INVITE, from wan2
    assert capture.sip_from(HOME2, t0, "INVITE", PORT)
    cn.wait_call_state("DISCONNECTED", timeout=5, start=mark)  # the first one, cancelled
    cn.answer(second, 200)
    established(phone, capture, thread, result, t0)
    assert "CANCEL, and the INVITE again from 10.200.2.2" in phone.output()
