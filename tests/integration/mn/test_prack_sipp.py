"""Reliable provisional responses (RFC 3262) and UPDATE before the 200 (RFC 3311) with sipp, for
what a phone does not produce easily: a caller that requires 100rel and offers again (in its PRACK,
then in an UPDATE) while the phone rings; one that only supports 100rel and offers too early; a
callee that moves its media by UPDATE before its 200; a callee whose reliable 180 comes twice.
tshark decodes every captured message without a malformed warning, and checks each answer against
its offer. Loopback only; every process stopped by PID.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers import tshark
from tests.peers.ports import free_udp_port
from tests.peers.sipp import SIPP, SippProcess

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from phone_process import Phone, until  # noqa: E402
from slpda_process import HOST, Slpda  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(SIPP is None, reason="sipp is not installed (apt sip-tester)")]


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Phone]:
    (tmp_path / "da").mkdir()
    (tmp_path / "mn").mkdir()
    da = Slpda(tmp_path / "da").start()
    try:
        # rings until answered; sipp sends no RTP, so no media watchdog
        started = Phone(tmp_path / "mn", f"{HOST}:{da.port}", auto_answer=False, media_timeout=0)
        try:
            yield started
        finally:
            started.stop()
    finally:
        da.stop()


def capture(tmp: Path, name: str, *ports: int) -> tshark.LiveCapture | None:
    if tshark.TSHARK is None:
        return None
    return tshark.LiveCapture(tmp / f"{name}.pcapng", " or ".join(f"udp port {p}" for p in ports))


def methods_and_statuses(path: Path) -> list[tuple[str, str, str]]:
    rows = tshark.fields(path, "sip", "sip.Method", "sip.Status-Code", "sip.CSeq.method")
    return [(r[0], r[1], r[2]) for r in ([*row, "", "", ""] for row in rows)]


def _sdp_exchanges(path: Path) -> list[dict[str, str]]:
    rows = tshark.fields(path, "sdp", "frame.number", "sip.Method", "sip.Status-Code", "sip.CSeq.method",
                         "sdp.owner.username", "sdp.owner.version", "sdp.media", "sdp.media_attr")
    keys = ("frame", "method", "status", "cseq", "user", "version", "media", "attrs")
    return [dict(zip(keys, [*row, *[""] * 8], strict=False)) for row in rows]


def _direction(row: dict[str, str]) -> str:
    return next((a for a in row["attrs"].split(",") if a in ("sendrecv", "sendonly", "recvonly", "inactive")),
                "sendrecv")


def test_a_caller_reoffering_in_prack_and_update_while_the_phone_rings_is_answered_and_followed(
        phone: Phone, tmp_path: Path) -> None:
    local = free_udp_port()
    old_media, new_media = free_udp_port(), free_udp_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", new_media))
    listener.settimeout(0.2)
    cap = capture(tmp_path, "uac", phone.port, local, old_media, new_media)
    caller = SippProcess(SCENARIOS / "uac_100rel_reoffer_ringing.xml", f"127.0.0.1:{phone.port}",
                         local_port=local, workdir=tmp_path / "sipp", timeout=60,
                         extra_args=["-s", "mn", "-mp", str(old_media), "-key", "newport", str(new_media)])
    heard = 0
    try:
        ringing = until(lambda: [c for c in phone.calls() if c["state"] == "ringing"], timeout=10)
        assert ringing, phone.output()
        # both new offers are answered before we answer the call
        messages = tmp_path / "sipp" / "messages.log"
        assert until(lambda: messages.exists() and "CSeq: 3 UPDATE" in messages.read_text(errors="replace")
                     and messages.read_text(errors="replace").count("SIP/2.0 200") >= 2,
                     timeout=15), phone.output()
        done = phone.sipmob("answer", str(ringing[0]["id"]))
        assert done.returncode == 0, done.stderr
        deadline = time.monotonic() + 20
        while heard < 5 and time.monotonic() < deadline:  # the phone's audio, at the caller's new port
            try:
                listener.recvfrom(2048)
                heard += 1
            except TimeoutError:
                pass
        assert heard >= 5, phone.output()
        calls = phone.calls()
        assert calls and calls[0]["state"] == "confirmed", calls
        hung = phone.sipmob("hangup", str(calls[0]["id"]))
        assert hung.returncode == 0, hung.stderr
        result = caller.wait(40)
        assert result.returncode == 0, result.stdout + "\n".join(result.errors) + phone.output()
    finally:
        listener.close()
        caller.stop()
        path = cap.stop() if cap is not None else None
    if path is None:
        return
    assert tshark.malformed(path, "sip") == "" and tshark.malformed(path, "sdp") == ""
    rows = _sdp_exchanges(path)
    ours = [r for r in rows if r["user"] != "sipp"]
    early = next(r for r in ours if r["status"] == "180")
    prack = next(r for r in rows if r["method"] == "PRACK")
    prack_ok = next(r for r in ours if r["status"] == "200" and r["cseq"] == "PRACK")
    update = next(r for r in rows if r["method"] == "UPDATE")
    update_ok = next(r for r in ours if r["status"] == "200" and r["cseq"] == "UPDATE")
    invite_ok = next(r for r in ours if r["status"] == "200" and r["cseq"] == "INVITE")
    port = early["media"].split(" ")[1]
    # RFC 3264 §8: our port kept, the codec a subset of the offer's, the direction reversed, the
    # version raised exactly when our description changed
    for offer, answer in ((prack, prack_ok), (update, update_ok)):
        assert answer["media"].split(" ")[1] == port, (offer, answer)
        assert set(answer["media"].split(" ")[3:]) <= set(offer["media"].split(" ")[3:]), (offer, answer)
    assert _direction(prack_ok) == "recvonly" and _direction(update_ok) == "sendrecv", (prack_ok, update_ok)
    assert int(prack_ok["version"]) == int(early["version"]) + 1, (early, prack_ok)
    assert int(update_ok["version"]) == int(prack_ok["version"]) + 1, (prack_ok, update_ok)
    # the 200 carries the last answer, unchanged
    assert (invite_ok["version"], invite_ok["media"]) == (update_ok["version"], update_ok["media"]), invite_ok
    # not one packet of ours to where the caller's media was before the UPDATE
    to_old = tshark.fields(path, f"udp.dstport == {old_media} and udp.srcport == {port}", "frame.number")
    assert to_old == [], to_old


def test_a_caller_supporting_100rel_gets_a_reliable_180_without_sdp_and_500_to_its_early_update(
        phone: Phone, tmp_path: Path) -> None:
    local = free_udp_port()
    cap = capture(tmp_path, "uac", phone.port, local)
    caller = SippProcess(SCENARIOS / "uac_100rel_early_update.xml", f"127.0.0.1:{phone.port}",
                         local_port=local, workdir=tmp_path / "sipp", timeout=40,
                         extra_args=["-s", "mn", "-mp", str(free_udp_port())])
    try:
        ringing = until(lambda: [c for c in phone.calls() if c["state"] == "ringing"], timeout=10)
        assert ringing, phone.output()
        # the scenario has PRACKed the 180 and had its UPDATE refused before we answer
        messages = tmp_path / "sipp" / "messages.log"
        assert until(lambda: messages.exists() and "SIP/2.0 500" in messages.read_text(errors="replace"),
                     timeout=10), phone.output()
        done = phone.sipmob("answer", str(ringing[0]["id"]))
        assert done.returncode == 0, done.stderr
        result = caller.wait(40)
        assert result.returncode == 0, result.stdout + "\n".join(result.errors) + phone.output()
    finally:
        caller.stop()
        path = cap.stop() if cap is not None else None
    if path is not None:
        flow = methods_and_statuses(path)
        assert ("PRACK", "", "PRACK") in flow and ("", "200", "PRACK") in flow, flow
        assert ("", "500", "UPDATE") in flow, flow
        # no answer in the 180: a caller that only supports 100rel keeps its own ringback (RFC 3960)
        ringing = tshark.fields(path, "sip.Status-Code == 180", "sip.Content-Length")
        assert ringing and all(r[0] in ("", "0") for r in ringing), ringing
        assert tshark.malformed(path, "sip") == "" and tshark.malformed(path, "sdp") == ""


def test_the_phone_pracks_a_reliable_180_once_and_ignores_its_repetition(
        phone: Phone, tmp_path: Path) -> None:
    callee = SippProcess(SCENARIOS / "uas_reliable_180.xml", workdir=tmp_path / "sipp", timeout=40,
                         extra_args=["-mp", str(free_udp_port())])
    cap = capture(tmp_path, "uas", phone.port, callee.local_port)
    result: dict[str, Any] = {}
    placing = threading.Thread(target=lambda: result.update(
        out=phone.sipmob("call", f"sip:cn@127.0.0.1:{callee.local_port}")))
    try:
        callee.wait_listening()
        placing.start()
        placing.join(30)
        assert result["out"].returncode == 0, result["out"].stderr + phone.output()
        assert until(lambda: phone.calls() and phone.calls()[0]["state"] == "confirmed"), phone.calls()
        done = phone.sipmob("hangup", str(phone.calls()[0]["id"]))
        assert done.returncode == 0, done.stderr
        outcome = callee.wait(30)
        assert outcome.returncode == 0, outcome.stdout + "\n".join(outcome.errors) + phone.output()
    finally:
        placing.join(30)
        callee.stop()
        path = cap.stop() if cap is not None else None
    if path is not None:
        flow = methods_and_statuses(path)
        assert flow.count(("", "180", "INVITE")) == 2, flow
        assert flow.count(("PRACK", "", "PRACK")) == 1, flow  # the repeated 180 is not PRACKed
        assert tshark.malformed(path, "sip") == "" and tshark.malformed(path, "sdp") == ""


def test_a_callee_moving_its_media_by_update_before_its_200_gets_the_phones_audio_there(
        phone: Phone, tmp_path: Path) -> None:
    old_media, new_media = free_udp_port(), free_udp_port()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", new_media))
    listener.settimeout(0.2)
    callee = SippProcess(SCENARIOS / "uas_100rel_update_ringing.xml", workdir=tmp_path / "sipp", timeout=60,
                         extra_args=["-mp", str(old_media), "-key", "newport", str(new_media)])
    cap = capture(tmp_path, "uas-update", phone.port, callee.local_port, old_media, new_media)
    result: dict[str, Any] = {}
    placing = threading.Thread(target=lambda: result.update(
        out=phone.sipmob("call", f"sip:cn@127.0.0.1:{callee.local_port}")))
    heard = 0
    try:
        callee.wait_listening()
        placing.start()
        placing.join(30)
        assert result["out"].returncode == 0, result["out"].stderr + phone.output()
        deadline = time.monotonic() + 20
        while heard < 5 and time.monotonic() < deadline:  # the phone's audio, at the callee's new port
            try:
                listener.recvfrom(2048)
                heard += 1
            except TimeoutError:
                pass
        assert heard >= 5, phone.output()
        done = phone.sipmob("hangup", str(phone.calls()[0]["id"]))
        assert done.returncode == 0, done.stderr
        outcome = callee.wait(30)
        assert outcome.returncode == 0, outcome.stdout + "\n".join(outcome.errors) + phone.output()
    finally:
        placing.join(30)
        listener.close()
        callee.stop()
        path = cap.stop() if cap is not None else None
    if path is None:
        return
    assert tshark.malformed(path, "sip") == "" and tshark.malformed(path, "sdp") == ""
    rows = _sdp_exchanges(path)
    invite = next(r for r in rows if r["method"] == "INVITE")
    update = next(r for r in rows if r["method"] == "UPDATE")
    update_ok = next(r for r in rows if r["status"] == "200" and r["cseq"] == "UPDATE")
    port = invite["media"].split(" ")[1]
    assert update_ok["media"].split(" ")[1] == port, (invite, update_ok)  # our port kept
    assert set(update_ok["media"].split(" ")[3:]) <= set(update["media"].split(" ")[3:]), update_ok
    assert _direction(update_ok) == "sendrecv", update_ok
    # the ACK carries nothing: the 200's copy of the 183's answer is no new exchange
    acks = tshark.fields(path, "sip.Method == \"ACK\"", "sip.Content-Length")
    assert acks and all(a[0] in ("", "0") for a in acks), acks
    to_old = tshark.fields(path, f"udp.dstport == {old_media} and udp.srcport == {port}", "frame.number")
    assert to_old == [], to_old
