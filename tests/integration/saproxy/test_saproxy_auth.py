"""The SA proxy with its secret key: its devices' registrations are signed, and only it can change them.

`sipmob-saproxy` and `sipmob-slpda` on loopback, sharing a key made in the test's tmp directory
(as the packages' postinst makes /etc/sipmob/keys/saproxy.key).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from saproxy_process import FakeDevice, Saproxy, found, wait_until
from slpda_process import Slpda

from sipmob.slp.messages import ErrorCode


def make_key(directory: Path, spi: str) -> Path:
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{spi}.key"
    path.write_bytes(os.urandom(32).hex().encode() + b"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    make_key(tmp_path / "keys", "saproxy")
    return tmp_path / "keys"


@pytest.fixture
def da(tmp_path: Path, keys: Path) -> Iterator[Slpda]:
    (tmp_path / "da").mkdir()
    daemon = Slpda(tmp_path / "da", f'[registration]\nkey_directory = "{keys}"\n').start()
    yield daemon
    daemon.stop()


@pytest.fixture
def tv() -> Iterator[FakeDevice]:
    fake = FakeDevice()
    yield fake
    fake.stop_soon()
    fake.close()


def test_signed_registrations_can_be_changed_by_the_saproxy_only(tmp_path: Path, keys: Path, da: Slpda,
                                                                  tv: FakeDevice) -> None:
    proxy = Saproxy(tmp_path, [da.port], slp=f'spi = "saproxy"\nkey_file = "{keys / "saproxy.key"}"\n')
    proxy.add_device("tv", tv.uri)
    proxy.start()
    try:
        assert wait_until(lambda: found(da.port) == [tv.uri])
        assert "as saproxy" in da.output()
        assert "unsigned" not in proxy.output()
        # Anyone else, even on the box itself (the same source address), cannot remove or change it.
        with da.client() as other:
            assert other.deregister(tv.uri).error == ErrorCode.AUTHENTICATION_ABSENT
            assert other.register(tv.uri, "(name=Rogue)").error == ErrorCode.AUTHENTICATION_ABSENT
        assert found(da.port) == [tv.uri]
        # The SA proxy deregisters it when it stops: its signed SrvDeReg is accepted.
        assert proxy.stop() == 0
        assert wait_until(lambda: found(da.port) == [])
    finally:
        proxy.stop()


def test_a_key_file_others_can_read_is_a_config_error(tmp_path: Path, keys: Path) -> None:
    (keys / "saproxy.key").chmod(0o644)
    proxy = Saproxy(tmp_path, [427], slp=f'key_file = "{keys / "saproxy.key"}"\n')
    result = proxy.check_config()
    assert result.returncode == 1 and "slp.key_file" in result.stderr and "chmod 600" in result.stderr


def test_without_a_key_file_registrations_are_unsigned_and_said_so(tmp_path: Path, da: Slpda,
                                                                   tv: FakeDevice) -> None:
    proxy = Saproxy(tmp_path, [da.port], slp=f'key_file = "{tmp_path / "absent.key"}"\n')
    proxy.add_device("tv", tv.uri)
    proxy.start()
    try:
        assert wait_until(lambda: found(da.port) == [tv.uri])
        assert "registrations are unsigned" in proxy.output()
        assert "as saproxy" not in da.output()
    finally:
        proxy.stop()
