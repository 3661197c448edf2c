"""Run `sipmob-mdsm` as a real process on loopback, and the members of its virtual devices.

`Mdsm` writes the configuration, starts ``python -m sipmob.mdsm``, considers it up once it answers
OPTIONS on its SIP port, and can be stopped with SIGTERM or killed with SIGKILL (by PID) and
started again on the same state file. `Member` runs member.py with an `RtpProbe` on its RTP port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.peers.ports import free_udp_port
from tests.peers.process import terminate
from tests.peers.rtp import RtpProbe

ROOT = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
ENV = {"PYTHONPATH": f"{ROOT / 'daemons'}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
HOST = "127.0.0.1"


def options_ok(port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        sock.settimeout(timeout)
        me = f"{HOST}:{sock.getsockname()[1]}"
        branch = f"z9hG4bK{time.time_ns()}"
        text = (f"OPTIONS sip:probe@{HOST}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch}\r\n"
                f"Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=1\r\nTo: <sip:probe@{HOST}>\r\n"
                f"Call-ID: {time.time_ns()}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
        sock.sendto(text.encode(), (HOST, port))
        try:
            return sock.recv(65535).startswith(b"SIP/2.0 200")
        except TimeoutError:
            return False


class Mdsm:
    def __init__(self, directory: Path, da: str, systems: str, devices: str = "", extra: str = "") -> None:
        self.directory = directory
        self.port = free_udp_port()
        self.config = directory / "mdsm.toml"
        self.state = directory / "mdsm.sqlite"
        self.devices = directory / "devices.d"
        self.devices.mkdir(exist_ok=True)
        self.log_path = directory / "mdsm.log"
        self.head = (f'[listen]\naddress = "{HOST}"\nport = {self.port}\n[slp]\nda = "{da}"\n'
                     f'[devices]\ndirectory = "{self.devices}"\n[state]\nfile = "{self.state}"\n'
                     f'[log]\nlevel = "debug"\n{extra}\n')
        self.write(systems)
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, systems: str) -> None:
        self.config.write_text(self.head + systems)

    def uri(self, system: str) -> str:
        return f"sip:{system}@{HOST}:{self.port}"

    def start(self, timeout: float = 15.0) -> Mdsm:
        self.log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "sipmob.mdsm", "--config", str(self.config)],
                                     env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mdsm exited with {self.proc.returncode}: {self.output()}")
            if options_ok(self.port):
                return self
        raise RuntimeError(f"mdsm did not answer OPTIONS: {self.output()}")

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None
        self.log.close()

    def hup(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        code = terminate(self.proc, timeout)
        self.proc = None
        self.log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Member:
    """member.py as `sip:<user>@127.0.0.1:<port>` with its RTP port held by `probe`."""

    def __init__(self, user: str, media: str = "audio", direction: str = "sendrecv",
                 ring: bool = False) -> None:
        self.user = user
        self.port = free_udp_port()
        self.uri = f"sip:{user}@{HOST}:{self.port}"
        self.probe = RtpProbe(HOST)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "member.py"), str(self.port), user, media,
                                      str(self.probe.port), direction, *(["ring"] if ring else [])],
                                     env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        threading.Thread(target=self._read, daemon=True).start()
        if not self.wait("ready", 15):
            self.stop()
            raise RuntimeError(f"member {user} did not start: {self.lines}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._cond.notify_all()

    def wait(self, prefix: str, timeout: float = 5.0) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def hang_up(self) -> None:
        os.kill(self.proc.pid, signal.SIGUSR1)

    def count(self, prefix: str) -> int:
        with self._cond:
            return sum(1 for line in self.lines if line.startswith(prefix))

    def stop(self) -> None:
        terminate(self.proc)  # type: ignore[arg-type]
        self.probe.stop()
