"""sipp against the Twisted SIP transport and the transaction layer, over loopback.

The UAS is this file run as a program (``--serve``): it answers OPTIONS with 200 and INVITE with
486 through `SIPTransport`, and prints one line per event so the test can see what its TU saw.
Every sipp run is bounded by ``-m`` and ``-timeout``; every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PYTHON = ROOT / ".venv" / "bin" / "python"
SIPP = shutil.which("sipp")

pytestmark = [pytest.mark.peer, pytest.mark.skipif(SIPP is None, reason="sipp is not installed")]

HEADERS = """Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch};rport
      From: sipp <sip:sipp@[local_ip]:[local_port]>;tag=[pid]SIPpTag[call_number]
      To: <sip:uas@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      Contact: <sip:sipp@[local_ip]:[local_port]>"""


def scenario(name: str, body: str) -> str:
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="{name}">
{body}
</scenario>
"""


OPTIONS = scenario("options", f"""
  <send><![CDATA[
      OPTIONS sip:uas@[remote_ip]:[remote_port] SIP/2.0
      {HEADERS.format(branch="[branch]")}
      Max-Forwards: 70
      CSeq: 1 OPTIONS
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
""")

# OPTIONS with branch A, then with branch B, then A again: the third is a retransmission of the
# first. (B sits in between because sipp takes a response identical to the one it received last
# for a retransmission of its own and resends, which would ping-pong with our absorption.)
OPTIONS_RETRANSMITTED = scenario("options-retransmitted", "".join(f"""
  <send><![CDATA[
      OPTIONS sip:uas@[remote_ip]:[remote_port] SIP/2.0
      {HEADERS.format(branch=f"z9hG4bK-[call_number]-{branch}")}
      Max-Forwards: 70
      CSeq: 1 OPTIONS
      Content-Length: 0

  ]]></send>
  <recv response="200"/>
""" for branch in ("a", "b", "a")))

# An INVITE whose 486 is never ACKed.
INVITE_NO_ACK = scenario("invite-no-ack", f"""
  <send><![CDATA[
      INVITE sip:uas@[remote_ip]:[remote_port] SIP/2.0
      {HEADERS.format(branch="[branch]")}
      Max-Forwards: 70
      CSeq: 1 INVITE
      Content-Length: 0

  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="486"/>
  <pause milliseconds="4500"/>
""")

# A request without Max-Forwards (§8.1.1.6).
MALFORMED = scenario("malformed", f"""
  <send><![CDATA[
      OPTIONS sip:uas@[remote_ip]:[remote_port] SIP/2.0
      {HEADERS.format(branch="[branch]")}
      CSeq: 1 OPTIONS
      Content-Length: 0

  ]]></send>
  <recv response="400">
    <action>
      <ereg regexp="^SIP/2.0 400 Missing Max-Forwards" search_in="msg" check_it="true" assign_to="line"/>
    </action>
  </recv>
  <Reference variables="line"/>
""")


# The UAS ------------------------------------------------------------------------------------


def serve(port: int, t1: float, t2: float) -> None:
    from twisted.internet import reactor

    from sipmob.service.sipnet import SIPTransport
    from sipmob.sip.message import make_response
    from sipmob.sip.transaction import (
        RequestReceived,
        TimerConfig,
        TransactionLayer,
        TransactionTerminated,
        TransactionTimedOut,
    )
    from sipmob.sip.transport import Address

    listen = [("127.0.0.1", port, "udp"), ("127.0.0.1", port, "tcp")]
    layer = TransactionLayer([Address(*a) for a in listen], TimerConfig(t1=t1, t2=t2))
    answers = {"OPTIONS": 200, "INVITE": 486}

    def on_event(event: object) -> None:
        if isinstance(event, RequestReceived):
            print("request", event.request.method, event.request.call_id, flush=True)
            status = answers.get(event.request.method, 501)
            sip.send_response(make_response(event.request, status, to_tag="uas"))
        elif isinstance(event, TransactionTimedOut):
            print("timeout", event.timer.value, event.transaction_key.method, flush=True)
        elif isinstance(event, TransactionTerminated):
            print("terminated", event.transaction_key.method, flush=True)

    sip = SIPTransport(reactor, layer, listen, on_event)
    sip.start()
    print("ready", flush=True)
    reactor.run()  # type: ignore[attr-defined]


# The tests ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        udp.bind(("127.0.0.1", 0))
        port = int(udp.getsockname()[1])
        tcp.bind(("127.0.0.1", port))  # free for both transports
        return port


class UAS:
    def __init__(self, tmp_path: Path, t1: float = 0.5, t2: float = 4.0) -> None:
        self.port = free_port()
        self.log = tmp_path / "uas.log"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "daemons"))
        self.proc = subprocess.Popen(
            [str(PYTHON), __file__, "--serve", str(self.port), str(t1), str(t2)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 10
        while "ready" not in self.log.read_text():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the UAS did not start"
            time.sleep(0.05)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def uas_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[UAS] = []

    def make(**timers: float) -> UAS:
        uas = UAS(tmp_path, **timers)
        started.append(uas)
        return uas

    yield make
    for uas in started:
        uas.stop()


def run_sipp(tmp_path: Path, xml: str, port: int, *extra: str, calls: int = 1,
             timeout: int = 20) -> tuple[int, str]:
    """Run one bounded sipp client against 127.0.0.1:port; return its exit code and message trace."""
    scenario_file = tmp_path / "scenario.xml"
    scenario_file.write_text(xml)
    trace = tmp_path / "messages.log"
    assert SIPP is not None
    proc = subprocess.Popen(
        [SIPP, f"127.0.0.1:{port}", "-sf", str(scenario_file), "-i", "127.0.0.1", "-p", "0",
         "-m", str(calls), "-timeout", f"{timeout}s", "-timeout_error", "-nostdin",
         "-trace_msg", "-message_file", str(trace), "-trace_err",
         "-error_file", str(tmp_path / "errors.log"), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path)
    try:
        code = proc.wait(timeout + 10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        code = -1
    return code, trace.read_text(errors="replace") if trace.exists() else ""


def test_sipp_options_get_200_over_udp(tmp_path: Path, uas_factory) -> None:  # type: ignore[no-untyped-def]
    uas = uas_factory()
    code, _ = run_sipp(tmp_path, OPTIONS, uas.port, calls=5)
    assert code == 0
    assert sum(line.startswith("request OPTIONS") for line in uas.lines()) == 5


def test_sipp_options_get_200_over_tcp(tmp_path: Path, uas_factory) -> None:  # type: ignore[no-untyped-def]
    uas = uas_factory()
    code, _ = run_sipp(tmp_path, OPTIONS, uas.port, "-t", "t1", calls=3)
    assert code == 0
    assert sum(line.startswith("request OPTIONS") for line in uas.lines()) == 3


def test_an_unacknowledged_486_is_retransmitted_until_timer_h(tmp_path: Path, uas_factory) -> None:  # type: ignore[no-untyped-def]
    uas = uas_factory(t1=0.05, t2=0.4)  # Timer H = 64*T1 = 3.2 s
    code, trace = run_sipp(tmp_path, INVITE_NO_ACK, uas.port)
    assert code == 0
    received_486 = len(re.findall(r"^SIP/2.0 486", trace, re.MULTILINE))
    # Timer G at 0.05, 0.15, 0.35, 0.75, then every T2 until H at 3.2 s: ten retransmissions.
    assert received_486 >= 1 + 10
    deadline = time.monotonic() + 5
    while "timeout H INVITE" not in uas.lines():
        assert time.monotonic() < deadline, uas.lines()
        time.sleep(0.05)
    assert sum(line.startswith("request INVITE") for line in uas.lines()) == 1


def test_a_retransmitted_request_is_absorbed_and_answered_again(tmp_path: Path, uas_factory) -> None:  # type: ignore[no-untyped-def]
    uas = uas_factory()
    code, trace = run_sipp(tmp_path, OPTIONS_RETRANSMITTED, uas.port)
    assert code == 0
    assert len(re.findall(r"^SIP/2.0 200", trace, re.MULTILINE)) == 3
    assert sum(line.startswith("request OPTIONS") for line in uas.lines()) == 2


def test_a_malformed_request_gets_400_with_the_reason(tmp_path: Path, uas_factory) -> None:  # type: ignore[no-untyped-def]
    uas = uas_factory()
    code, _ = run_sipp(tmp_path, MALFORMED, uas.port)
    assert code == 0
    assert not any(line.startswith("request") for line in uas.lines())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int, required=True, metavar="PORT")
    parser.add_argument("t1", type=float)
    parser.add_argument("t2", type=float)
    args = parser.parse_args()
    sys.exit(serve(args.serve, args.t1, args.t2))
