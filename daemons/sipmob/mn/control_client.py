"""The blocking client side of the phone's control protocol (see `sipmob.mn.control`).

Responsible for: one request and its reply over the unix socket, the wire encoding, and the two
exceptions both sides share. Kept free of Twisted on purpose: every ``sipmob`` command imports it,
and importing Twisted cost most of their start-up (~100 ms idle, several times that under load).

Not here: the server (`sipmob.mn.control`), the commands (`sipmob.mn.cli`).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MAX_LINE = 65536


class CommandError(Exception):
    """A request that cannot be carried out; the message goes back to the user as it is."""


class ControlUnavailable(Exception):
    """Nothing answers on the control socket (no ``sipmob phone`` running there)."""


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def request(path: str | Path, command: str, args: Mapping[str, Any] | None = None, *,
            timeout: float = 30.0) -> Any:
    """Send one request and wait for its reply; returns ``result`` or raises `CommandError`
    (the phone's message) or `ControlUnavailable`. TimeoutError when no reply within ``timeout``."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlUnavailable(f"no sipmob phone is running (nothing answers on {path}: "
                                     f"{exc.strerror})") from None
        s.sendall(encode({"id": 1, "command": command, "args": dict(args or {})}))
        buffer = b""
        while b"\n" not in buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply to {command} within {timeout:g} s")
            s.settimeout(remaining)
            chunk = s.recv(65536)
            if not chunk:
                raise ControlUnavailable(f"the sipmob phone on {path} closed the connection")
            buffer += chunk
            if len(buffer) > MAX_LINE and b"\n" not in buffer:
                raise CommandError("reply too long")
    reply = json.loads(buffer.split(b"\n", 1)[0])
    if not reply.get("ok"):
        raise CommandError(str(reply.get("error", "failed")))
    return reply.get("result")
