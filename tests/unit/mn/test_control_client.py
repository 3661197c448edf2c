"""The ``sipmob`` commands' control client: a real exchange over a unix socket, and a start-up that
does not pay for Twisted."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmob.mn import control, control_client

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def phone_socket(tmp_path: Path) -> Iterator[Path]:
    """A stand-in phone answering one ``calls`` request with one call, over a real unix socket."""
    path = tmp_path / "control.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            line = conn.makefile("rb").readline()
            request = json.loads(line)
            call = {"id": "1", "peer": "sip:alice@example.test", "state": "confirmed", "streams": []}
            conn.sendall(control_client.encode({"id": request["id"], "ok": True, "result": [call]}))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    server.close()
    thread.join(5)


def test_server_side_names_are_the_client_ones() -> None:
    # The phone raises control.CommandError; the commands catch control_client.CommandError.
    assert control.CommandError is control_client.CommandError
    assert control.ControlUnavailable is control_client.ControlUnavailable
    assert control.request is control_client.request


def test_sipmob_calls_runs_without_importing_twisted(phone_socket: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "sipmob.mn.cli", "--config", str(tmp_path / "absent.toml"),
         "--control", str(phone_socket), "calls"],
        env={"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
        capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert "sip:alice@example.test" in done.stdout
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "sipmob.mn.control_client" in imported
    assert not [m for m in imported if m.split(".")[0] in ("twisted", "zope")]


def test_nothing_listening_is_control_unavailable(tmp_path: Path) -> None:
    with pytest.raises(control_client.ControlUnavailable):
        control_client.request(tmp_path / "none.sock", "calls")
