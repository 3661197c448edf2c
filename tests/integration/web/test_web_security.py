"""Attack tests for `sipmob-web`, one per rule of its module docstring, against the real daemon
on loopback with the real `sipmob-slpda` behind it."""

from __future__ import annotations

import socket
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipmob.slp.attrs import escape_value

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "slpda"), str(Path(__file__).resolve().parent)]
from slpda_process import HOST, Slpda  # noqa: E402
from web_process import PASSWORD, Web  # noqa: E402


@pytest.fixture
def da(tmp_path: Path) -> Iterator[Slpda]:
    (tmp_path / "da").mkdir()
    slpda = Slpda(tmp_path / "da").start()
    try:
        yield slpda
    finally:
        slpda.stop()


@pytest.fixture
def web(tmp_path: Path, da: Slpda) -> Iterator[Web]:
    w = Web(tmp_path, f"{HOST}:{da.port}", tmp_path / "no-phone.sock",
            extra="[limits]\nrequest_timeout = 1.5\nmax_streams = 2\nmax_body = 1024\n")
    try:
        yield w
    finally:
        w.stop()


def form(password: str) -> bytes:
    return urllib.parse.urlencode({"password": password}).encode()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_without_a_session_only_the_login_page_is_served(web: Web) -> None:
    status, headers, _ = web.request("GET", "/")
    assert status == 303 and headers["location"] == "/login"
    assert web.request("GET", "/api/state")[0] == 401
    assert web.request("GET", "/events")[0] == 401
    assert web.request("POST", "/api/action", b'{"action":"hangup","call":"1"}')[0] == 401
    assert web.request("GET", "/static/app.js")[0] == 200
    assert web.request("GET", "/static/../../etc/passwd")[0] in (401, 404)
    assert web.request("GET", "/", headers={"Cookie": "sipmob_session=forged"})[0] == 303


def test_the_session_cookie_is_httponly_and_samesite_strict(web: Web) -> None:
    status, headers, _ = web.request("POST", "/login", form(PASSWORD), FORM)
    assert status == 303
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
    assert "default-src 'none'" in headers["content-security-policy"]


def test_an_action_needs_the_sessions_csrf_token_and_our_origin(web: Web) -> None:
    s = web.login()
    body = b'{"action":"hangup","call":"1"}'
    json_type = {"Content-Type": "application/json"}
    assert s.request("POST", "/api/action", body, json_type)[0] == 403
    assert s.request("POST", "/api/action", body, {**json_type, "X-CSRF-Token": "wrong"})[0] == 403
    other = web.login()
    assert s.request("POST", "/api/action", body, {**json_type, "X-CSRF-Token": other.csrf})[0] == 403
    evil = {**json_type, "X-CSRF-Token": s.csrf, "Origin": "http://evil.example"}
    assert s.request("POST", "/api/action", body, evil)[0] == 403
    # With the token the action reaches the phone, which is not running here: 502 with the reason.
    status, result = s.action(action="hangup", call="1")
    assert status == 502 and "not running" in result["error"]
    assert s.action(action="format-disk", call="1")[0] == 400


def test_logout_needs_the_token_and_ends_the_session(web: Web) -> None:
    s = web.login()
    assert s.request("POST", "/logout", b"csrf=nope", FORM)[0] == 403
    assert s.request("POST", "/logout", f"csrf={s.csrf}".encode(), FORM)[0] == 303
    assert s.request("GET", "/api/state")[0] == 401


@pytest.mark.parametrize("origin", ["http://evil.example", "null"])
def test_a_login_posted_by_another_sites_page_is_refused(web: Web, origin: str) -> None:
    status, headers, _ = web.request("POST", "/login", form(PASSWORD), {**FORM, "Origin": origin})
    assert status == 403 and "set-cookie" not in headers


def test_brute_force_is_slowed_then_refused_per_source(web: Web) -> None:
    started = time.monotonic()
    for _ in range(5):
        assert web.request("POST", "/login", form("guess"), FORM)[0] == 401
    assert time.monotonic() - started >= 5 * 0.95  # each failure answered after a second
    status, headers, _ = web.request("POST", "/login", form(PASSWORD), FORM)
    assert status == 429 and int(headers["retry-after"]) > 0  # even the right password, for now


def test_bodies_above_the_limit_get_413(web: Web) -> None:
    s = web.login()
    big = b'{"action":"hangup","call":"1","pad":"' + b"x" * 4096 + b'"}'
    status, _, _ = s.request("POST", "/api/action", big, {"Content-Type": "application/json",
                                                         "X-CSRF-Token": s.csrf})
    assert status == 413
    with socket.create_connection((web.host, web.port), timeout=5) as sock:  # no length given: chunked
        sock.sendall(f"POST /api/action HTTP/1.1\r\nHost: x\r\nCookie: {s.cookie}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        for _ in range(8):
            sock.sendall(b"200\r\n" + b"x" * 512 + b"\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413")


def test_a_request_that_never_completes_is_dropped(web: Web) -> None:
    with socket.create_connection((web.host, web.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(6):  # one header line a second: an idle timeout alone would never fire
            time.sleep(0.5)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        sock.settimeout(5)
        try:
            data = sock.recv(100)
        except OSError:
            data = b""
        assert data == b"" and time.monotonic() - started < 4


def test_event_streams_are_bounded(web: Web) -> None:
    s = web.login()
    conns = []
    try:
        for _ in range(2):
            c = socket.create_connection((web.host, web.port), timeout=5)
            c.sendall(f"GET /events HTTP/1.1\r\nHost: x\r\nCookie: {s.cookie}\r\n\r\n".encode())
            assert b"200 OK" in c.recv(200)
            conns.append(c)
        assert s.request("GET", "/events")[0] == 503
    finally:
        for c in conns:
            c.close()


def test_device_names_cannot_inject_markup(web: Web, da: Slpda) -> None:
    with da.client() as slp:
        name = escape_value("</script><script>alert(1)</script>")
        slp.register("sip:x@127.0.0.1:5999", f"(name={name}),(room=hall)")
    s = web.login()
    status, _, page = s.request("GET", "/")
    assert status == 200
    assert b"alert(1)" in page and b"<script>alert" not in page


def test_without_a_password_file_nobody_logs_in(tmp_path: Path, da: Slpda) -> None:
    w = Web(tmp_path, f"{HOST}:{da.port}", tmp_path / "x.sock", password=None)
    try:
        status, _, page = w.request("POST", "/login", form(""), FORM)
        assert status == 401
        assert b"No password is set" in w.request("GET", "/login")[2]
    finally:
        w.stop()


def refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_only_the_configured_addresses_are_listened_on(tmp_path: Path, da: Slpda) -> None:
    w = Web(tmp_path, f"{HOST}:{da.port}", tmp_path / "x.sock", host="127.0.0.2")
    try:
        assert w.request("GET", "/login")[0] == 200
        assert refused("127.0.0.1", w.port) and refused("127.0.0.3", w.port)
    finally:
        w.stop()


def test_by_default_loopback_and_private_addresses_only_never_the_wildcard(tmp_path: Path, da: Slpda) -> None:
    w = Web(tmp_path, f"{HOST}:{da.port}", tmp_path / "x.sock", addresses=[])
    try:
        assert w.request("GET", "/login")[0] == 200
        assert refused("127.0.0.3", w.port)  # a wildcard bind would have accepted this
        line = next(line for line in w.output().splitlines() if "serving http" in line)
        served = line.rsplit(" on ", 1)[1].split(", ")
        assert served[0] == "127.0.0.1" and "0.0.0.0" not in served
    finally:
        w.stop()


def test_actions_waiting_for_a_stuck_phone_are_bounded(tmp_path: Path, da: Slpda) -> None:
    import threading
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "stuck.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # a phone that takes every request and never answers
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    w = Web(tmp_path, f"{HOST}:{da.port}", path)
    try:
        s = w.login()
        with ThreadPoolExecutor(8) as pool:
            waiting = [pool.submit(s.action, action="hangup", call="1") for _ in range(8)]
            assert until_held(held, 8)
            time.sleep(0.5)  # any late one in too
            status, result = s.action(action="hangup", call="1")
            assert status == 503 and "too many actions" in result["error"]
            for conn in held:
                conn.close()  # the phone goes away: every waiting action fails with a reason
            assert all(f.result(timeout=20)[0] == 502 for f in waiting)
    finally:
        stop.set()
        thread.join(5)
        server.close()
        w.stop()


def until_held(held: list[socket.socket], n: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while len(held) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(held) >= n


def test_a_new_password_takes_effect_on_reload(web: Web) -> None:
    import os
    import signal
    import subprocess

    from web_process import ENV

    done = subprocess.run([sys.executable, "-m", "sipmob.mn.cli", "web-password", "--stdin", "--file",
                           str(web.password_file)], input="a brand new password\n", env=ENV,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert web.password_file.stat().st_mode & 0o777 == 0o600
    os.kill(web.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if web.request("POST", "/login", form("a brand new password"), FORM)[0] == 303:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the new password was not taken\n" + web.output())
    assert web.request("POST", "/login", form(PASSWORD), FORM)[0] == 401
