"""Reliable provisional responses (RFC 3262) and UPDATE before the 200 (RFC 3311) with sipp, for
what a phone does not produce easily: a caller that requires 100rel and updates its offer while
the phone rings; a callee whose reliable 180 comes twice. tshark decodes every captured message
without a malformed warning. Loopback only; every process stopped by PID.
"""

from __future__ import annotations

import sys
import threading
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


def test_a_caller_requiring_100rel_gets_a_reliable_180_and_500_to_its_early_update(
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
