"""The MDSM's egress socket (``[egress] control``): `sipmob egress` lists its calls per egress.

A real `sipmob-mdsm` on loopback with an egress list (one egress on lo: it reads netlink, it
never probes) and its socket in a directory of the test's; the ``sipmob`` command as a process.
Rules, each with its attack: only the daemon's user (and root) can open the socket (mode 0600 in a
0700 directory: another user is refused by the kernel); the socket answers one read-only command,
``egress`` (any other, a malformed request, a line over the length limit get an error or a closed
connection and change nothing); the MDSM keeps answering afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tests.integration.mdsm.mdsm_process import ENV, Mdsm
from tests.peers.ports import free_udp_port

from sipmob.mn import control_client as control


def sipmob(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sipmob.mn.cli", *args], env=ENV, capture_output=True,
                          text=True, timeout=30)


@pytest.fixture
def mdsm(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "egress.toml").write_text('[[egress]]\nname = "loop"\ninterface = "lo"\n')
    sock = tmp_path / "run" / "egress.sock"
    m = Mdsm(tmp_path, f"127.0.0.1:{free_udp_port()}", "",
             extra=f'[egress]\nfile = "{tmp_path / "egress.toml"}"\ncontrol = "{sock}"\n')
    m.start()
    m.sock = sock
    (tmp_path / "mn.toml").write_text("")
    m.cli = ("--config", str(tmp_path / "mn.toml"), "--control", str(tmp_path / "no-phone.sock"))
    yield m
    m.stop()
    assert not sock.exists(), "the socket outlived the daemon"


def test_sipmob_egress_lists_the_mdsms_egresses_without_a_phone(mdsm: Mdsm) -> None:
    out = sipmob(*mdsm.cli, "egress", "--mdsm-control", str(mdsm.sock))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("MDSM:\n") and "  loop  " in out.stdout, out.stdout
    assert "no sipmob phone is running" in out.stderr
    listing = json.loads(sipmob(*mdsm.cli, "egress", "--json", "--mdsm-control", str(mdsm.sock)).stdout)
    assert [(e["name"], e["calls"]) for e in listing["mdsm"]["egresses"]] == [("loop", [])]
    assert listing["mdsm"]["moves"] == []


def test_nothing_answers_no_listing(mdsm: Mdsm, tmp_path: Path) -> None:
    out = sipmob(*mdsm.cli, "egress", "--mdsm-control", str(tmp_path / "nothing.sock"))
    assert out.returncode != 0 and out.stdout == ""


def test_only_the_daemons_user_can_open_the_socket(mdsm: Mdsm) -> None:
    assert stat.S_IMODE(mdsm.sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(mdsm.sock.parent.stat().st_mode) == 0o700
    if os.geteuid() != 0:
        pytest.skip("needs root to try as another user")
    stranger = subprocess.run(
        [sys.executable, "-c",
         "import os, socket, sys\nos.setgid(65534)\nos.setgroups([])\nos.setuid(65534)\n"
         "s = socket.socket(socket.AF_UNIX)\n"
         "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
         "else:\n    print('connected')\n", str(mdsm.sock)], capture_output=True, text=True, timeout=30)
    assert stranger.stdout.strip() == "refused", stranger.stdout + stranger.stderr


@pytest.mark.parametrize("command", ["calls", "move", "stop", "transfer", ""])
def test_any_other_command_is_refused(mdsm: Mdsm, command: str) -> None:
    with pytest.raises(control.CommandError, match="answers only 'egress'"):
        control.request(mdsm.sock, command, {"call": "x", "to": "10.0.0.1"}, timeout=10)
    assert control.request(mdsm.sock, "egress", timeout=10)["egresses"][0]["name"] == "loop"


def test_malformed_and_overlong_requests_change_nothing(mdsm: Mdsm) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(mdsm.sock))
        s.sendall(b"{not json\n")
        assert json.loads(s.recv(65536))["error"].startswith("bad request")
        s.sendall(b'["egress"]\n')
        assert json.loads(s.recv(65536))["ok"] is False
        s.sendall(b"x" * (control.MAX_LINE + 10))  # no line end: the connection is closed
        data = b"1"
        while data:
            data = s.recv(65536)
    assert control.request(mdsm.sock, "egress", timeout=10)["egresses"][0]["name"] == "loop"
    assert "Traceback" not in mdsm.output()
