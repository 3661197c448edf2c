"""The control socket for real: `ControlServer` on the reactor, the blocking `request` from a thread."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor

from sipmob.mn.control import CommandError, ControlServer, ControlUnavailable, request


def handler(command: str, args: Mapping[str, Any]) -> Any:
    if command == "fail":
        raise CommandError("refused: " + str(args.get("why")))
    return {"command": command, "args": dict(args)}


def ask(path: Path, *args: Any, **kw: Any) -> Any:
    """Run `request` in a thread while this thread turns the reactor; bounded to 10 s."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = request(path, *args, **kw)
        except Exception as exc:  # handed to the test thread
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while thread.is_alive() and time.monotonic() < deadline:
        reactor.iterate(0.01)  # type: ignore[attr-defined]
    thread.join(1)
    assert not thread.is_alive(), "no reply within 10 s"
    if "error" in out:
        raise out["error"]
    return out["result"]


@pytest.fixture
def server(tmp_path: Path) -> Any:
    srv = ControlServer(reactor, tmp_path / "run" / "sipmob" / "mn.sock", handler)
    srv.start()
    yield srv
    srv.stop()
    reactor.iterate(0)  # type: ignore[attr-defined]


def test_request_gets_the_result(server: ControlServer) -> None:
    assert ask(server.path, "calls", {"x": 1}) == {"command": "calls", "args": {"x": 1}}


def test_command_error_reaches_the_client_as_its_message(server: ControlServer) -> None:
    with pytest.raises(CommandError, match="refused: busy"):
        ask(server.path, "fail", {"why": "busy"})


def test_socket_is_private_to_its_user(server: ControlServer) -> None:
    assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(server.path.parent).st_mode) == 0o700


def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "mn.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # as if a phone died: the file stays, nobody listens
    assert path.exists()
    second = ControlServer(reactor, path, handler)
    second.start()
    try:
        assert ask(path, "calls") == {"command": "calls", "args": {}}
    finally:
        second.stop()


def test_second_server_on_a_live_socket_is_refused(server: ControlServer) -> None:
    with pytest.raises(OSError, match="in use by another sipmob phone"):
        ControlServer(reactor, server.path, handler).start()


def test_stop_removes_the_socket_file(tmp_path: Path) -> None:
    srv = ControlServer(reactor, tmp_path / "mn.sock", handler)
    srv.start()
    srv.stop()
    reactor.iterate(0)  # type: ignore[attr-defined]
    assert not (tmp_path / "mn.sock").exists()


def test_no_server_is_control_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ControlUnavailable, match="no sipmob phone is running"):
        request(tmp_path / "nothing.sock", "calls", timeout=1)
