"""The phone's registration settings: ``[identity] registrar``, ``auth_user``, ``password_file``,
the address of record it registers and the one log line per change of the binding."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from twisted.internet import task

from sipmob.mn.config import MnConfig, read_password
from sipmob.mn.phone import Phone
from sipmob.service.config import ConfigError, parse_config


def phone(tmp_path: Path, **identity: str) -> Phone:
    config = parse_config(MnConfig, {"identity": identity, "control": {"path": str(tmp_path / "mn.sock")}})
    return Phone(config, task.Clock())


class FakeRegistration:
    registrar = "sip:reg.test"

    def __init__(self, state: str, expires: int | None = None, failure: tuple[int, str] | None = None,
                 retry_in: float | None = None) -> None:
        self.state, self.expires, self.last_failure, self.retry_in = state, expires, failure, retry_in


def test_an_unreadable_password_file_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity.password_file: cannot read the password file"):
        parse_config(MnConfig, {"identity": {"password_file": str(tmp_path / "missing")}})


def test_the_password_is_the_first_line_without_its_line_break(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret \r\nignored\n")
    assert read_password(str(tmp_path / "pw")) == "s3cret "


def test_the_aor_is_the_user_at_the_registrar_host(tmp_path: Path) -> None:
    assert str(phone(tmp_path, user="bob", registrar="sip:reg.test:5070").aor) == "sip:bob@reg.test"


def test_credentials_use_auth_user_and_the_password_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    p = phone(tmp_path, user="bob", auth_user="bob-auth", password_file=str(tmp_path / "pw"))
    assert p.ua._options["credentials"] == ("bob-auth", "s3cret")


def test_credentials_default_to_the_user(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    p = phone(tmp_path, user="bob", password_file=str(tmp_path / "pw"))
    assert p.ua._options["credentials"] == ("bob", "s3cret")


def test_without_a_password_file_there_are_no_credentials(tmp_path: Path) -> None:
    assert phone(tmp_path, user="bob", registrar="sip:reg.test").ua._options["credentials"] is None


def test_one_log_line_per_change_and_none_for_a_refresh(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "pw").write_text("pw-never-logged\n")
    p = phone(tmp_path, user="bob", registrar="sip:reg.test", password_file=str(tmp_path / "pw"))
    caplog.set_level(logging.INFO, logger="sipmob.mn")
    for reg in (FakeRegistration("registered", 600), FakeRegistration("registered", 600),
                FakeRegistration("failed", None, (403, "Forbidden"), 45.0), FakeRegistration("gone")):
        p._registration_changed(reg)  # type: ignore[arg-type]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["registered sip:bob@reg.test at sip:reg.test for 600 s",
                     "registration of sip:bob@reg.test at sip:reg.test failed: 403 Forbidden; "
                     "next try in 45 s",
                     "unregistered sip:bob@reg.test at sip:reg.test"]
    assert not any("pw-never-logged" in line for line in lines)


def test_a_password_file_gone_since_the_check_is_a_config_error_at_start(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    config = parse_config(MnConfig, {"identity": {"password_file": str(tmp_path / "pw")}})
    (tmp_path / "pw").unlink()
    with pytest.raises(ConfigError, match="cannot read the password file"):
        Phone(config, task.Clock())
