"""Run `sipmob-slpda` as a real process on a free loopback port, and talk SLP to it.

Used by the integration tests and by the benchmark. The daemon is started with
``python -m sipmob.slpda --config FILE``, considered up once it answers a DA discovery over UDP,
and stopped with SIGTERM by its PID.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.peers.process import terminate

from sipmob.slp import wire
from sipmob.slp.messages import (
    DAAdvert,
    Flags,
    FunctionId,
    Header,
    Message,
    SrvAck,
    SrvDeReg,
    SrvReg,
    SrvRqst,
    UrlEntry,
)

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
_xids = itertools.count(1)


def free_port(host: str = HOST) -> int:
    """A port free for both UDP and TCP on `host` right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


def xid() -> int:
    return next(_xids) % 0xFFFF + 1


class Client:
    """A minimal SLP client: one request, one reply, bounded by a timeout."""

    def __init__(self, port: int, host: str = HOST, bind: str = HOST, timeout: float = 3.0) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((bind, 0))
        self.sock.settimeout(timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def udp(self, msg: Message) -> Message:
        data = wire.encode(msg)
        self.sock.sendto(data, self.address)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = wire.decode(self.sock.recv(65535))
            if reply.header.xid == msg.header.xid:
                return reply
        raise TimeoutError("no reply")

    def tcp(self, msg: Message) -> Message:
        with socket.create_connection(self.address, timeout=self.timeout) as conn:
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

    def register(self, url: str, attrs: str = "", lifetime: int = 300,
                 service_type: str = "service:sip-device", scopes: str = "DEFAULT") -> SrvAck:
        reply = self.udp(SrvReg(Header(FunctionId.SrvReg, xid(), "en", Flags.FRESH),
                                UrlEntry(url, lifetime), service_type, scopes, attrs))
        assert isinstance(reply, SrvAck)
        return reply

    def deregister(self, url: str, tags: str = "", scopes: str = "DEFAULT") -> SrvAck:
        reply = self.udp(SrvDeReg(Header(FunctionId.SrvDeReg, xid(), "en"), scopes, UrlEntry(url, 0), tags))
        assert isinstance(reply, SrvAck)
        return reply

    def srv_rqst(self, service_type: str = "service:sip-device", predicate: str = "",
                 scopes: str = "DEFAULT") -> SrvRqst:
        return SrvRqst(Header(FunctionId.SrvRqst, xid(), "en"), "", service_type, scopes, predicate)

    def discover(self) -> DAAdvert:
        reply = self.udp(self.srv_rqst("service:directory-agent", scopes=""))
        assert isinstance(reply, DAAdvert)
        return reply


class Slpda:
    """One daemon process; `start()` returns once it answers, `stop()` sends SIGTERM by PID."""

    def __init__(self, directory: Path, config: str = "", port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.config_path = directory / "slpda.toml"
        self.state_path = directory / "slpda.json"
        self.log_path = directory / "slpda.log"
        self.env = env or {}
        self.write_config(config)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_config(self, extra: str) -> None:
        self.config_path.write_text(f'[state]\nfile = "{self.state_path}"\n{extra}')

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sipmob.slpda", "--config", str(self.config_path),
                "--listen", f"{HOST}:{self.port}", *args]

    @property
    def environment(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT / "daemons"), **self.env}

    def start(self, timeout: float = 15.0) -> Slpda:
        self.log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(self.command(), env=self.environment, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        client = Client(self.port, timeout=0.2)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"slpda exited with {self.proc.returncode}: {self.output()}")
                try:
                    client.discover()
                    return self
                except (TimeoutError, ConnectionRefusedError):
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"slpda did not answer within {timeout} s: {self.output()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        code = terminate(self.proc, timeout)
        self.proc = None
        self.log.close()
        return code

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, bind: str = HOST) -> Client:
        return Client(self.port, bind=bind)
