"""The control protocol between the ``sipmob`` commands and a running ``sipmob phone``.

JSON lines over a unix stream socket (default `sipmob.mn.config.default_control_path`). Each request
is one line ``{"id": 1, "command": "transfer", "args": {...}}``; each gets exactly one reply line,
``{"id": 1, "ok": true, "result": ...}`` or ``{"id": 1, "ok": false, "error": "one line"}``, in
the order the requests finish. A connection may carry many requests. Lines longer than
`MAX_LINE` close the connection (a client that sends them is not ours).

`ControlServer` is the Twisted side: it owns the socket file (created mode 0600 in a directory it
creates mode 0700, removed on stop) and hands each request to a `Handler`, which returns a value or
a Deferred; a `CommandError` becomes ``ok: false`` with its message, any other exception is logged
and answered "internal error". `request`, the blocking client side the commands use, is in
`sipmob.mn.control_client` (re-exported here).

Not here: what the commands do (`sipmob.mn.phone`) or their command line (`sipmob.mn.cli`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.protocols.basic import LineOnlyReceiver

# The blocking client lives apart so that the ``sipmob`` commands start without Twisted; its names
# stay importable from here for the phone's side.
from sipmob.mn.control_client import MAX_LINE, CommandError, ControlUnavailable, encode, request

__all__ = ["MAX_LINE", "CommandError", "ControlServer", "ControlUnavailable", "Handler", "encode", "request"]

log = logging.getLogger("sipmob.mn.control")


Handler = Callable[[str, Mapping[str, Any]], Any]


class _ControlProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def lineReceived(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError("a request is an object with a string 'command'")
            args = request.get("args", {})
            if not isinstance(args, dict):
                raise ValueError("'args' must be an object")
        except ValueError as exc:
            self._reply({"id": None, "ok": False, "error": f"bad request: {exc}"})
            return
        rid = request.get("id")
        d = defer.maybeDeferred(self.handler, request["command"], args)
        d.addCallbacks(lambda result: self._reply({"id": rid, "ok": True, "result": result}),
                       lambda failure: self._failed(rid, request["command"], failure))

    def _failed(self, rid: Any, command: str, failure: Any) -> None:
        if failure.check(CommandError):
            self._reply({"id": rid, "ok": False, "error": str(failure.value)})
        else:
            log.error("control command %s failed: %s", command, failure.getTraceback())
            self._reply({"id": rid, "ok": False, "error": f"internal error in {command}"})

    def _reply(self, message: Mapping[str, Any]) -> None:
        if self.transport is not None and self.connected:
            self.transport.write(encode(message))

    def lineLengthExceeded(self, line: bytes) -> None:
        if self.transport is not None:
            self.transport.loseConnection()


class _ControlFactory(protocol.Factory):
    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def buildProtocol(self, addr: Any) -> _ControlProtocol:
        return _ControlProtocol(self.handler)


class ControlServer:
    """Listens on the control socket and answers requests with ``handler``."""

    def __init__(self, reactor: Any, path: str | Path, handler: Handler) -> None:
        self.reactor = reactor
        self.path = Path(path)
        self.handler = handler
        self._port: Any = None

    def start(self) -> None:
        """Bind the socket; raises OSError when another live process answers on it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _answers(self.path):
                raise OSError(f"{self.path} is in use by another sipmob phone")
            self.path.unlink()  # left behind by a process that died
        # Only the phone's user may move its calls. listenUNIX chmods to ``mode`` after binding; the
        # umask closes the moment between the two.
        old = os.umask(0o177)
        try:
            self._port = self.reactor.listenUNIX(str(self.path), _ControlFactory(self.handler), mode=0o600)
        finally:
            os.umask(old)

    def stop(self) -> defer.Deferred[Any]:
        port, self._port = self._port, None
        if port is None:
            return defer.succeed(None)
        d: defer.Deferred[Any] = defer.maybeDeferred(port.stopListening)

        def unlink(result: Any) -> Any:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            return result

        return d.addBoth(unlink)


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
