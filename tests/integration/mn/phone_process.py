"""Run `sipmob phone` as a real process on loopback and drive it with the `sipmob` command.

Used by the integration tests and by tests/bench/bench_mn_transfer.py. The phone is considered up
once ``sipmob calls`` answers over its control socket; it is stopped with SIGTERM by its PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.peers.ports import free_udp_port

from sipmob.mn.control import ControlUnavailable, request

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


def run(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True,
                          timeout=timeout, check=False)


def until(condition: Callable[[], Any], timeout: float = 10.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


class Phone:
    def __init__(self, directory: Path, da: str, grace: float = 0.5, auto_answer: bool = False,
                 ring_timeout: float = 60.0,
                 user: str = "mn", extra: str = "", media_timeout: float = 30.0,
                 calls: str = "", slp: str = "") -> None:
        """`extra` is appended to the configuration file (more sections), `calls` to its [calls],
        `slp` to its [slp]."""
        self.port = free_udp_port()
        self.uri = f"sip:{user}@127.0.0.1:{self.port}"
        self.control = directory / "mn.sock"
        self.config = directory / "mn.toml"
        self.config.write_text(
            f'[listen]\naddress = "127.0.0.1"\nport = {self.port}\n[identity]\nuser = "{user}"\n'
            f'[calls]\nauto_answer = {str(auto_answer).lower()}\ngrace_period = {grace}\n'
            f'device_timeout = 2.0\noptions_timeout = 1.0\nring_timeout = {ring_timeout}\n'
            f'media_timeout = {media_timeout}\n{calls}'
            f'[slp]\nda = "{da}"\n{slp}[control]\npath = "{self.control}"\n'
            f'[state]\nfile = "{directory / "calls.sqlite"}"\n' + extra)
        self.log = open(directory / "phone.log", "wb")  # closed in stop()
        self.log_path = directory / "phone.log"
        self._spawn()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "sipmob.mn.cli", "phone", "--config",
                                      str(self.config)], env=ENV, stdout=self.log, stderr=subprocess.STDOUT)
        if not until(self._answers, step=0.05) or self.proc.poll() is not None:
            raise RuntimeError(self.output())

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is hung up, the state file stays as it was."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def restart(self) -> None:
        """Start the phone again with the same configuration (port, control socket, state file)."""
        self._spawn()

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            return True
        try:
            request(self.control, "calls", timeout=2)
            return True
        except (ControlUnavailable, OSError):
            return False

    def sipmob(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run("-m", "sipmob.mn.cli", "--config", str(self.config), *args)

    def calls(self) -> list[dict[str, Any]]:
        """The phone's calls, asked over the control socket from this process (the command's own
        output is tested elsewhere; this is polled)."""
        return list(request(self.control, "calls", timeout=5))

    def received(self) -> int:
        return int(self.calls()[0]["rtp_received"])

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()


