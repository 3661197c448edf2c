"""A throwaway Debian 12 system booted under systemd-nspawn, for installing the built packages.

Responsible for: the root filesystem (made once with mmdebstrap from the mirror apt already uses,
cached as a tarball outside the repository and keyed by its package list), unpacking it, booting it
with its own systemd as PID 1 and no network but its own loopback (``--private-network``), running
commands inside it through nsenter, and tearing it down. Every wait is bounded.

Not responsible for: building the packages (scripts/build-debs) or what is checked inside.

``machinectl`` and the system bus are not available on the build machine, hence ``--register=no
--keep-unit`` and nsenter into the container's PID 1 (found as the child of the nspawn process).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

CACHE = Path(os.environ.get("SIPMOB_TEST_CACHE", "/var/cache/sipmob-test"))
SUITE = "bookworm"
# What the container needs besides the packages' own dependencies: an init that boots it.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "procps")
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}


def debian_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources")) -> str:
    """The URI apt uses for the main Debian archive (deb822 sources, as on Debian 12)."""
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if uri.rstrip("/").endswith("/debian"):
                        return uri
    return "http://deb.debian.org/debian"


def _first_alternatives(depends: str) -> Iterable[str]:
    for clause in filter(None, (c.strip() for c in depends.split(","))):
        first = clause.split("|")[0].strip()
        yield re.split(r"[\s(:]", first, maxsplit=1)[0]


def runtime_depends(debs: Sequence[Path]) -> list[str]:
    """The Debian packages the .debs depend on, not counting each other: what the rootfs must hold."""
    own: set[str] = set()
    wanted: set[str] = set()
    for deb in debs:
        fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Depends", "Pre-Depends"],
                                check=True, capture_output=True, text=True).stdout
        info = dict(line.split(": ", 1) for line in fields.splitlines() if ": " in line)
        own.add(info["Package"])
        for field in ("Depends", "Pre-Depends"):
            wanted.update(_first_alternatives(info.get(field, "")))
    return sorted(wanted - own)


def rootfs_tarball(packages: Sequence[str], timeout: float = 900) -> Path:
    """A tarball of a minimal bookworm system with `packages`, made on first use and then reused."""
    packages = sorted(set(packages) | set(BASE_PACKAGES))
    mirror = debian_mirror()
    key = hashlib.sha256(" ".join([SUITE, mirror, *packages]).encode()).hexdigest()[:16]
    tarball = CACHE / f"rootfs-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f"rootfs-{key}.partial.tar"  # mmdebstrap picks the format from ".tar"
    log = tarball.with_suffix(".log")
    with open(log, "w") as out:
        subprocess.run(
            ["mmdebstrap", "--variant=apt", f"--include={','.join(packages)}", SUITE, str(partial),
             mirror],
            check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=CLEAN_ENV)
    partial.rename(tarball)  # only a complete tarball ever has the final name
    return tarball


class CommandFailed(Exception):
    """A command inside the container failed; the message carries its output."""


class Container:
    """A booted container; `run` executes a command inside it as root."""

    def __init__(self, tarball: Path, binds: dict[str, Path]) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="sipmob-install-", dir="/var/tmp"))
        self.root = self.workdir / "root"
        self.root.mkdir()
        subprocess.run(["tar", "-xf", str(tarball), "-C", str(self.root)], check=True, timeout=300)
        self.log_path = self.workdir / "nspawn.log"
        args = ["systemd-nspawn", "-b", "--register=no", "--keep-unit", "--private-network",
                "--volatile=overlay", "--console=passive", "-D", str(self.root)]
        args += [f"--bind-ro={src}:{dst}" for dst, src in binds.items()]
        with open(self.log_path, "w") as log:
            self.nspawn = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, env=CLEAN_ENV)
        self.pid1 = 0

    def boot(self, timeout: float = 60) -> None:
        """Wait for PID 1 inside and for systemd to finish booting."""
        deadline = time.monotonic() + timeout
        while not self.pid1:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the container's PID 1 did not appear")
            self.pid1 = self._find_pid1()
            time.sleep(0.05)
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["systemctl", "is-system-running"], check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.2)
        raise TimeoutError(f"the container did not finish booting (state {state!r})")

    def _find_pid1(self) -> int:
        try:
            children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children").read_text()
        except FileNotFoundError:
            return 0
        for pid in children.split():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if len(nspid) > 1 and nspid[-1] == "1":
                return int(pid)
        return 0

    @property
    def root_view(self) -> Path:
        """The container's file system as it sees it (the overlay included), from the host."""
        return Path(f"/proc/{self.pid1}/root")

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = ["nsenter", "-t", str(self.pid1), "-a", "env", "-i",
               *(f"{k}={v}" for k, v in CLEAN_ENV.items()), *argv]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                                stdin=None if input is not None else subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise CommandFailed(f"{' '.join(argv)!r} exited with {result.returncode} in the container:\n"
                                f"{result.stdout[-3000:]}{result.stderr[-3000:]}")
        return result

    def sh(self, script: str, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-c", script], check=check, timeout=timeout)

    def close(self, timeout: float = 20) -> None:
        """Power the container off (nspawn turns SIGTERM into a clean shutdown), then remove it."""
        if self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(timeout=timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)
