"""Registrants' key files, the [slp] spi/key_file keys of every registrant, and `sipmob keygen`."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from sipmob.mdsm.config import MdsmConfig
from sipmob.mn.config import MnConfig
from sipmob.saproxy.config import SaproxyConfig
from sipmob.service import slpkeys
from sipmob.service.config import ConfigError, load_config
from sipmob.slpda.config import SlpdaConfig
from sipmob.transcoder.config import TranscoderConfig

REGISTRANTS = [(MdsmConfig, "mdsm"), (TranscoderConfig, "transcoder"), (MnConfig, ""),
               (SaproxyConfig, "saproxy")]


KEY = os.urandom(32).hex().encode() + b"\n"


def key_file(path: Path, mode: int = 0o600, text: bytes = KEY) -> Path:
    path.write_bytes(text)
    path.chmod(mode)
    return path


def test_read_key_strips_whitespace_and_refuses_others_modes_links_and_short_keys(tmp_path: Path) -> None:
    good = key_file(tmp_path / "a.key")
    assert slpkeys.read_key(str(good)) == good.read_bytes().strip()
    with pytest.raises(ValueError, match="chmod 600"):
        slpkeys.read_key(str(key_file(tmp_path / "b.key", 0o640)))
    (tmp_path / "link.key").symlink_to(good)
    with pytest.raises(ValueError, match="cannot read"):
        slpkeys.read_key(str(tmp_path / "link.key"))
    with pytest.raises(ValueError, match="at least 16 bytes"):
        slpkeys.read_key(str(key_file(tmp_path / "c.key", text=b"short\n")))
    with pytest.raises(ValueError, match="not a regular file"):
        slpkeys.read_key("/dev/null")


@pytest.mark.parametrize(("config_type", "spi"), REGISTRANTS, ids=[s or "mn" for _, s in REGISTRANTS])
def test_every_registrant_has_spi_and_key_file_under_slp(tmp_path: Path, config_type: type, spi: str) -> None:
    config = load_config(config_type, tmp_path / "absent.toml")
    assert config.slp.spi == spi
    assert config.slp.key_file == (slpkeys.key_path(spi) if spi else "")
    bad = key_file(tmp_path / "bad.key", 0o644)
    (tmp_path / "c.toml").write_text(f'[slp]\nspi = "x"\nkey_file = "{bad}"\n')
    with pytest.raises(ConfigError, match=r"slp\.key_file: the key file .*chmod 600"):
        load_config(config_type, tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('[slp]\nspi = "no spaces allowed"\n')
    with pytest.raises(ConfigError, match=r"slp\.spi: must be 1-64 letters"):
        load_config(config_type, tmp_path / "c.toml")


def test_a_key_without_an_spi_to_sign_as_is_a_problem(tmp_path: Path) -> None:
    good = key_file(tmp_path / "phone.key")
    (tmp_path / "mn.toml").write_text(f'[slp]\nkey_file = "{good}"\n')
    with pytest.raises(ConfigError, match=r"slp\.spi: must name us"):
        load_config(MnConfig, tmp_path / "mn.toml")
    (tmp_path / "mn.toml").write_text(f'[slp]\nspi = "kitchen-phone"\nkey_file = "{good}"\n')
    assert load_config(MnConfig, tmp_path / "mn.toml").slp.spi == "kitchen-phone"


def test_signing_signs_with_a_key_and_says_so_when_there_is_none(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.slpkeys")
    good = key_file(tmp_path / "mdsm.key")
    (tmp_path / "mdsm.toml").write_text(f'[slp]\nkey_file = "{good}"\n')
    slp = load_config(MdsmConfig, tmp_path / "mdsm.toml").slp
    config = slpkeys.signing(slp, log, da_find=60.0)
    assert (config.auth_spi, config.da_find) == ("mdsm", 60.0) and config.signer is not None
    with caplog.at_level(logging.INFO, logger="test.slpkeys"):
        absent = slpkeys.signing(load_config(MdsmConfig, tmp_path / "none.toml").slp, log)
    assert absent.auth_spi == "" and absent.signer is None
    assert "no key in /etc/sipmob/keys/mdsm.key: registrations are unsigned" in caplog.text
    good.chmod(0o644)  # turned bad after the file was checked
    with pytest.raises(ConfigError, match="chmod 600"):
        slpkeys.signing(slp, log)


def test_the_da_trusts_the_daemons_whose_packages_make_a_key(tmp_path: Path) -> None:
    config = load_config(SlpdaConfig, tmp_path / "absent.toml")
    assert config.registration.trusted_spis == ["saproxy", "mdsm", "transcoder"]
    assert config.registration.key_directory == slpkeys.KEY_DIRECTORY


def test_keygen_makes_a_key_the_da_reads_and_a_copy_for_the_phone(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    copy = tmp_path / "home" / "phone.key"
    copy.parent.mkdir()
    assert slpkeys.main(["kitchen-phone", "--directory", str(keys), "--copy", str(copy)]) == 0
    made = keys / "kitchen-phone.key"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600 and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o750
    assert slpkeys.read_key(str(made)) == slpkeys.read_key(str(copy))
    assert len(made.read_bytes().strip()) == 44  # 32 random bytes in base64
    out = capsys.readouterr().out
    assert f'spi = "kitchen-phone"\nkey_file = "{copy}"' in out and "trusted_spis" in out
    # The DA reads it as the key of SPI kitchen-phone.
    (tmp_path / "slpda.toml").write_text(f'[registration]\nkey_directory = "{keys}"\n')
    da = load_config(SlpdaConfig, tmp_path / "slpda.toml").da_config()
    assert dict(da.keys) == {"kitchen-phone": slpkeys.read_key(str(made))}
    # A key is never replaced, and nothing is left behind.
    before = made.read_bytes()
    assert slpkeys.main(["kitchen-phone", "--directory", str(keys)]) == 1
    assert "exists: a key is never replaced" in capsys.readouterr().err
    assert made.read_bytes() == before and sorted(os.listdir(keys)) == ["kitchen-phone.key"]


def test_keygen_refuses_a_name_that_is_no_spi_and_undoes_a_failed_copy(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert slpkeys.main(["../etc/passwd", "--directory", str(tmp_path)]) == 2
    assert "the name must be 1-64 letters" in capsys.readouterr().err
    assert slpkeys.main(["tv", "--directory", str(tmp_path), "--copy", str(tmp_path / "no" / "tv.key")]) == 1
    assert not (tmp_path / "tv.key").exists()
    assert slpkeys.main(["tv", "--directory", str(tmp_path)]) == 0


def test_make_key_never_replaces_a_file(tmp_path: Path) -> None:
    path = key_file(tmp_path / "x.key")
    with pytest.raises(FileExistsError):
        slpkeys.make_key(path)
    assert sorted(os.listdir(tmp_path)) == ["x.key"]
