"""A home network in a namespace, with ``sipmob phone`` in it and the parties that attack it.

Used by test_phone_attacks.py and tests/bench/bench_attack_phone.py. The namespace has, on its `lo`:
the phone at 192.0.2.10:5060, a legitimate caller (the CN) at 192.168.1.20, a transferee at
192.168.1.30, a rogue host of the LAN at 127.0.0.66, a stranger outside at 203.0.113.5 and a
victim at 198.51.100.7 that counts what it gets and never answers. The parties are raw UDP sockets
(`Party`): they build SIP by hand, as an attacker would, and see every byte the phone sends back.
Nothing leaves the namespace; every process is stopped by its PID and the namespace deleted.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.peers.netns import Namespace

from sipmob.mn.control import ControlUnavailable, request

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/nonexistent"}

PHONE = "192.0.2.10"
CN = "192.168.1.20"
TRANSFEREE = "192.168.1.30"
ROGUE = "127.0.0.66"
STRANGER = "203.0.113.5"
VICTIM = "198.51.100.7"
VICTIM_PORT = 40000
SIP_PORT = 5060


def until(condition: Callable[[], Any], timeout: float = 10.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return condition()


class Counter:
    """A UDP socket that counts what arrives and never answers (the victim, a CN's RTP port)."""

    def __init__(self, ns: Namespace, host: str, port: int) -> None:
        self.sock = ns.socket()
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []
        self.sources: set[tuple[str, int]] = set()
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = self.sock
        while self._running:
            try:
                _, addr = sock.recvfrom(65535)
            except OSError:
                continue
            self.arrivals.append(time.monotonic())
            self.sources.add(addr)

    def between(self, start: float, end: float) -> int:
        return sum(1 for t in list(self.arrivals) if start <= t < end)

    def close(self) -> None:
        self._running = False
        self._thread.join(2)
        self.sock.close()


class Party:
    """A SIP party on a raw UDP socket at `host`: sends what it is told, keeps what comes back,
    answers BYE with 200 (and notes it)."""

    def __init__(self, ns: Namespace, host: str, port: int = 0, user: str = "party") -> None:
        self.host = host
        self.user = user
        self.sock = ns.socket()
        self.sock.bind((host, port))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.uri = f"sip:{user}@{host}:{self.port}"
        self.messages: list[bytes] = []
        self.byes: list[bytes] = []
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self._running:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                continue
            if data.startswith(b"BYE "):
                self.byes.append(data)
                self.sock.sendto(response_to(data, 200, "OK"), addr)
            with self._cond:
                self.messages.append(data)
                self._cond.notify_all()

    def _via(self) -> str:
        return f"Via: SIP/2.0/UDP {self.host}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport"

    def send(self, data: bytes, to: tuple[str, int] = (PHONE, SIP_PORT)) -> None:
        self.sock.sendto(data, to)

    def wait_response(self, call_id: str, method: str = "INVITE", final: bool = True,
                      timeout: float = 5.0) -> bytes | None:
        """The first (final, unless not `final`) response for `call_id` and `method`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if not m.startswith(b"SIP/2.0 ") or header(m, "Call-ID") != call_id:
                        continue
                    if not header(m, "CSeq").endswith(method):
                        continue
                    if final and status(m) < 200:
                        continue
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def invite(self, to_user: str = "mn", *, media: tuple[str, int] | None = None,
               headers: list[tuple[str, str]] | None = None, via: str | None = None,
               call_id: str | None = None, size: int = 0) -> tuple[str, str]:
        """Send an INVITE (offer with c= and m= at `media`), padded with a second Via to `size`
        bytes if given; returns (Call-ID, From tag)."""
        call_id = call_id or f"{secrets.token_hex(8)}@{self.host}"
        tag = secrets.token_hex(4)
        host, port = media or (self.host, 4000)
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
               f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n").encode()
        lines = [f"INVITE sip:{to_user}@{PHONE}:{SIP_PORT} SIP/2.0",
                 via or self._via()]
        lines += ["Max-Forwards: 70", f"From: <{self.uri}>;tag={tag}", f"To: <sip:{to_user}@{PHONE}>",
                  f"Call-ID: {call_id}", "CSeq: 1 INVITE", f"Contact: <{self.uri}>",
                  *(f"{n}: {v}" for n, v in headers or []),
                  "Content-Type: application/sdp", f"Content-Length: {len(sdp)}", "", ""]
        data = "\r\n".join(lines).encode() + sdp
        if size:
            filler = "Via: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKfill;x="
            pad = filler + "y" * (size - len(data) - len(filler) - 2) + "\r\n"
            lines.insert(2, pad[:-2])
            data = "\r\n".join(lines).encode() + sdp
        self.send(data)
        return call_id, tag

    def ack(self, ok: bytes) -> None:
        """ACK a 2xx (to its Contact, which is the phone)."""
        call_id = header(ok, "Call-ID")
        seq = header(ok, "CSeq").split()[0]
        lines = [f"ACK sip:mn@{PHONE}:{SIP_PORT} SIP/2.0",
                 self._via(),
                 "Max-Forwards: 70", f"From: {header(ok, 'From')}", f"To: {header(ok, 'To')}",
                 f"Call-ID: {call_id}", f"CSeq: {seq} ACK", "Content-Length: 0", "", ""]
        self.send("\r\n".join(lines).encode())

    def options(self, to_user: str = "mn", via: str | None = None) -> str:
        call_id = f"{secrets.token_hex(8)}@{self.host}"
        lines = [f"OPTIONS sip:{to_user}@{PHONE}:{SIP_PORT} SIP/2.0",
                 via or self._via(),
                 "Max-Forwards: 70", f"From: <{self.uri}>;tag={secrets.token_hex(4)}",
                 f"To: <sip:{to_user}@{PHONE}>", f"Call-ID: {call_id}", "CSeq: 1 OPTIONS",
                 "Content-Length: 0", "", ""]
        self.send("\r\n".join(lines).encode())
        return call_id

    def close(self) -> None:
        self._running = False
        self._thread.join(2)
        self.sock.close()


def header(message: bytes, name: str) -> str:
    match = re.search(rb"^" + name.encode() + rb"\s*:\s*(.*?)\r$", message, re.M | re.I)
    return match.group(1).decode() if match else ""


def status(message: bytes) -> int:
    return int(message.split(b" ", 2)[1]) if message.startswith(b"SIP/2.0 ") else 0


def sdp_media(message: bytes) -> tuple[str, int]:
    """(c= address, audio port) of a message's SDP."""
    body = message.split(b"\r\n\r\n", 1)[1].decode()
    host = re.search(r"^c=IN IP4 (\S+)", body, re.M)
    port = re.search(r"^m=audio (\d+)", body, re.M)
    assert host and port, body
    return host.group(1), int(port.group(1))


def response_to(request: bytes, code: int, reason: str) -> bytes:
    head = request.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    names = ("via", "from", "to", "call-id", "cseq")
    keep = [h for h in head[1:] if h.split(":", 1)[0].strip().lower() in names]
    return ("\r\n".join([f"SIP/2.0 {code} {reason}", *keep, "Content-Length: 0", "", ""])).encode()


def rtp_stream(sock: socket.socket, to: tuple[str, int], count: int, interval: float = 0.02) -> None:
    """Send `count` PCMU packets of silence, paced (the CN's own audio)."""
    ssrc = secrets.randbits(32)
    for seq in range(count):
        header_bytes = bytes([0x80, 0]) + seq.to_bytes(2, "big") + (seq * 160).to_bytes(4, "big") + \
            ssrc.to_bytes(4, "big")
        try:
            sock.sendto(header_bytes + b"\xff" * 160, to)
        except OSError:
            return
        time.sleep(interval)


class Home:
    """The namespace, its addresses and the phone running in it."""

    def __init__(self, directory: Path, *, media_timeout: float = 3.0, max_calls: int = 4,
                 setups_per_minute: float = 10.0, owners: tuple[str, ...] = ()) -> None:
        self.directory = directory
        self.ns = Namespace("sipmob-attack")
        try:
            for address in (PHONE, CN, TRANSFEREE, STRANGER, VICTIM):
                self.ns.add_address("lo", f"{address}/32")
            self.control = directory / "mn.sock"
            self.config = directory / "mn.toml"
            owners_toml = ", ".join(f'"{o}"' for o in owners)
            self.config.write_text(
                f'[listen]\naddress = "{PHONE}"\nport = {SIP_PORT}\n'
                f"[identity]\nowners = [{owners_toml}]\n"
                f"[calls]\nauto_answer = true\nmedia_timeout = {media_timeout}\nmax_calls = {max_calls}\n"
                f"setups_per_minute = {setups_per_minute}\n"
                f'[slp]\nda = "127.0.0.1:9"\n[control]\npath = "{self.control}"\n'
                f'[state]\nfile = "{directory / "calls.sqlite"}"\n')
            self.log_path = directory / "phone.log"
            self.proc: subprocess.Popen[bytes] | None = None
            self.start()
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = self.ns.popen([sys.executable, "-m", "sipmob.mn.cli", "phone", "--config",
                                       str(self.config)], env=ENV, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        if not until(self._answers) or self.proc.poll() is not None:
            raise RuntimeError(self.output())

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            return True
        try:
            request(self.control, "calls", timeout=2)
            return True
        except (ControlUnavailable, OSError):
            return False

    def calls(self) -> list[dict[str, Any]]:
        return list(request(self.control, "calls", timeout=5))

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def descriptors(self) -> int:
        assert self.proc is not None
        # `ip netns exec` execs the phone: the PID is the phone's own
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def party(self, host: str, user: str = "party", port: int = 0) -> Party:
        return Party(self.ns, host, port, user)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.ns.delete()


# A bounded mutation fuzzer of the phone's SIP port ---------------------------------------------------

def _seeds(host: str, port: int) -> list[bytes]:
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
           "m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n").encode()
    common = (f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKseed;rport\r\nMax-Forwards: 70\r\n"
              f"From: <sip:f@{host}>;tag=ft\r\nTo: <sip:mn@{PHONE}>\r\nCall-ID: seed@{host}\r\n")
    out = []
    for method, extra in (("INVITE", f"Contact: <sip:f@{host}:{port}>\r\n"), ("OPTIONS", ""), ("ACK", ""),
                          ("BYE", ""), ("CANCEL", ""), ("REFER", f"Refer-To: <sip:x@{host}>\r\n"),
                          ("NOTIFY", "Event: refer\r\n"), ("INFO", ""), ("REGISTER", ""),
                          ("INVITE", "Replaces: a@b;to-tag=1;from-tag=2\r\nReferred-By: <sip:o@h>\r\n"
                                     f"Contact: <sip:f@{host}:{port}>\r\n")):
        body = sdp if method == "INVITE" else b""
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        start = f"{method} sip:mn@{PHONE}:{SIP_PORT} SIP/2.0\r\n"
        out.append((f"{start}{common}CSeq: 1 {method}\r\n{extra}{ctype}"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
    out.append((f"SIP/2.0 200 OK\r\n{common}CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode())
    return out


_TOKENS = [b"\r\n", b"\x00", b";", b":", b"<", b">", b"@", b"sip:", b"%", b"\xff", b" ", b",", b"=",
           b"Content-Length: 99999\r\n", b"To: x;tag=\r\n", b"Via: SIP/2.0/TCP 198.51.100.7:7777\r\n",
           b"9" * 40, b"CSeq: -1 INVITE\r\n", b"\r\n\r\n", b"m=audio 0 RTP/AVP\r\n"]


def mutate(seed: bytes, rng: Any) -> bytes:
    """One to four random edits of `seed`: flip, delete, duplicate a span, insert a token, or cut."""
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        if not data:
            data = bytearray(seed)
        op = rng.randrange(5)
        i = rng.randrange(len(data))
        if op == 0:
            data[i] = rng.randrange(256)
        elif op == 1:
            del data[i:i + rng.randint(1, 16)]
        elif op == 2:
            j = min(len(data), i + rng.randint(1, 64))
            data[i:i] = data[i:j] * rng.randint(1, 8)
        elif op == 3:
            data[i:i] = rng.choice(_TOKENS)
        else:
            del data[i:]
    return bytes(data[:65000])


def fuzz(home: Home, count: int, seed: int = 1, per_burst: int = 50) -> float:
    """Send `count` mutated SIP messages to the phone from the stranger, the rogue and the CN
    addresses, `per_burst` at a time with a short pause (so the kernel does not drop them for us);
    returns the seconds it took."""
    import random

    rng = random.Random(seed)
    parties = [home.party(h, "fuzz") for h in (STRANGER, ROGUE, CN)]
    seeds = {id(p): _seeds(p.host, p.port) for p in parties}
    start = time.monotonic()
    try:
        for n in range(count):
            party = parties[n % len(parties)]
            party.send(mutate(rng.choice(seeds[id(party)]), rng))
            if n % per_burst == per_burst - 1:
                time.sleep(0.005)
                for p in parties:
                    with p._cond:
                        p.messages.clear()  # a long run must not keep every answer
    finally:
        for p in parties:
            p.close()
    return time.monotonic() - start
