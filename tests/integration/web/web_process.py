"""Run `sipmob-web` as a real process on a free loopback port, and talk HTTP to it.

Used by the web tests and tests/bench/bench_web.py. The daemon is started with
``python -m sipmob.web.main --config FILE``, considered up once it answers ``GET /login``, and
stopped with SIGTERM by its PID. `Session` is a small HTTP client that keeps the cookie.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from tests.peers.ports import free_tcp_port
from tests.peers.process import terminate

ROOT = Path(__file__).resolve().parents[3]
ENV = {"PYTHONPATH": str(ROOT / "daemons"), "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"}
PASSWORD = "correct horse battery"


class Web:
    def __init__(self, directory: Path, da: str, control: Path | str, host: str = "127.0.0.1",
                 extra: str = "", password: str | None = PASSWORD, poll: float = 0.5,
                 addresses: list[str] | None = None) -> None:
        self.host = host
        self.port = free_tcp_port(host)
        self.dir = directory
        self.password_file = directory / "web-password"
        if password is not None:
            done = subprocess.run([sys.executable, "-m", "sipmob.mn.cli", "web-password", "--stdin", "--file",
                                   str(self.password_file)], input=password + "\n", env=ENV,
                                  capture_output=True, text=True, timeout=30, check=False)
            assert done.returncode == 0, done.stderr
        listen = json.dumps(addresses if addresses is not None else [host])
        self.config = directory / "web.toml"
        self.config.write_text(
            f"[listen]\naddresses = {listen}\nport = {self.port}\n"
            f'[auth]\npassword_file = "{self.password_file}"\n'
            f'[sources]\nda = "{da}"\nphone_control = "{control}"\npoll_interval = {poll}\nunits = []\n'
            + extra)
        self.log_path = directory / "web.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "sipmob.web.main", "--config", str(self.config)],
                                     env=ENV, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(self.output())
            try:
                if self.request("GET", "/login")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("sipmob-web did not answer\n" + self.output())
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 10.0
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def login(self, password: str = PASSWORD, csrf: bool = True) -> Session:
        status, headers, body = self.request(
            "POST", "/login", urllib.parse.urlencode({"password": password}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"})
        if status != 303:
            raise AssertionError(f"login: {status} {body[:200]!r}")
        cookie = headers["set-cookie"].split(";", 1)[0]
        session = Session(self, cookie)
        if csrf:  # the token is in the page: fetching it builds the page once
            session.csrf = session.page_csrf()
        return session

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.proc)  # type: ignore[arg-type]
        self._log.close()


class Session:
    def __init__(self, web: Web, cookie: str) -> None:
        self.web = web
        self.cookie = cookie
        self.csrf = ""

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 70.0
                ) -> tuple[int, dict[str, str], bytes]:
        return self.web.request(method, path, body, {"Cookie": self.cookie, **(headers or {})}, timeout)

    def page_csrf(self) -> str:
        status, _, body = self.request("GET", "/")
        assert status == 200, status
        match = re.search(rb'name="csrf-token" content="([^"]+)"', body)
        assert match
        return match.group(1).decode()

    def action(self, **body: Any) -> tuple[int, dict[str, Any]]:
        status, _, data = self.request("POST", "/api/action", json.dumps(body).encode(),
                                       {"Content-Type": "application/json", "X-CSRF-Token": self.csrf})
        return status, json.loads(data)

    def state(self) -> dict[str, Any]:
        status, _, data = self.request("GET", "/api/state")
        assert status == 200, (status, data)
        return dict(json.loads(data))
