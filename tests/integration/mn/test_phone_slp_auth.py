"""`sipmob phone` as a device of the home, with a key made by ``sipmob keygen``: signed registrations.

The real `sipmob-slpda` and ``sipmob phone`` (``[device] enabled``) on loopback. ``sipmob keygen
NAME --directory KEYS --copy FILE`` makes the DA's copy (KEYS/NAME.key) and the phone's (FILE), as
a household would for a phone run by a user; the phone names FILE in ``[slp] key_file``.
"""

from __future__ import annotations

from pathlib import Path

from phone_process import Phone, run
from registrant_keys import assert_only_its_key_changes, deregistered_as, keyed_da, registered_as
from saproxy_process import wait_until


def test_the_phone_signs_its_device_registration_with_the_key_keygen_made(tmp_path: Path) -> None:
    keys, home = tmp_path / "keys", tmp_path / "home"
    home.mkdir()
    made = run("-m", "sipmob.mn.cli", "keygen", "kitchen-phone", "--directory", str(keys),
               "--copy", str(home / "phone.key"))
    assert made.returncode == 0, made.stderr
    assert f'spi = "kitchen-phone"\nkey_file = "{home / "phone.key"}"' in made.stdout
    da = keyed_da(tmp_path / "da", keys)
    (tmp_path / "mn").mkdir()
    phone = None
    try:
        phone = Phone(tmp_path / "mn", f"127.0.0.1:{da.port}", user="kitchen",
                      slp=f'spi = "kitchen-phone"\nkey_file = "{home / "phone.key"}"\n',
                      extra='[device]\nenabled = true\nname = "Kitchen phone"\n')
        url = phone.uri
        assert wait_until(lambda: registered_as(da, url, "kitchen-phone"))
        assert_only_its_key_changes(da, url, "service:sip-device", "kitchen-phone")
        phone.stop()
        assert wait_until(lambda: deregistered_as(da, url, "kitchen-phone"))
    finally:
        if phone is not None:
            phone.stop()
        da.stop()


def test_a_phone_key_others_can_read_is_refused_by_check_config(tmp_path: Path) -> None:
    key = tmp_path / "phone.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    key.chmod(0o644)
    config = tmp_path / "mn.toml"
    config.write_text(f'[slp]\nspi = "kitchen-phone"\nkey_file = "{key}"\n')
    checked = run("-m", "sipmob.mn.cli", "phone", "--config", str(config), "--check-config")
    assert checked.returncode == 1 and "slp.key_file" in checked.stderr and "chmod 600" in checked.stderr
