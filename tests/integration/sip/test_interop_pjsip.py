"""Our UA against PJSIP (pjsua2) for transfers: REFER (RFC 3515), Referred-By (RFC 3892) and
INVITE with Replaces (RFC 3891), in both directions, on loopback.

Our UA runs as a program (`tests.peers.sipmob_ua`), PJSIP in its own child (`tests.peers.pjsua`).
Every wait is bounded; every process is stopped by its PID. The last test has tshark check that
nothing our UA sent during such a transfer is malformed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers import tshark
from tests.peers.pjsua import Pjsua
from tests.peers.ports import free_loopback_address, free_udp_port
from tests.peers.sipmob_ua import SipmobUA

try:
    import pjsua2  # noqa: F401
    HAVE_PJSUA2 = True
except ImportError:
    HAVE_PJSUA2 = False

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not HAVE_PJSUA2, reason="pjsua2 is not installed (tests/requirements.txt)")]


class Peers:
    """Starts our UAs and pjsua endpoints for one test and stops them all afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[SipmobUA | Pjsua] = []

    def ua(self, user: str, port: int | None = None, **options: Any) -> SipmobUA:
        host = options.get("host", "127.0.0.1")
        ua = SipmobUA(port or free_udp_port(host), user, workdir=self.tmp_path, **options)
        self.started.append(ua)
        return ua

    def pjsua(self, user: str) -> Pjsua:
        phone = Pjsua(free_udp_port(), user, workdir=self.tmp_path)
        self.started.append(phone)
        return phone

    def stop(self) -> None:
        for peer in reversed(self.started):
            peer.stop()


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    started = Peers(tmp_path)
    yield started
    started.stop()


def _call(ua: SipmobUA, target: str) -> str:
    ref = ua.invite(target)
    ua.wait("established", ref=ref)
    return ref


def _header(message: str, name: str) -> str | None:
    for line in message.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# (a) We REFER pjsua (blind transfer) -------------------------------------------------------------


def test_pjsua_accepts_our_refer_and_notifies_100_then_200(peers: Peers) -> None:
    ua = peers.ua("transferor")
    transferee = peers.pjsua("transferee")
    target = peers.pjsua("target")
    ref = _call(ua, transferee.uri)
    ua.refer(ref, target.uri, referred_by=f"<{ua.uri}>")
    assert ua.wait("refer_accepted", ref=ref)["status"] == 202
    final = ua.wait("refer_final", ref=ref)
    assert final["final"] == 200
    assert final["statuses"][0] == 100 and final["statuses"][-1] == 200


def test_pjsua_invites_our_refer_target_with_our_referred_by(peers: Peers) -> None:
    ua = peers.ua("transferor")
    transferee = peers.pjsua("transferee")
    target = peers.pjsua("target")
    ref = _call(ua, transferee.uri)
    ua.refer(ref, target.uri, referred_by=f"<{ua.uri}>")
    invite = target.wait_event(lambda e: e["event"] == "incoming_call")["message"]
    assert invite.startswith(f"INVITE {target.uri} SIP/2.0")
    referred_by = _header(invite, "Referred-By")
    assert referred_by is not None and ua.uri in referred_by
    target.wait_call_state("CONFIRMED")


# (b) We send INVITE with Replaces to pjsua ------------------------------------------------------


def test_pjsua_answers_our_invite_with_replaces_and_byes_the_replaced_dialog(peers: Peers) -> None:
    first = peers.ua("first")
    second = peers.ua("second")
    phone = peers.pjsua("phone")
    old = _call(first, phone.uri)
    new = second.invite(phone.uri, headers=[("Replaces", first.replaces_for(old)),
                                            ("Require", "replaces")])
    second.wait("established", ref=new)
    replaced = phone.wait_event(lambda e: e["event"] == "replaced")
    # pjsua hangs up the replaced dialog itself, once the new one is up (RFC 3891 §3).
    assert first.wait("terminated", ref=old)["reason"] == "bye"
    phone.wait_call_state("DISCONNECTED", replaced["old_call"])  # our 200 for its BYE arrived
    [remaining] = phone.calls()
    assert remaining["call_id"] == second.wait("established", ref=new)["call_id"]


def test_pjsua_rejects_our_replaces_for_an_unknown_dialog(peers: Peers) -> None:
    ua = peers.ua("caller")
    phone = peers.pjsua("phone")
    ref = ua.invite(phone.uri, headers=[("Replaces", "nosuchcall@127.0.0.1;to-tag=a;from-tag=b"),
                                        ("Require", "replaces")])
    assert ua.wait("call_failed", ref=ref)["status"] == 481  # RFC 3891 §3
    assert phone.calls() == []


# (c) pjsua REFERs us ----------------------------------------------------------------------------


def test_our_ua_acts_on_pjsua_refer_with_referred_by(peers: Peers) -> None:
    ua = peers.ua("transferee")
    target = peers.ua("target")
    phone = peers.pjsua("transferor")
    ref = _call(ua, phone.uri)
    [held] = phone.calls()
    phone.transfer(held["id"], target.uri)
    received = ua.wait("refer_received", ref=ref)
    assert target.uri in received["refer_to"]
    incoming = target.wait("incoming_call")
    assert incoming["referred_by"] is not None and "transferor@127.0.0.1" in incoming["referred_by"]
    assert ua.wait("refer_outcome", ref=ref)["status"] == 200


def test_our_ua_reports_refer_progress_to_pjsua(peers: Peers) -> None:
    ua = peers.ua("transferee")
    target = peers.ua("target")
    phone = peers.pjsua("transferor")
    ref = _call(ua, phone.uri)
    [held] = phone.calls()
    phone.transfer(held["id"], target.uri)
    final = phone.wait_event(lambda e: e["event"] == "transfer_status" and e["final"])
    assert final["code"] == 200
    progress = [e["code"] for e in phone.events if e["event"] == "transfer_status"]
    assert progress[0] < 200  # NOTIFY 100 Trying came first (RFC 3515 §2.4.5)
    ua.wait("refer_outcome", ref=ref)


def test_our_ua_reports_a_failed_refer_target_to_pjsua(peers: Peers) -> None:
    ua = peers.ua("transferee")
    busy = peers.ua("busy", reject_status=486)
    phone = peers.pjsua("transferor")
    ref = _call(ua, phone.uri)
    [held] = phone.calls()
    phone.transfer(held["id"], busy.uri)
    assert ua.wait("refer_outcome", ref=ref)["status"] == 486
    final = phone.wait_event(lambda e: e["event"] == "transfer_status" and e["final"])
    assert final["code"] == 486


def test_our_ua_completes_pjsua_attended_transfer_with_replaces(peers: Peers) -> None:
    transferee = peers.ua("transferee")
    # pjsua's Refer-To names the target by its address-of-record (the dialog's remote URI), which
    # carries no port: the target must be reachable on 5060, so it gets a loopback address of its own.
    target = peers.ua("target", port=5060, host=free_loopback_address(5060))
    phone = peers.pjsua("transferor")
    held_ref = _call(transferee, phone.uri)
    consultation_ref = _call(target, phone.uri)
    by_remote = {c["call_id"]: c["id"] for c in phone.calls()}
    held = by_remote[transferee.wait("established", ref=held_ref)["call_id"]]
    consultation = by_remote[target.wait("established", ref=consultation_ref)["call_id"]]
    phone.transfer_replaces(held, consultation)
    received = transferee.wait("refer_received", ref=held_ref)
    assert "Replaces=" in received["refer_to"]
    incoming = target.wait("incoming_call")
    assert incoming["replaced_ref"] == consultation_ref
    assert target.wait("terminated", ref=consultation_ref)["reason"] == "replaced"
    phone.wait_call_state("DISCONNECTED", consultation)
    assert transferee.wait("refer_outcome", ref=held_ref)["status"] == 200


# Wireshark on what we sent ----------------------------------------------------------------------


@pytest.mark.skipif(tshark.TSHARK is None, reason="tshark is not installed (apt install tshark)")
def test_tshark_finds_nothing_malformed_in_our_transfer_messages(peers: Peers, tmp_path: Path) -> None:
    ua = peers.ua("transferor")
    transferee = peers.pjsua("transferee")
    target = peers.pjsua("target")
    capture = tshark.LiveCapture(tmp_path / "transfer.pcapng", f"udp port {ua.port}")
    try:
        ref = _call(ua, transferee.uri)
        ua.refer(ref, target.uri, referred_by=f"<{ua.uri}>")
        ua.wait("refer_final", ref=ref)
        ua.bye(ref)
        ua.wait("bye_done", ref=ref)
    finally:
        path = capture.stop()
    ours = f"sip && udp.srcport == {ua.port}"
    sent = {row[0] for row in tshark.fields(path, ours + " && sip.Request-Line", "sip.Method")}
    assert {"INVITE", "ACK", "REFER", "BYE"} <= sent
    assert tshark.fields(path, ours + " && sip.Status-Line", "sip.Status-Code")  # we answered NOTIFYs
    assert tshark.malformed(path, "sip") == ""
    assert tshark.expert_errors(path, "sip") == []


@pytest.mark.skipif(tshark.TSHARK is None, reason="tshark is not installed (apt install tshark)")
def test_tshark_finds_nothing_malformed_in_our_side_of_an_attended_transfer(peers: Peers,
                                                                            tmp_path: Path) -> None:
    transferee = peers.ua("transferee")
    target_host = free_loopback_address(5060)
    target = peers.ua("target", port=5060, host=target_host)
    phone = peers.pjsua("transferor")
    capture = tshark.LiveCapture(tmp_path / "attended.pcapng",
                                 f"udp port {transferee.port} or (host {target_host} and udp port 5060)")
    try:
        held_ref = _call(transferee, phone.uri)
        consultation_ref = _call(target, phone.uri)
        by_remote = {c["call_id"]: c["id"] for c in phone.calls()}
        held = by_remote[transferee.wait("established", ref=held_ref)["call_id"]]
        consultation = by_remote[target.wait("established", ref=consultation_ref)["call_id"]]
        phone.transfer_replaces(held, consultation)
        transferee.wait("refer_outcome", ref=held_ref)
        phone.wait_event(lambda e: e["event"] == "transfer_status" and e["final"])
    finally:
        path = capture.stop()
    ours = f"sip && (udp.srcport == {transferee.port} || (ip.src == {target_host} && udp.srcport == 5060))"
    sent = tshark.fields(path, ours + " && sip.Request-Line", "sip.Method", "sip.Replaces", "sip.Referred-by")
    methods = {row[0] for row in sent}
    assert {"INVITE", "ACK", "NOTIFY"} <= methods
    # The transferee's INVITE to the target carries Replaces and Referred-By, and tshark parses them.
    assert any(row[0] == "INVITE" and row[1] and row[2] for row in sent)
    assert tshark.malformed(path, "sip") == ""
    assert tshark.expert_errors(path, "sip") == []
