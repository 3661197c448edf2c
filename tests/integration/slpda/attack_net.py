"""A `sipmob-slpda` in a network namespace of its own, with the addresses of a hostile home on `lo`.

Used by the attack tests and by tests/bench/bench_attack.py. Inside the namespace the DA listens on
127.0.0.1:427; 127.0.0.1 is the box itself (the SA proxy: trusted), 127.0.0.66 a rogue host on the
LAN (allowed to register, not trusted), 198.51.100.7 a victim device on the LAN, 203.0.113.5 a host
outside (not allowed to register). Floods and slow senders run as child processes inside the
namespace (`run_in`), so they can bind thousands of sockets without touching the host's network.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from slpda_process import ROOT, Client, Slpda
from tests.peers.netns import Namespace, available
from tests.peers.process import terminate

PORT = 427
DA = "127.0.0.1"
ROGUE = "127.0.0.66"
VICTIM = "198.51.100.7"
OUTSIDE = "203.0.113.5"
CONFIG = """
[registration]
allowed_networks = ["127.0.0.0/8", "198.51.100.0/24"]
trusted = ["127.0.0.1/32"]
"""
HERE = Path(__file__).resolve().parent

needs_netns = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or not available(),
                                 reason="needs root and iproute2 for network namespaces")


def rss_kb(pid: int) -> int:
    """Resident memory of a process, from /proc (VmRSS, kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class NsClient(Client):
    """`Client` with its socket in the namespace, bound to one of its source addresses."""

    def __init__(self, ns: Namespace, bind: str, timeout: float = 3.0) -> None:
        self.ns = ns
        self.bind = bind
        self.address = (DA, PORT)
        self.timeout = timeout
        self.sock = ns.socket()
        self.sock.bind((bind, 0))
        self.sock.settimeout(timeout)

    def tcp_socket(self) -> socket.socket:
        sock = self.ns.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((self.bind, 0))
        sock.settimeout(self.timeout)
        sock.connect(self.address)
        return sock

    def tcp(self, msg: Any) -> Any:
        from sipmob.slp import wire

        with self.tcp_socket() as conn:
            conn.sendall(wire.encode(msg))
            buf = b""
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                length = wire.peek_length(buf)
                if length is not None and len(buf) >= length:
                    return wire.decode(buf[:length])
                chunk = conn.recv(65535)
                if not chunk:
                    break
                buf += chunk
        raise TimeoutError("no reply over TCP")


class NsSlpda:
    """The daemon in its own namespace; `start()` returns once it answers, `stop()` by PID."""

    def __init__(self, directory: Path, config: str = "") -> None:
        self.ns = Namespace("slpda-attack")
        try:
            for address in (f"{VICTIM}/32", f"{OUTSIDE}/32"):
                self.ns.add_address("lo", address)
        except BaseException:
            self.ns.delete()
            raise
        self.daemon = Slpda(directory, CONFIG + config, port=PORT)
        self.proc: subprocess.Popen[bytes] | None = None
        self.directory = directory

    def configure(self, extra: str) -> None:
        """Add TOML tables to the namespace's base configuration (before `start`)."""
        self.daemon.write_config(CONFIG + extra)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> NsSlpda:
        self.log = open(self.daemon.log_path, "ab")  # closed in stop()
        # `ip netns exec` execs the daemon: the PID is the daemon's own.
        self.proc = self.ns.popen(self.daemon.command(), env=self.daemon.environment, stdout=self.log,
                                  stderr=subprocess.STDOUT)
        with self.client(DA, timeout=0.2) as probe:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slpda exited with {self.proc.returncode}: {self.output()}")
                try:
                    probe.discover()
                    return self
                except (TimeoutError, ConnectionRefusedError, OSError):
                    time.sleep(0.05)
        raise RuntimeError(f"slpda did not answer within {timeout} s: {self.output()}")

    def client(self, bind: str, timeout: float = 3.0) -> NsClient:
        return NsClient(self.ns, bind, timeout)

    def kill(self) -> None:
        """SIGKILL: no goodbye, no final write."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
            self.log.close()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        code = terminate(self.proc, 15.0)
        self.proc = None
        self.log.close()
        return code

    def output(self) -> str:
        return self.daemon.output()

    def run_in(self, script: str, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run tests/integration/slpda/<script> inside the namespace; its last line is JSON."""
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemons'}:{ROOT}:{HERE}"}
        result = self.ns.run([sys.executable, str(HERE / script), *args], timeout=timeout, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{script} failed: {result.stderr[-2000:]}")
        return dict(json.loads(result.stdout.strip().splitlines()[-1]))

    def delete(self) -> None:
        try:
            self.stop()
        finally:
            self.ns.delete()
