"""kamailio (apt) as a registrar or proxy for tests, started so that nothing of it outlives the test.

kamailio forks worker children that ignore SIGTERM once their main process is gone; stopping only the
main PID left them running long after a suite. So it runs in a process group (session) of its own,
and `Kamailio.stop` signals the whole group, then checks that no member is left.

Not here: the routing scripts (each test writes the one it needs).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

KAMAILIO = shutil.which("kamailio", path=f"/usr/sbin:/usr/bin:{os.environ.get('PATH', '')}")
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"


def installed() -> bool:
    return KAMAILIO is not None and os.path.isdir(MODULES)


def group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes whose process group is `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, pgrp, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _bound_udp_ports(pid: int) -> set[int]:
    # /proc/PID/net/udp shows the sockets of PID's network namespace, so this works inside one too.
    ports = set()
    try:
        lines = Path(f"/proc/{pid}/net/udp").read_text().splitlines()[1:]
    except OSError:
        return ports
    for line in lines:
        ports.add(int(line.split()[1].split(":")[1], 16))
    return ports


class KamailioError(RuntimeError):
    pass


class Kamailio:
    """kamailio running `config` (a full cfg text) from `workdir`; `wrap` prefixes the command
    (e.g. a namespace's ``ip netns exec NAME``). Ready once `ports` are bound."""

    def __init__(self, config: str, workdir: Path, ports: list[int], wrap: list[str] | None = None,
                 timeout: float = 5.0) -> None:
        if not installed():
            raise KamailioError("kamailio is not installed")
        assert KAMAILIO is not None
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.log_path = workdir / "kamailio.log"
        cfg = workdir / "kamailio.cfg"
        cfg.write_text(config)
        with self.log_path.open("wb") as log:
            self.proc: subprocess.Popen[Any] = subprocess.Popen(
                [*(wrap or []), KAMAILIO, "-f", str(cfg), "-DD", "-E", "-Y", str(workdir),
                 "-P", str(workdir / "kamailio.pid")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pgid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if set(ports) <= _bound_udp_ports(self.proc.pid):
                return
            time.sleep(0.02)
        self.stop()
        raise KamailioError(f"kamailio did not bind {ports}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """End the whole process group: SIGTERM, then SIGKILL for whatever is still there."""
        deadline = time.monotonic() + timeout
        if group_members(self.pgid):
            os.killpg(self.pgid, signal.SIGTERM)
        while group_members(self.pgid) and time.monotonic() < deadline:
            self.proc.poll()  # reap the main process so it does not count as alive
            time.sleep(0.05)
        if group_members(self.pgid):
            os.killpg(self.pgid, signal.SIGKILL)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise KamailioError(f"kamailio {self.proc.pid} did not stop") from exc
        deadline = time.monotonic() + timeout
        while group_members(self.pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = group_members(self.pgid)
        if left:
            raise KamailioError(f"kamailio processes left behind: {left}")
