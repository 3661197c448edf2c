"""Run `sipmob-saproxy` as a real process on loopback, with fake SIP devices to probe.

Used by the integration tests and the benchmark. The daemon is started with
``python -m sipmob.saproxy --config FILE``, considered up once it answers an OPTIONS of its own
(it answers OPTIONS like any UA), and stopped with SIGTERM by its PID. `FakeDevice` is a UDP
socket on a thread that answers OPTIONS the way the test says (a 200 with SDP, silence, garbage).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.peers.process import terminate

from sipmob.sip.message import Request, Response, make_response, parse_message

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"

TV_SDP = (b"v=0\r\no=tv 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
          b"m=audio 0 RTP/AVP 0 8\r\na=recvonly\r\n"
          b"m=video 0 RTP/AVP 34\r\na=rtpmap:34 H263/90000\r\na=fmtp:34 CIF=4;QCIF=3\r\na=recvonly\r\n")

Answer = Callable[[Request], bytes | None]


def free_udp_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def ok_with(body: bytes = TV_SDP, allow: str = "INVITE, ACK, BYE, CANCEL, OPTIONS") -> Answer:
    def answer(request: Request) -> bytes:
        headers = [("Allow", allow), ("Accept", "application/sdp")]
        if body:
            headers.append(("Content-Type", "application/sdp"))
        return make_response(request, 200, to_tag=secrets.token_hex(4), headers=headers, body=body).to_bytes()

    return answer


def silent(request: Request) -> None:
    return None


class FakeDevice:
    """A basic SIP device that answers OPTIONS with `answer(request)` (None: stay silent)."""

    def __init__(self, answer: Answer | None = None, port: int | None = None, user: str = "dev") -> None:
        self.answer: Answer = answer or ok_with()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, port or 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.uri = f"sip:{user}@{HOST}:{self.port}"
        self.requests: list[float] = []  # arrival times (time.monotonic) of every OPTIONS
        self.answered: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            try:
                request = parse_message(data)
            except ValueError:
                continue
            if not isinstance(request, Request):
                continue
            self.requests.append(time.monotonic())
            reply = self.answer(request)
            if reply is not None:
                self.answered.append(time.monotonic())
                self.sock.sendto(reply, addr)

    def stop_soon(self) -> None:
        """Ask the thread to end without waiting (closing many devices at once is then quick)."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def options_to(port: int, host: str = HOST, timeout: float = 0.3) -> Response | None:
    """One OPTIONS to `host:port`, the response or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        s.settimeout(timeout)
        me = s.getsockname()[1]
        branch = "z9hG4bK" + secrets.token_hex(6)
        request = (f"OPTIONS sip:saproxy@{host}:{port} SIP/2.0\r\n"
                   f"Via: SIP/2.0/UDP {HOST}:{me};branch={branch}\r\n"
                   f"Max-Forwards: 70\r\nTo: <sip:saproxy@{host}>\r\nFrom: <sip:test@{HOST}>;tag=1\r\n"
                   f"Call-ID: {branch}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        s.sendto(request.encode(), (host, port))
        try:
            reply = parse_message(s.recv(65535))
        except (TimeoutError, OSError, ValueError):
            return None
        return reply if isinstance(reply, Response) else None


FAST_PROBE = "[probe]\ninterval = 0.5\ntimeout = 0.5\nretry = 0.2\ndown_after = 2\nbackoff_max = 1.0\n"


class Saproxy:
    """One daemon process with its config file and devices directory under `directory`."""

    def __init__(self, directory: Path, das: list[int], probe: str = FAST_PROBE, extra: str = "",
                 env: dict[str, str] | None = None, sip: str = "", slp: str = "") -> None:
        self.directory = directory
        self.env = env or {}
        self.devices_dir = directory / "devices.d"
        self.devices_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_udp_port()
        self.config_path = directory / "saproxy.toml"
        self.log_path = directory / "saproxy.log"
        das_list = ", ".join(f'"{HOST}:{p}"' for p in das)
        self.config_path.write_text(
            f'[devices]\ndirectory = "{self.devices_dir}"\n[state]\nfile = "{directory / "saproxy.json"}"\n'
            f'[sip]\naddress = "{HOST}"\nport = {self.port}\n{sip}'
            f'[slp]\ndas = [{das_list}]\n{slp}{probe}{extra}')
        self.proc: subprocess.Popen[bytes] | None = None

    def add_device(self, name: str, uri: str, body: str = 'room = "living-room"\n') -> Path:
        path = self.devices_dir / f"{name}.toml"
        path.write_text(f'uri = "{uri}"\n{body}')
        return path

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sipmob.saproxy", "--config", str(self.config_path), *args]

    @property
    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT / "daemons"), **self.env}

    def check_config(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command("--check-config"), env=self.environment, capture_output=True,
                              text=True, timeout=30)

    def start(self, timeout: float = 15.0) -> Saproxy:
        self.log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(self.command(), env=self.environment, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"saproxy exited with {self.proc.returncode}: {self.output()}")
            if options_to(self.port, timeout=0.1) is not None:
                return self
        self.stop()
        raise RuntimeError(f"saproxy did not answer within {timeout} s: {self.output()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def reload(self) -> None:
        self.signal(signal.SIGHUP)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        code = terminate(self.proc, timeout)
        self.proc = None
        self.log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if out.count(text) >= count:
                return out
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged {count} time(s) within {timeout} s:\n{self.output()}")


def slptool(da_port: int, *args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """The SLP command-line tool as the querying client."""
    return subprocess.run([sys.executable, "-m", "sipmob.service.slptool", "--da", f"{HOST}:{da_port}",
                           "--timeout", "1", *args], env={**os.environ, "PYTHONPATH": str(ROOT / "daemons")},
                          capture_output=True, text=True, timeout=timeout)


def found(da_port: int, predicate: str = "") -> list[str]:
    """The URLs a SrvRqst for service:sip-device finds now."""
    result = slptool(da_port, "findsrvs", "service:sip-device", *([predicate] if predicate else []))
    if result.returncode != 0:
        return []
    return [line.rsplit(",", 1)[0] for line in result.stdout.splitlines() if line.strip()]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()
