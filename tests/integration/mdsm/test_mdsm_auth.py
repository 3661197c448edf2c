"""`sipmob-mdsm` with its key: its virtual devices' registrations are signed, and only it changes them.

The real `sipmob-slpda` and `sipmob-mdsm` on loopback, the key made in the test's tmp directory as
the package's postinst makes /etc/sipmob/keys/mdsm.key. No member needs to run: registering a
virtual device does not contact its members.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "slpda"), str(HERE)]
from mdsm_process import HOST, Mdsm  # noqa: E402
from registrant_keys import (  # noqa: E402
    assert_only_its_key_changes,
    deregistered_as,
    keyed_da,
    make_keys,
    registered_as,
)
from saproxy_process import wait_until  # noqa: E402

SYSTEM = '[[system]]\nname = "living-room"\nmembers = ["sip:tv@127.0.0.1:9"]\nroom = "living room"\n'
SECOND = '[[system]]\nname = "kitchen"\nmembers = ["sip:speaker@127.0.0.1:9"]\n'


def keyed_mdsm(directory: Path, da_port: int, key_file: Path, systems: str) -> Mdsm:
    directory.mkdir(exist_ok=True)
    mdsm = Mdsm(directory, f"{HOST}:{da_port}", systems)
    mdsm.head = mdsm.head.replace("[slp]\n", f'[slp]\nkey_file = "{key_file}"\n', 1)
    mdsm.write(systems)
    return mdsm.start()


def test_virtual_devices_are_registered_signed_and_only_the_mdsm_changes_them(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys", "mdsm")
    da = keyed_da(tmp_path / "da", keys)
    mdsm = None
    try:
        mdsm = keyed_mdsm(tmp_path / "mdsm", da.port, keys / "mdsm.key", SYSTEM + SECOND)
        living, kitchen = mdsm.uri("living-room"), mdsm.uri("kitchen")
        assert wait_until(lambda: registered_as(da, living, "mdsm") and registered_as(da, kitchen, "mdsm"))
        assert "unsigned" not in mdsm.output()
        assert_only_its_key_changes(da, living, "service:sip-device", "mdsm")
        # A system removed from the file (SIGHUP): the MDSM's own signed deregistration is taken.
        mdsm.write(SYSTEM)
        mdsm.hup()
        assert wait_until(lambda: deregistered_as(da, kitchen, "mdsm"))
        assert_only_its_key_changes(da, living, "service:sip-device", "mdsm")
    finally:
        if mdsm is not None:
            mdsm.stop()
        da.stop()


def test_without_the_key_the_mdsm_registers_unsigned_and_says_so(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    da = keyed_da(tmp_path / "da", keys)
    mdsm = None
    try:
        mdsm = keyed_mdsm(tmp_path / "mdsm", da.port, keys / "mdsm.key", SYSTEM)
        living = mdsm.uri("living-room")
        assert wait_until(lambda: f"registered {living} " in da.output())
        assert not registered_as(da, living, "mdsm")
        assert "no key in" in mdsm.output() and "registrations are unsigned" in mdsm.output()
    finally:
        if mdsm is not None:
            mdsm.stop()
        da.stop()
