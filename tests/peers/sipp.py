"""sipp 3.6 runs, bounded and with their statistics read back.

Responsible for running one scenario (as client or, with `-sf` on a UAS scenario, as server)
against a target on loopback, always bounded by `-m` (calls), `-timeout` (wall clock) with
`-timeout_error`, and a hard kill by PID; and for collecting what sipp reports: exit code,
the last `-trace_stat` line as a dict, `-trace_err` lines, the `-trace_msg` message log and
stdout. `start_scenario` is the same run in the background, for a sipp UAS a test talks to.
Not responsible for the scenarios themselves.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.ports import free_udp_port

SIPP = shutil.which("sipp")


class SippError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class SippResult:
    """What one sipp run left behind. returncode is sipp's: 0 all calls succeeded, 1 at least one
    failed (or -timeout_error hit), 97 exit on internal command, 99 no call processed, 255 and 254
    fatal errors; or -9 when it outlived its bound and was killed."""

    returncode: int
    stats: dict[str, str]
    errors: list[str]
    messages: str
    stdout: str
    workdir: Path
    argv: list[str] = field(default_factory=list)

    @property
    def successful_calls(self) -> int:
        return int(self.stats.get("SuccessfulCall(C)", "0") or 0)

    @property
    def failed_calls(self) -> int:
        return int(self.stats.get("FailedCall(C)", "0") or 0)


def _argv(xml_path: Path, target: str | None, local_port: int, calls: int, timeout: float,
          workdir: Path, extra_args: list[str], host: str) -> list[str]:
    if SIPP is None:
        raise SippError("sipp is not installed (apt install sip-tester)")
    argv = [SIPP]
    if target is not None:
        argv.append(target)
    argv += [
        "-sf", str(xml_path), "-i", host, "-p", str(local_port),
        "-m", str(calls), "-timeout", f"{max(1, round(timeout))}s", "-timeout_error",
        "-nostdin",
        "-trace_stat", "-stf", str(workdir / "stat.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(workdir / "errors.log"),
        "-trace_msg", "-message_file", str(workdir / "messages.log"),
        *extra_args,
    ]
    return argv


def _collect(workdir: Path, argv: list[str], code: int) -> SippResult:
    stats: dict[str, str] = {}
    stat_file = workdir / "stat.csv"
    if stat_file.exists():
        rows = list(csv.reader(stat_file.read_text(errors="replace").splitlines(), delimiter=";"))
        if len(rows) >= 2:
            stats = {k: v for k, v in zip(rows[0], rows[-1], strict=False) if k}
    errors_file = workdir / "errors.log"
    errors = errors_file.read_text(errors="replace").splitlines() if errors_file.exists() else []
    messages_file = workdir / "messages.log"
    messages = messages_file.read_text(errors="replace") if messages_file.exists() else ""
    stdout_file = workdir / "stdout.log"
    stdout = stdout_file.read_text(errors="replace") if stdout_file.exists() else ""
    return SippResult(code, stats, errors, messages, stdout, workdir, argv)


def _bound_udp_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local = line.split()[1]  # "0100007F:13C4": address and port in hex
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


class SippProcess:
    """A sipp started in the background (typically a UAS); `wait()` returns its `SippResult`."""

    def __init__(self, xml_path: str | os.PathLike[str], target: str | None = None, *,
                 local_port: int = 0, calls: int = 1, extra_args: list[str] | None = None,
                 timeout: float = 20.0, workdir: str | os.PathLike[str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sipp-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        # sipp's own default is 5060, which parallel runs would fight over.
        self.local_port = local_port or free_udp_port(host)
        self.argv = _argv(Path(xml_path).resolve(), target, self.local_port, calls, timeout, self.workdir,
                          list(extra_args or []), host)
        self._stdout = (self.workdir / "stdout.log").open("wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._stdout,
                                     stderr=subprocess.STDOUT, cwd=self.workdir)

    def wait_listening(self, timeout: float = 5.0) -> None:
        """Wait until sipp has bound its UDP port (for a UAS the test will send to)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SippError(f"sipp exited with {self.proc.returncode}: {self._read_stdout()}")
            if self.local_port in _bound_udp_ports():
                return
            time.sleep(0.02)
        raise SippError(f"sipp did not bind port {self.local_port} within {timeout} s")

    def _read_stdout(self) -> str:
        return (self.workdir / "stdout.log").read_text(errors="replace")

    def wait(self, timeout: float | None = None) -> SippResult:
        """Wait for sipp to end (at most its own timeout plus a margin, then kill it)."""
        limit = timeout if timeout is not None else self.timeout + 10
        try:
            code = self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            code = -9
        self._stdout.close()
        return _collect(self.workdir, self.argv, code)

    def stop(self) -> SippResult:
        """Kill sipp now (by PID) and collect what it left."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                _kill(self.proc)
        return self.wait(5)


def run_scenario(xml_path: str | os.PathLike[str], target: str | None, *, local_port: int = 0,
                 extra_args: list[str] | None = None, timeout: float = 20.0, calls: int = 1,
                 workdir: str | os.PathLike[str] | None = None, host: str = "127.0.0.1") -> SippResult:
    """Run one scenario to its end against `target` ("127.0.0.1:5060"); None for a UAS run."""
    run = SippProcess(xml_path, target, local_port=local_port, calls=calls, extra_args=extra_args,
                      timeout=timeout, workdir=workdir, host=host)
    return run.wait()
