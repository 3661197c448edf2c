"""REGISTER with Digest against an independent registrar: sipp challenges the first REGISTER with
401, checks the credentials of the second with its own ``verifyauth`` (RFC 2617 MD5, qop=auth),
accepts, then accepts our un-REGISTER; and kamailio (apt) as a registrar with SHA-256 Digest
(``pv_www_authenticate`` against a static password, ``save("location")``).

Our side is `sipmob.service.sipua.UserAgent` in a process of its own: this file run as a program
(``python test_register.py REGISTRAR PORT USER PASSWORD``) registers, unregisters and prints one
JSON line per outcome. Everything is on 127.0.0.1, bounded by sipp's ``-m``/``-timeout`` and the
program's own reactor deadline, and stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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

from tests.peers import kamailio as kamailio_peer  # noqa: E402
from tests.peers import sipp  # noqa: E402
from tests.peers.ports import free_udp_port  # noqa: E402

pytestmark = pytest.mark.peer
needs_sipp = pytest.mark.skipif(sipp.SIPP is None, reason="sipp is not installed")
# A registrar that challenges with SHA-256 Digest (qop=auth) and checks against one static password.
KAMAILIO_CFG = """#!KAMAILIO
debug=2
log_stderror=yes
children=1
auto_aliases=no
listen=udp:127.0.0.1:{port}
mpath="{modules}"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
modparam("usrloc", "db_mode", 0)
modparam("auth", "algorithm", "SHA-256")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (method=="REGISTER") {{
        if (!pv_www_authenticate("home.test", "s3cret", "0")) {{
            www_challenge("home.test", "1");
            exit;
        }}
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    sl_send_reply("404", "Not Found");
}}
"""


def _client_run(registrar: str, password: str) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'daemons'}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, __file__, registrar, str(free_udp_port()), "alice", password],
                          capture_output=True, timeout=30, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return [json.loads(line) for line in proc.stdout.decode().splitlines() if line.startswith("{")]


def _register(tmp_path: Path, password: str) -> tuple[list[dict[str, object]], sipp.SippResult]:
    registrar_port = free_udp_port()
    server = sipp.SippProcess(SCENARIOS / "uas_register_digest.xml", local_port=registrar_port,
                              timeout=15,
                              workdir=tmp_path / "sipp")
    try:
        server.wait_listening()
        lines = _client_run(f"127.0.0.1:{registrar_port}", password)
    finally:
        result = server.wait()
    return lines, result


@needs_sipp
def test_register_answers_the_401_and_sipp_verifies_the_credentials(tmp_path: Path) -> None:
    lines, result = _register(tmp_path, "s3cret")
    assert result.returncode == 0, result.stdout
    assert lines == [{"event": "registered", "expires": 600}, {"event": "unregistered", "state": "gone"}]
    assert re.search(r"^Expires: 0\s*$", result.messages, re.MULTILINE)  # the un-REGISTER


@needs_sipp
def test_a_wrong_password_is_refused_by_sipp(tmp_path: Path) -> None:
    lines, result = _register(tmp_path, "wrong")
    assert result.returncode != 0  # verifyauth said no
    assert lines == [{"event": "failed", "status": 403}]


def _phone_config(tmp_path: Path, registrar_port: int, password_file: Path) -> Path:
    config = tmp_path / "mn.toml"
    config.write_text(
        f'[listen]\naddress = "127.0.0.1"\nport = {free_udp_port()}\n'
        f'[identity]\nuser = "alice"\nregistrar = "sip:127.0.0.1:{registrar_port}"\n'
        f'password_file = "{password_file}"\n'
        f'[slp]\nda = "127.0.0.1:{free_udp_port()}"\n[control]\npath = "{tmp_path / "mn.sock"}"\n')
    return config


def _phone_env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}


@needs_sipp
def test_the_phone_registers_at_start_and_unregisters_when_stopped(tmp_path: Path) -> None:
    registrar_port = free_udp_port()
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    server = sipp.SippProcess(SCENARIOS / "uas_register_digest.xml", local_port=registrar_port, timeout=20,
                              workdir=tmp_path / "sipp")
    log_path = tmp_path / "phone.log"
    try:
        server.wait_listening()
        with log_path.open("wb") as log:
            phone = subprocess.Popen([sys.executable, "-m", "sipmob.mn.cli", "phone", "--config",
                                      str(_phone_config(tmp_path, registrar_port, password))],
                                     env=_phone_env(), stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 10
                while "registered sip:alice" not in log_path.read_text() and time.monotonic() < deadline:
                    if phone.poll() is not None:
                        break
                    time.sleep(0.05)
            finally:
                if phone.poll() is None:
                    os.kill(phone.pid, signal.SIGTERM)
                    try:
                        phone.wait(10)
                    except subprocess.TimeoutExpired:
                        os.kill(phone.pid, signal.SIGKILL)
                        phone.wait(5)
    finally:
        result = server.wait()
    output = log_path.read_text()
    assert result.returncode == 0, result.stdout + output
    assert f"registered sip:alice@127.0.0.1 at sip:127.0.0.1:{registrar_port} for 600 s" in output
    assert f"unregistered sip:alice@127.0.0.1 at sip:127.0.0.1:{registrar_port}" in output
    assert "s3cret" not in output


def test_check_config_names_an_unreadable_password_file(tmp_path: Path) -> None:
    config = _phone_config(tmp_path, 5060, tmp_path / "no-such-file")
    proc = subprocess.run([sys.executable, "-m", "sipmob.mn.cli", "phone", "--config", str(config),
                           "--check-config"], env=_phone_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "identity.password_file: cannot read the password file" in proc.stdout + proc.stderr


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[int]:
    if not kamailio_peer.installed():
        pytest.skip("kamailio is not installed")
    port = free_udp_port()
    server = kamailio_peer.Kamailio(KAMAILIO_CFG.format(port=port, modules=kamailio_peer.MODULES),
                                    tmp_path / "kamailio", [port])
    try:
        yield port
    finally:
        server.stop()  # the whole process group: its children ignore SIGTERM once the main one is gone


def test_kamailio_leaves_no_process_behind(tmp_path: Path) -> None:
    if not kamailio_peer.installed():
        pytest.skip("kamailio is not installed")
    port = free_udp_port()
    server = kamailio_peer.Kamailio(KAMAILIO_CFG.format(port=port, modules=kamailio_peer.MODULES),
                                    tmp_path / "kamailio", [port])
    deadline = time.monotonic() + 10
    children: list[int] = []
    while not children and time.monotonic() < deadline:  # it binds first, then forks
        children = [pid for pid in kamailio_peer.group_members(server.pgid) if pid != server.pgid]
        time.sleep(0.02)
    assert children  # children=1 still forks a worker, a timer and more: the ones that used to stay
    server.stop()
    assert kamailio_peer.group_members(server.pgid) == []


def test_kamailio_accepts_our_sha256_answer_and_the_unregister(kamailio: int) -> None:
    lines = _client_run(f"127.0.0.1:{kamailio}", "s3cret")
    assert lines == [{"event": "registered", "expires": 3600}, {"event": "unregistered", "state": "gone"}]


def test_kamailio_keeps_refusing_a_wrong_password(kamailio: int) -> None:
    assert _client_run(f"127.0.0.1:{kamailio}", "wrong") == [{"event": "failed", "status": 401}]
