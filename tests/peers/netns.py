"""Network namespaces a test creates for itself, so peers can talk over real interfaces without
touching the host's network.

Responsible for creating a namespace with `lo` up, running commands in it (`ip netns exec`),
making sockets in it from this process (a short-lived thread enters the namespace with setns(2),
and a socket stays in the namespace it was made in), joining two namespaces with a veth pair and
deleting everything again. Addresses are the caller's: use 10.200.x.y, only inside namespaces
made here. Needs root (CAP_SYS_ADMIN).
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


class NamespaceError(RuntimeError):
    pass


def _ip(*args: str, timeout: float = 10.0) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def available() -> bool:
    """Whether this process may create network namespaces."""
    name = f"sipmob-probe-{uuid.uuid4().hex[:8]}"
    try:
        _ip("netns", "add", name)
    except (NamespaceError, OSError, subprocess.TimeoutExpired):
        return False
    _ip("netns", "delete", name)
    return True


class Namespace:
    """A network namespace named `name` (a unique suffix is added unless `exact`)."""

    def __init__(self, name: str = "sipmob", exact: bool = False) -> None:
        self.name = name if exact else f"{name}-{uuid.uuid4().hex[:8]}"
        _ip("netns", "add", self.name)
        self.deleted = False
        try:
            self.run(["ip", "link", "set", "lo", "up"], check=True)
        except BaseException:
            self.delete()
            raise

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def command(self, argv: list[str]) -> list[str]:
        """`argv` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], timeout: float = 30.0, check: bool = False,
            **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        return subprocess.run(self.command(argv), timeout=timeout, check=check, text=True, **kwargs)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in the namespace; the caller stops it by its PID."""
        return subprocess.Popen(self.command(argv), **kwargs)

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket that lives in this namespace, usable from any thread of this process."""
        result: list[socket.socket | BaseException] = []

        def make() -> None:
            # setns() moves only the calling thread, which then ends, so the rest of the
            # process never leaves its own namespace.
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    if libc.setns(fd, CLONE_NEWNET) != 0:
                        err = ctypes.get_errno()
                        raise OSError(err, f"setns {self.name}: {os.strerror(err)}")
                finally:
                    os.close(fd)
                result.append(socket.socket(family, kind))
            except BaseException as exc:  # handed to the caller's thread
                result.append(exc)

        thread = threading.Thread(target=make, name=f"netns-{self.name}")
        thread.start()
        thread.join(10.0)
        if not result:
            raise NamespaceError(f"could not enter {self.name}")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def add_address(self, interface: str, address: str) -> None:
        """Add `address` (with its prefix, e.g. 10.200.0.1/24) to an interface in the namespace."""
        self.run(["ip", "addr", "add", address, "dev", interface], check=True)

    def veth(self, other: Namespace, address: str, other_address: str,
             interface: str | None = None, other_interface: str | None = None) -> tuple[str, str]:
        """Join this namespace and `other` with a veth pair; return the two interface names.

        `address` and `other_address` carry their prefix, e.g. "10.200.1.1/24".
        """
        suffix = uuid.uuid4().hex[:6]
        mine = interface or f"va{suffix}"
        theirs = other_interface or f"vb{suffix}"
        _ip("link", "add", mine, "netns", self.name, "type", "veth",
            "peer", "name", theirs, "netns", other.name)
        for ns, ifname, addr in ((self, mine, address), (other, theirs, other_address)):
            ns.add_address(ifname, addr)
            ns.run(["ip", "link", "set", ifname, "up"], check=True)
        return mine, theirs

    def set_link(self, interface: str, up: bool) -> None:
        """Bring an interface up or down, e.g. to fail a link under a running call."""
        self.run(["ip", "link", "set", interface, "up" if up else "down"], check=True)

    def delete(self) -> None:
        """Delete the namespace; its veth pairs go with it. Processes still in it are the caller's."""
        if not self.deleted:
            self.deleted = True
            _ip("netns", "delete", self.name)

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()
