"""REGISTER with Digest against an independent registrar: sipp challenges the first REGISTER with
401, checks the credentials of the second with its own ``verifyauth`` (RFC 2617 MD5, qop=auth),
accepts, then accepts our un-REGISTER.

Our side is `sipmob.service.sipua.UserAgent` in a process of its own: this file run as a program
(``python test_register.py REGISTRAR PORT USER PASSWORD``) registers, unregisters and prints one
JSON line per outcome. Everything is on 127.0.0.1, bounded by sipp's ``-m``/``-timeout`` and the
program's own reactor deadline, and stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
ROOT = Path(__file__).resolve().parents[3]


def _client(registrar: str, port: int, user: str, password: str) -> None:
    from twisted.internet import defer, reactor

    from sipmob.service.sipua import RegistrationFailed, UserAgent

    def out(**fields: object) -> None:
        print(json.dumps(fields), flush=True)

    @defer.inlineCallbacks
    def run() -> object:
        ua = UserAgent(reactor, listen=[("127.0.0.1", port, "udp")], user=user, credentials=(user, password))
        yield ua.start()
        try:
            registration = yield ua.register(f"sip:{registrar}", expires=3600)
            out(event="registered", expires=registration.expires)
            yield registration.unregister()
            out(event="unregistered", state=registration.state)
        except RegistrationFailed as exc:
            out(event="failed", status=exc.status)
        finally:
            yield ua.stop()
            reactor.stop()

    reactor.callWhenRunning(run)
    reactor.callLater(15, reactor.stop)
    reactor.run()


if __name__ == "__main__":
    _client(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])
    sys.exit(0)

from tests.peers import sipp  # noqa: E402
from tests.peers.ports import free_udp_port  # noqa: E402

pytestmark = [pytest.mark.peer, pytest.mark.skipif(sipp.SIPP is None, reason="sipp is not installed")]


def _register(tmp_path: Path, password: str) -> tuple[list[dict[str, object]], sipp.SippResult]:
    registrar_port = free_udp_port()
    server = sipp.SippProcess(SCENARIOS / "uas_register_digest.xml", local_port=registrar_port,
                              timeout=15,
                              workdir=tmp_path / "sipp")
    try:
        server.wait_listening()
        env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemons'}{os.pathsep}{ROOT}"}
        proc = subprocess.run([sys.executable, __file__, f"127.0.0.1:{registrar_port}", str(free_udp_port()),
                               "alice", password], capture_output=True, timeout=30, env=env, cwd=tmp_path)
    finally:
        result = server.wait()
    lines = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]
    assert proc.returncode == 0, proc.stderr.decode()
    return lines, result


def test_register_answers_the_401_and_sipp_verifies_the_credentials(tmp_path: Path) -> None:
    lines, result = _register(tmp_path, "s3cret")
    assert result.returncode == 0, result.stdout
    assert lines == [{"event": "registered", "expires": 600}, {"event": "unregistered", "state": "gone"}]
    assert re.search(r"^Expires: 0\s*$", result.messages, re.MULTILINE)  # the un-REGISTER


def test_a_wrong_password_is_refused_by_sipp(tmp_path: Path) -> None:
    lines, result = _register(tmp_path, "wrong")
    assert result.returncode != 0  # verifyauth said no
    assert lines == [{"event": "failed", "status": 403}]
