"""linphone (Debian's `linphone-cli` 5.1: `linphone-daemon`) as a SIP phone, driven over its command
socket.

The daemon runs headless with a HOME of its own (its data directory must exist or it opens no SIP
socket), a configuration that binds SIP over UDP to 127.0.0.1 on a free port, turns off its
network-state monitor (else it decides after 5 s that the network is down and closes its socket),
and answers calls by itself. Commands (``call-pause``, ``call-resume``, ``call-status``...) go over
the Unix socket ``/tmp/<pipe>`` that ``--pipe`` makes, one connection per command; a reply is
``Status: Ok|Error`` and, after a blank line, its body.

Not responsible for judging linphone's behaviour: tests do that. Stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.peers.process import terminate

LINPHONE_DAEMON = shutil.which("linphone-daemon")


class LinphoneError(RuntimeError):
    pass


class Linphone:
    """One linphone-daemon as `sip:<user>@127.0.0.1:<port>`, answering calls automatically."""

    def __init__(self, port: int, user: str = "linphone", *, workdir: str | os.PathLike[str] | None = None,
                 startup_timeout: float = 10.0) -> None:
        if LINPHONE_DAEMON is None:
            raise LinphoneError("linphone-daemon is not installed (apt linphone-cli)")
        self.port = port
        self.uri = f"sip:{user}@127.0.0.1:{port}"
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="linphone-"))
        home = self.workdir / "home"
        (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
        config = self.workdir / "linphonerc"
        config.write_text(
            f"[sip]\nsip_port={port}\nsip_tcp_port=-1\nsip_tls_port=-1\nauto_net_state_mon=0\n"
            f"bind_address=127.0.0.1\n[rtp]\naudio_rtp_port=0\n[net]\nfirewall_policy=0\n"
            f"[sound]\ncapture_dev_id=\nplayback_dev_id=\n")
        # the socket lives in /tmp under this name: unique per instance
        self.pipe = f"sipmob-linphone-{os.getpid()}-{port}"
        self.socket_path = Path("/tmp") / self.pipe
        self.log_path = self.workdir / "linphone.log"
        self._out = (self.workdir / "linphone.out").open("wb")
        env = {**os.environ, "HOME": str(home)}
        self.proc = subprocess.Popen(
            [LINPHONE_DAEMON, "--config", str(config), "--pipe", self.pipe, "--auto-answer",
             "--log", str(self.log_path)],
            stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self.socket_path.exists():
                try:
                    self.command("version")
                    return
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise LinphoneError(f"linphone-daemon did not start: {self.output()[-2000:]}")

    def command(self, line: str, timeout: float = 5.0) -> str:
        """Send one command; its whole reply (it has no terminator: read until it falls quiet).
        The daemon takes one client at a time and drops a second one at once, before reading it
        ("Cannot accept two client at the same time"): such a connection is tried again."""
        deadline = time.monotonic() + timeout
        while True:
            reply = b""
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(timeout)
                    s.connect(str(self.socket_path))
                    s.sendall(line.encode() + b"\n")
                    reply = s.recv(65536)
                    s.settimeout(0.3)
                    while reply and (chunk := s.recv(65536)):
                        reply += chunk
            except TimeoutError:
                pass
            except ConnectionError:
                reply = b""
            if reply or time.monotonic() > deadline:
                return reply.decode(errors="replace")
            time.sleep(0.1)

    def ok(self, line: str) -> str:
        reply = self.command(line)
        if not reply.startswith("Status: Ok"):
            raise LinphoneError(f"{line}: {reply.strip()}")
        return reply

    def call_state(self, call: int = 1) -> str:
        """The ``State:`` of call `call` (the daemon numbers its calls from 1): ``StreamsRunning``,
        ``Paused``...; "" when there is none."""
        for row in self.command(f"call-status {call}").splitlines():
            key, _, value = row.partition(":")
            if key.strip() == "State":
                return value.strip().removeprefix("LinphoneCall")
        return ""

    def output(self) -> str:
        text = ""
        for path in (self.workdir / "linphone.out", self.log_path):
            if path.exists():
                text += path.read_text(errors="replace")
        return text

    def stop(self) -> None:
        terminate(self.proc, timeout=5)
        self._out.close()
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
