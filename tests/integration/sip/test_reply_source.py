"""A SIP element with two local addresses answers each request from the address it arrived on
(RFC 3581 §4): a peer that sends from a connected UDP socket, which takes datagrams only from the
address it is connected to, gets the answer, whatever address the call is bound to and whichever
socket is the default.

The element is this file run as a program (``--serve``): a `UACore` (it answers OPTIONS itself)
over `SIPTransport`, listening on 127.0.0.2 (the default socket) with a second socket on 127.0.0.3
(`add_udp`, as the phone opens one per egress), and one Call-ID bound to each address. The peers
are plain sockets, connected to the address they send to. The process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_HOST, OTHER_HOST = "127.0.0.2", "127.0.0.3"


def serve(port: int) -> None:
    from twisted.internet import reactor

    from sipmob.service.sipnet import SIPTransport
    from sipmob.sip.transaction import TimerConfig
    from sipmob.sip.transport import Address
    from sipmob.sip.ua import UACore

    default = Address(DEFAULT_HOST, port, "udp")
    core = UACore([default], user="phone", timers=TimerConfig(t1=0.5))
    sip = SIPTransport(reactor, core, [(DEFAULT_HOST, port, "udp")], lambda _event: None)
    sip.start()
    other = sip.add_udp(OTHER_HOST)
    core.layer.bind_call("bound-other@test", other)
    core.layer.bind_call("bound-default@test", default)
    print("ready", other.port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


class Element:
    def __init__(self, tmp_path: Path) -> None:
        from tests.peers.ports import free_udp_port

        self.port = free_udp_port(DEFAULT_HOST)
        self.log = tmp_path / "element.log"
        env = dict(os.environ, PYTHONPATH=f"{ROOT / 'daemons'}:{ROOT}")
        self.proc = subprocess.Popen([str(PYTHON), __file__, "--serve", str(self.port)],
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while not self.log.read_text().startswith("ready"):
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "the element did not start"
            time.sleep(0.05)
        self.other_port = int(self.log.read_text().split()[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def element(tmp_path: Path) -> Iterator[Element]:
    started = Element(tmp_path)
    yield started
    started.stop()


def ask(to: tuple[str, int], call_id: str) -> bytes:
    """An OPTIONS from a UDP socket connected to `to`; the first line of the answer (b"" if none
    came within a few retransmissions: the kernel drops datagrams from any other address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.connect(to)
        here = probe.getsockname()
        request = (f"OPTIONS sip:phone@{to[0]}:{to[1]} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {here[0]}:{here[1]};branch=z9hG4bK{call_id.split('@')[0]};rport\r\n"
                   f"From: <sip:probe@{here[0]}>;tag=1\r\nTo: <sip:phone@{to[0]}>\r\n"
                   f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                   "Content-Length: 0\r\n\r\n").encode()
        probe.settimeout(1.0)
        for _ in range(5):  # the same request again, as Timer E would: the same answer again
            probe.send(request)
            try:
                return probe.recv(65535).split(b"\r\n", 1)[0]
            except (TimeoutError, ConnectionRefusedError):
                continue
        return b""


@pytest.mark.parametrize("call_id", ["unbound@test", "bound-default@test", "bound-other@test"])
def test_a_request_to_the_second_address_is_answered_from_it(element: Element, call_id: str) -> None:
    assert ask((OTHER_HOST, element.other_port), call_id) == b"SIP/2.0 200 OK"


@pytest.mark.parametrize("call_id", ["unbound@test", "bound-default@test", "bound-other@test"])
def test_a_request_to_the_default_address_is_answered_from_it(element: Element, call_id: str) -> None:
    assert ask((DEFAULT_HOST, element.port), call_id) == b"SIP/2.0 200 OK"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int, required=True, metavar="PORT")
    args = parser.parse_args()
    sys.exit(serve(args.serve))
