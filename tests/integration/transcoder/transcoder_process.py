"""Run `sipmob-transcoder` as a real process on loopback, and speak to it as a 3PCC controller.

Used by the integration tests and the benchmark. The daemon is started with
``python -m sipmob.transcoder --config FILE`` (optionally under ``taskset``), considered up once it
answers OPTIONS, and stopped with SIGTERM by its PID. `Controller` is a minimal SIP UAC over a UDP
socket: INVITE with "SDP A + SDP B", ACK, re-INVITE, BYE, and the parsed answers, enough to drive
the transcoder exactly as a controller would without a second SIP stack in the test.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.peers.ports import free_udp_port
from tests.peers.process import terminate

from sipmob.sip.message import Request, Response, parse_message

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"


def rtp_range(span: int = 200, attempts: int = 50) -> tuple[int, int]:
    """An even port range of `span` ports, all free right now (other tests run beside us)."""
    for _ in range(attempts):
        low = (free_udp_port(HOST) & ~1)
        if low + span > 65000:
            continue
        socks = []
        try:
            for p in range(low, low + span, 17):  # a sample, not every port: bounded cost
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind((HOST, p))
            return low, low + span - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free RTP port range")


class Transcoder:
    def __init__(self, directory: Path, extra: str = "", *, channels: int = 20, cpu: int | None = None,
                 allowed: str = '["127.0.0.0/8"]', slp: str = "enabled = false",
                 rtp_ports: tuple[int, int] | None = None, idle_timeout: float = 60.0) -> None:
        self.directory = Path(directory)
        self.port = free_udp_port(HOST)
        self.rtp_low, self.rtp_high = rtp_ports or rtp_range()
        self.config_path = self.directory / "transcoder.toml"
        self.config_path.write_text(
            f'[sip]\naddress = "{HOST}"\nport = {self.port}\n'
            f'[rtp]\naddress = "{HOST}"\nport_min = {self.rtp_low}\nport_max = {self.rtp_high}\n'
            f'[capacity]\nchannels = {channels}\nretry_after = 7\nidle_timeout = {idle_timeout}\n'
            f'[access]\nallowed_networks = {allowed}\n'
            f'[slp]\n{slp}\n{extra}\n')
        self.cpu = cpu
        self.log_path = self.directory / "transcoder.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.uri = f"sip:transcoder@{HOST}:{self.port}"

    def start(self, timeout: float = 15.0) -> Transcoder:
        command = [sys.executable, "-m", "sipmob.transcoder", "--config", str(self.config_path)]
        if self.cpu is not None:
            command = ["taskset", "-c", str(self.cpu), *command]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "daemons")}
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        with Controller(self.uri) as probe:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sipmob-transcoder exited: {self.output()}")
                try:
                    if probe.options(timeout=0.5).status == 200:
                        return self
                except TimeoutError:
                    continue
        self.stop()
        raise RuntimeError(f"sipmob-transcoder did not answer OPTIONS: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = terminate(self.proc)
        self.log.close()
        self.proc = None
        return code

    def __enter__(self) -> Transcoder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def side(port: int, codecs: list[tuple[int, str]], host: str = HOST, ptime: int = 20,
         fmtp: dict[int, str] | None = None) -> str:
    """One m= section of "SDP A + SDP B": codecs as (payload type, "name/clock[/channels]")."""
    lines = [f"m=audio {port} RTP/AVP {' '.join(str(pt) for pt, _ in codecs)}", f"c=IN IP4 {host}"]
    for pt, name in codecs:
        lines.append(f"a=rtpmap:{pt} {name}")
        if fmtp and pt in fmtp:
            lines.append(f"a=fmtp:{pt} {fmtp[pt]}")
    lines += [f"a=ptime:{ptime}", "a=sendrecv"]
    return "\r\n".join(lines) + "\r\n"


def invocation(a: str, b: str) -> bytes:
    return (f"v=0\r\no=ctl 1 1 IN IP4 {HOST}\r\ns=-\r\nt=0 0\r\n{a}{b}").encode()


class Controller:
    """The 3PCC controller's SIP side, as plain datagrams on loopback."""

    def __init__(self, target: str, bind: str = HOST) -> None:
        self.target = target
        host_port = target.split("@", 1)[1]
        host, port = host_port.rsplit(":", 1)
        self.dest = (host, int(port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.bind = bind
        self.local = self.sock.getsockname()
        self.cseq = 0
        self.call_id = ""
        self.from_tag = secrets.token_hex(4)
        self.to: str | None = None
        self.requests: list[Request] = []  # what the transcoder sent us (answered answer_status)
        self.answer_status = 200

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, body: bytes = b"", cseq: int | None = None, branch: str | None = None,
              headers: tuple[str, ...] = (), content_type: str = "application/sdp") -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = branch or "z9hG4bK" + secrets.token_hex(6)
        to = self.to or f"<{self.target}>"
        lines = [f"{method} {self.target} SIP/2.0",
                 f"Via: SIP/2.0/UDP {self.local[0]}:{self.local[1]};branch={branch};rport",
                 "Max-Forwards: 70", f"From: <sip:ctl@{self.local[0]}>;tag={self.from_tag}", f"To: {to}",
                 f"Call-ID: {self.call_id}", f"CSeq: {cseq} {method}",
                 f"Contact: <sip:ctl@{self.local[0]}:{self.local[1]}>", *headers]
        if body:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode() + body, self.dest)
        return branch

    def _final(self, method: str, timeout: float) -> Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            message = parse_message(data)
            if isinstance(message, Response) and message.status >= 200 and message.cseq.method == method:
                return message
            if isinstance(message, Request):
                self.requests.append(message)
                self._respond(message, self.answer_status)
        raise TimeoutError(f"no final response to {method}")

    def _respond(self, request: Request, status: int) -> None:
        headers = request.headers
        lines = [f"SIP/2.0 {status} {'OK' if status == 200 else 'Refused'}",
                 *(f"Via: {v}" for v in headers.get_lines("via")), f"From: {headers.get('from')}",
                 f"To: {headers.get('to')}", f"Call-ID: {headers.get('call-id')}",
                 f"CSeq: {headers.get('cseq')}",
                 "Content-Length: 0"]
        via = request.top_via
        self.sock.sendto(("\r\n".join(lines) + "\r\n\r\n").encode(),
                         (via.received or via.host, via.port or 5060))

    def serve(self, seconds: float) -> list[Request]:
        """Answer what the transcoder sends us (its INFOs) for ``seconds``; every request so far."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                break
            message = parse_message(data)
            if isinstance(message, Request):
                self.requests.append(message)
                self._respond(message, self.answer_status)
        return self.requests

    def info(self, body: bytes, content_type: str = "application/dtmf-relay",
             timeout: float = 5.0) -> Response:
        self._send("INFO", body, content_type=content_type)
        return self._final("INFO", timeout)

    def options(self, timeout: float = 2.0) -> Response:
        self.call_id = secrets.token_hex(8)
        self._send("OPTIONS")
        return self._final("OPTIONS", timeout)

    def invite(self, body: bytes, timeout: float = 5.0, headers: tuple[str, ...] = ()) -> Response:
        self.call_id = secrets.token_hex(8)
        self.to = None
        branch = self._send("INVITE", body, headers=headers)
        response = self._final("INVITE", timeout)
        self.to = response.headers.get("To")
        if response.status >= 300:  # RFC 3261 §17.1.1.3: same branch, the response's To
            self._send("ACK", cseq=self.cseq, branch=branch)
            self.to = None
        else:
            self._send("ACK", cseq=self.cseq)
        return response

    def reinvite(self, body: bytes, timeout: float = 5.0) -> Response:
        self._send("INVITE", body)
        response = self._final("INVITE", timeout)
        self._send("ACK", cseq=self.cseq)
        return response

    def bye(self, timeout: float = 5.0) -> Response:
        self._send("BYE")
        return self._final("BYE", timeout)
