"""Passwords, sessions and the login limit of sipmob-web, and the addresses it chooses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sipmob.web import auth
from sipmob.web.lan import is_lan, lan_addresses


def test_a_hash_verifies_its_password_only() -> None:
    stored = auth.hash_password("correct horse", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$")
    assert auth.verify_password("correct horse", stored)
    assert not auth.verify_password("correct hors", stored)
    assert not auth.verify_password("x" * (auth.MAX_PASSWORD + 1), stored)


@pytest.mark.parametrize("line", ["", "plain", "scrypt$1000$8$1$AA==$AA==", "scrypt$1024$8$1$!!$AA==",
                                  "scrypt$4194304$8$1$AA==$AA==", "md5$1$2$3$4$5"])
def test_foreign_or_costly_hashes_are_refused(line: str) -> None:
    with pytest.raises(auth.PasswordFileError):
        auth.parse_hash(line)


def test_the_file_is_written_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    line = auth.hash_password("secret", n=2**10)
    old = os.umask(0)
    try:
        auth.write_hash(str(path), line)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
    assert auth.read_hash(str(path)) == line
    with pytest.raises(auth.PasswordFileError, match="no password set"):
        auth.read_hash(str(tmp_path / "absent"))


def test_sessions_expire_and_are_bounded() -> None:
    sessions = auth.Sessions(lifetime=10, max_sessions=2)
    a = sessions.create(0)
    assert sessions.get(a.token, 5) is a and sessions.get(a.token, 10) is None
    b, c, d = sessions.create(11), sessions.create(12), sessions.create(13)
    assert sessions.get(b.token, 14) is None and sessions.get(d.token, 14) is d and len(sessions) == 2
    assert auth.csrf_ok(c, c.csrf) and not auth.csrf_ok(c, d.csrf) and not auth.csrf_ok(c, None)


def test_the_limiter_refuses_a_source_after_its_failures_until_the_window_moves() -> None:
    limiter = auth.LoginLimiter(per_source=3, total=100, window=60)
    for t in range(3):
        assert limiter.retry_after("a", t) == 0
        limiter.failed("a", t)
    assert limiter.retry_after("a", 3) == pytest.approx(57)
    assert limiter.retry_after("b", 3) == 0
    assert limiter.retry_after("a", 61) == 0


def test_the_limiter_has_a_total_over_all_sources() -> None:
    limiter = auth.LoginLimiter(per_source=5, total=4, window=60, max_sources=2)
    for i in range(4):
        limiter.failed(f"10.0.0.{i}", 0)
    assert limiter.retry_after("10.0.0.99", 1) == pytest.approx(59)


def test_lan_addresses_are_private_ones_plus_loopback() -> None:
    assert lan_addresses(["192.168.1.2", "8.8.8.8", "10.1.2.3", "fe80::1", "fd00::5", "2001:db8::1",
                          "0.0.0.0", "127.0.0.1", "100.64.0.1", "172.20.0.1"]) == \
        ["127.0.0.1", "192.168.1.2", "10.1.2.3", "fd00::5", "172.20.0.1"]
    assert not is_lan("169.254.1.1")
