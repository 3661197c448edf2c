"""Live captures with tshark on loopback, and Wireshark's verdict on them.

Responsible for starting `tshark -i lo -f FILTER -w FILE` (always with a capture filter, so other
traffic on the machine stays out), waiting until it really captures, stopping it by its PID, and
reading the file back: fields per packet, malformed packets, expert errors. Not responsible for
deciding what is wrong with a packet: Wireshark's dissectors do that.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

TSHARK = shutil.which("tshark")


class TsharkError(RuntimeError):
    pass


def tshark(*args: str, timeout: float = 60.0) -> str:
    """Run tshark on a file (never on the network) and return its stdout."""
    if TSHARK is None:
        raise TsharkError("tshark is not installed (apt install tshark)")
    result = subprocess.run([TSHARK, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise TsharkError(f"tshark {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class LiveCapture:
    """Captures packets matching `bpf_filter` on `interface` into `path` until `stop()`."""

    def __init__(self, path: str | os.PathLike[str], bpf_filter: str, interface: str = "lo",
                 startup_timeout: float = 15.0) -> None:
        if TSHARK is None:
            raise TsharkError("tshark is not installed (apt install tshark)")
        self.path = Path(path)
        # Markers sent to this socket show when the capture has really started and, at the end,
        # that everything before them is on disk.
        self._sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sink.bind(("127.0.0.1", 0))
        self._sink_port = int(self._sink.getsockname()[1])
        bpf_filter = f"({bpf_filter}) or (udp port {self._sink_port})"
        self._stderr_path = self.path.with_suffix(".stderr")
        self._stderr = self._stderr_path.open("wb")
        self.proc = subprocess.Popen([TSHARK, "-i", interface, "-f", bpf_filter, "-w", str(self.path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr)
        deadline = time.monotonic() + startup_timeout
        while "Capturing on" not in self._stderr_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._sink.close()
                self._terminate(5.0)
                raise TsharkError(f"tshark did not start capturing: {self._stderr_path.read_text()}")
            time.sleep(0.05)
        self._markers = 0
        try:
            self._sync(startup_timeout)
        except BaseException:
            self._sink.close()
            self._terminate(5.0)
            raise

    def _sync(self, timeout: float) -> None:
        """Send numbered markers until one sent by this call shows up in the file: then everything
        sent before it is there too (dumpcap starts some time after it says so, and receives
        packets in blocks)."""
        deadline = time.monotonic() + timeout
        first = self._markers
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            while time.monotonic() < deadline and self.proc.poll() is None:
                sender.sendto(b"capture marker %d" % self._markers, ("127.0.0.1", self._sink_port))
                self._markers += 1
                time.sleep(0.2)
                try:
                    rows = fields(self.path, f"udp.dstport == {self._sink_port}", "data.data")
                except (TsharkError, subprocess.TimeoutExpired):
                    continue  # the file may be mid-block: read it again
                seen = [int(bytes.fromhex(row[0]).rsplit(b" ", 1)[1]) for row in rows if row and row[0]]
                if any(n >= first for n in seen):
                    return
        raise TsharkError(f"no capture marker reached {self.path} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> Path:
        """Wait until everything sent so far is in the file, stop the capture and return the file."""
        try:
            if self.proc.poll() is None:
                self._sync(timeout)
        finally:
            self._sink.close()
            self._terminate(timeout)
        return self.path

    def _terminate(self, timeout: float) -> None:
        for sig in (signal.SIGINT, signal.SIGKILL):
            if self.proc.poll() is None:
                os.kill(self.proc.pid, sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    continue
        self._stderr.close()

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def fields(path: str | os.PathLike[str], display_filter: str, *names: str) -> list[list[str]]:
    """One row per packet matching `display_filter`, with the given fields (tab-separated by tshark)."""
    args = ["-r", str(path), "-Y", display_filter, "-T", "fields"]
    for name in names:
        args += ["-e", name]
    return [line.split("\t") for line in tshark(*args).split("\n") if line]


def malformed(path: str | os.PathLike[str], protocol: str) -> str:
    """The summary lines of packets of `protocol` that Wireshark calls malformed ("" when none)."""
    return tshark("-r", str(path), "-Y", f"{protocol} && _ws.malformed").strip()


def expert_errors(path: str | os.PathLike[str], protocol: str) -> list[str]:
    """Wireshark's expert-info rows of severity error for `protocol`: "frequency group protocol
    summary" lines of `-z expert,error` whose protocol column names it (case-insensitive)."""
    report = tshark("-r", str(path), "-q", "-z", "expert,error")
    rows = [line.split(None, 3) for line in report.splitlines()]
    return [" ".join(row) for row in rows
            if len(row) >= 3 and row[0].isdigit() and row[2].lower() == protocol.lower()]
