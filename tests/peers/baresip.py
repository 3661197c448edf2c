"""baresip 1.0.0 as a headless SIP phone on loopback, driven over its ctrl_tcp socket.

Responsible for writing a config that keeps baresip off the real network and the sound card
(see shared PEERS.md: net_interface 127.0.0.1, dns_server 127.0.0.1:53, aubridge as the null sink,
no stdio.so), starting it, sending menu commands as netstring-framed JSON and collecting the event
stream on a reader thread. Not responsible for judging what baresip does: tests do that.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.peers.ports import free_tcp_port

BARESIP = shutil.which("baresip")
MODULE_PATH = Path("/usr/lib/baresip/modules")
MODULES = ("g711", "g722", "l16", "aufile", "ausine", "aubridge")

Event = dict[str, Any]


class BaresipError(RuntimeError):
    """baresip did not start, answered a command with ok=false, or an awaited event never came."""


def _free_baresip_port(host: str, attempts: int = 50) -> int:
    """A port free for SIP over UDP and TCP, with the next one free for TLS (baresip binds port+1)."""
    for _ in range(attempts):
        port = free_tcp_port(host)
        if port >= 65535:
            continue
        socks = []
        try:
            for kind, p in ((socket.SOCK_DGRAM, port), (socket.SOCK_STREAM, port),
                            (socket.SOCK_STREAM, port + 1)):
                sock = socket.socket(socket.AF_INET, kind)
                socks.append(sock)
                sock.bind((host, p))
            return port
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise BaresipError(f"no free port pair for baresip on {host}")


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


class Baresip:
    """One baresip process with one account, `sip:<user>@127.0.0.1:<port>`.

    `audio` is "ausine" (an endless 440 Hz tone, 48 kHz stereo) or the path of a WAV file, whose
    rate and channel count become the source's (baresip hangs up when the file ends). With
    `record_dir`, the sndfile module writes what is sent and received there as WAVs.
    """

    def __init__(self, tmpdir: str | os.PathLike[str], user: str = "dev1", port: int | None = None,
                 audio: str | os.PathLike[str] = "ausine", record_dir: str | os.PathLike[str] | None = None,
                 auto_answer: bool = True, codecs: str | None = None, sip_trace: bool = False,
                 startup_timeout: float = 10.0) -> None:
        if BARESIP is None:
            raise BaresipError("baresip is not installed (apt install baresip-core)")
        self.host = "127.0.0.1"
        self.user = user
        self.dir = Path(tmpdir) / f"baresip-{user}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else _free_baresip_port(self.host)
        self.ctrl_port = free_tcp_port(self.host)
        self.uri = f"sip:{user}@{self.host}:{self.port}"
        self.log_path = self.dir / "baresip.log"
        self.events: list[Event] = []
        self._responses: dict[str, Event] = {}
        self._cond = threading.Condition()
        self._token = 0
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._write_config(audio, record_dir, auto_answer, codecs)
        args = [BARESIP, "-f", str(self.dir)] + (["-s"] if sip_trace else [])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        try:
            self._connect(startup_timeout)
        except BaseException:
            self.stop()
            raise

    # Setup ----------------------------------------------------------------------------------

    def _write_config(self, audio: str | os.PathLike[str], record_dir: str | os.PathLike[str] | None,
                      auto_answer: bool, codecs: str | None) -> None:
        if str(audio) == "ausine":
            source = ["audio_source ausine,440", "ausrc_srate 48000", "ausrc_channels 2"]
        else:
            with wave.open(str(audio)) as wav:
                rate, channels = wav.getframerate(), wav.getnchannels()
            source = [f"audio_source aufile,{Path(audio).resolve()}", f"ausrc_srate {rate}",
                      f"ausrc_channels {channels}"]
        modules = list(MODULES)
        extra = []
        if record_dir is not None:
            Path(record_dir).mkdir(parents=True, exist_ok=True)
            modules.append("sndfile")
            extra.append(f"snd_path {Path(record_dir).resolve()}")
        lines = [
            "poll_method epoll",
            f"sip_listen {self.host}:{self.port}",
            "call_local_timeout 120",
            "call_max_calls 8",
            "audio_player aubridge,nil",  # alsa,null busy-loops; aubridge,nil is a quiet sink
            "audio_alert aubridge,nil",
            *source,
            f"net_interface {self.host}",  # without it baresip opens no SIP socket
            f"dns_server {self.host}:53",  # never the host's resolver
            f"module_path {MODULE_PATH}",
            *(f"module {name}.so" for name in modules),
            "module_tmp account.so",
            "module_app menu.so",
            "module_app ctrl_tcp.so",
            f"ctrl_tcp_listen {self.host}:{self.ctrl_port}",
            *extra,
        ]
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        params = ["regint=0", "answermode=" + ("auto" if auto_answer else "manual")]
        if codecs:
            params.append(f"audio_codecs={codecs}")
        account = f"<{self.uri}>;" + ";".join(params)
        (self.dir / "accounts").write_text(account + "\n")
        (self.dir / "contacts").write_text("")

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BaresipError(f"baresip exited with {self.proc.returncode}: {self.log()}")
            try:
                self._sock = socket.create_connection((self.host, self.ctrl_port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BaresipError(f"ctrl_tcp did not open within {timeout} s: {self.log()}") from None
                time.sleep(0.02)
        self._sock.settimeout(0.2)
        self._reader = threading.Thread(target=self._read, name=f"baresip-{self.user}", daemon=True)
        self._reader.start()

    # The control socket ---------------------------------------------------------------------

    def _read(self) -> None:
        # Its own reference: stop() clears self._sock while this thread may still be reading.
        sock = self._sock
        assert sock is not None
        buf = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while True:
                colon = buf.find(b":")
                if colon < 0 or not buf[:colon].isdigit():
                    break
                length = int(buf[:colon])
                if len(buf) < colon + 1 + length + 1:
                    break
                payload = buf[colon + 1:colon + 1 + length]
                buf = buf[colon + 2 + length:]
                self._dispatch(json.loads(payload))

    def _dispatch(self, message: Event) -> None:
        with self._cond:
            if message.get("response"):
                self._responses[str(message.get("token"))] = message
            elif message.get("event"):
                message["received_at"] = time.monotonic()
                self.events.append(message)
            self._cond.notify_all()

    def command(self, cmd: str, params: str | None = None, timeout: float = 5.0) -> Event:
        """Send one menu command; return baresip's response ({"ok": ..., "data": ...})."""
        if self._sock is None:
            raise BaresipError("baresip is not running")
        with self._cond:
            self._token += 1
            token = str(self._token)
        message: Event = {"command": cmd, "token": token}
        if params is not None:
            message["params"] = params
        self._sock.sendall(_netstring(json.dumps(message).encode()))
        deadline = time.monotonic() + timeout
        with self._cond:
            while token not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BaresipError(f"no response to {cmd!r} within {timeout} s")
                self._cond.wait(left)
            return self._responses.pop(token)

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 5.0,
                   start: int = 0) -> Event:
        """The first event from index `start` on for which `predicate` holds, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                while index < len(self.events):
                    event = self.events[index]
                    index += 1
                    if predicate(event):
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [e.get("type") for e in self.events[start:]]
                    raise BaresipError(f"no matching event within {timeout} s; saw {seen}")
                self._cond.wait(left)

    def wait_call_event(self, event_type: str, timeout: float = 5.0, start: int = 0) -> Event:
        """Wait for a call event by its type, e.g. "CALL_ESTABLISHED" or "CALL_CLOSED"."""
        return self.wait_event(lambda e: e.get("type") == event_type, timeout, start)

    # Menu commands --------------------------------------------------------------------------

    def dial(self, uri: str) -> Event:
        return self._ok("dial", uri)

    def hangup(self) -> Event:
        """Hang up the current call."""
        return self._ok("hangup")

    def accept(self) -> Event:
        """Answer the ringing incoming call (when started with auto_answer=False)."""
        return self._ok("accept")

    def reinvite(self) -> Event:
        return self._ok("reinvite")

    def transfer(self, uri: str) -> Event:
        """Blind transfer of the current call (REFER)."""
        return self._ok("transfer", uri)

    def calls(self) -> list[dict[str, str]]:
        """The active calls from `listcalls`: line, duration, state and peer URI of each."""
        data = self._ok("listcalls").get("data", "")
        calls = []
        for match in re.finditer(r"\[line (\d+)\]\s+(\S+)\s+(\S+)\s+(\S+)", data):
            line, duration, state, peer = match.groups()
            calls.append({"line": line, "duration": duration, "state": state, "peer_uri": peer})
        return calls

    def _ok(self, cmd: str, params: str | None = None) -> Event:
        response = self.command(cmd, params)
        if not response.get("ok"):
            raise BaresipError(f"{cmd} {params or ''} failed: {response.get('data')}")
        return response

    # Lifetime -------------------------------------------------------------------------------

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop baresip by its PID (SIGTERM, then SIGKILL) and close the control socket."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._reader is not None:
            self._reader.join(timeout)
        self._log.close()

    def __enter__(self) -> Baresip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
