"""The configuration loader: typed keys, defaults, and one clear problem per mistake."""

from __future__ import annotations

import dataclasses
import os

import pytest

from sipmob.service.config import (
    ConfigError,
    describe,
    each,
    ip_address,
    ip_network,
    load_config,
    one_of,
    parse_config,
    port,
    positive,
    setting,
)


@dataclasses.dataclass(frozen=True)
class Listen:
    host: str = setting("0.0.0.0", check=ip_address, help="address to bind")
    port: int = setting(427, check=port, help="UDP and TCP port")


@dataclasses.dataclass(frozen=True)
class Log:
    level: str = setting("info", check=one_of("debug", "info", "warning", "error"))


@dataclasses.dataclass(frozen=True)
class Example:
    listen: Listen = setting(default_factory=Listen)
    scopes: list[str] = setting(default_factory=lambda: ["DEFAULT"])
    allow: list[str] = setting(default_factory=list, check=each(ip_network))
    heartbeat: float = setting(10800.0, check=positive)
    multicast: bool = setting(True)
    log: Log = setting(default_factory=Log)

    def validate(self) -> list[tuple[str, str]]:
        return [("scopes", "must not be empty")] if not self.scopes else []


def problems_of(data: dict, file: str = "x.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(Example, data, file)
    return [str(p) for p in info.value.problems]


def test_empty_document_gives_every_default() -> None:
    assert parse_config(Example, {}) == Example()


def test_values_are_typed_and_nested_tables_built() -> None:
    config = parse_config(Example, {"listen": {"host": "127.0.0.1", "port": 4270}, "heartbeat": 5})
    assert config.listen == Listen("127.0.0.1", 4270)
    assert config.heartbeat == 5.0 and isinstance(config.heartbeat, float)


def test_unknown_key_is_named_with_the_known_ones() -> None:
    assert problems_of({"listen": {"hots": "1.2.3.4"}}) == [
        "x.toml: listen.hots: unknown key (known keys: host, port)"]


def test_wrong_type_names_the_key_and_the_value() -> None:
    assert problems_of({"listen": {"port": "427"}}) == [
        "x.toml: listen.port: must be an integer, got '427'"]


def test_boolean_is_not_accepted_as_integer() -> None:
    assert problems_of({"listen": {"port": True}}) == [
        "x.toml: listen.port: must be an integer, got True"]


def test_value_check_failure_is_reported() -> None:
    assert problems_of({"listen": {"port": 70000}}) == [
        "x.toml: listen.port: must be a port number 0-65535, got 70000"]


def test_list_items_are_checked_one_by_one() -> None:
    assert problems_of({"allow": ["10.0.0.0/8", "nonsense"]}) == [
        "x.toml: allow: item 2: must be a network such as 192.168.1.0/24, got 'nonsense'"]


def test_every_problem_is_reported_at_once() -> None:
    found = problems_of({"listen": {"port": -1, "host": "x"}, "multicast": "yes", "log": {"level": "loud"}})
    assert len(found) == 4
    assert any("log.level" in p for p in found)


def test_cross_key_validation_runs_when_keys_are_valid() -> None:
    assert problems_of({"scopes": []}) == ["x.toml: scopes: must not be empty"]


def test_table_given_as_scalar_is_refused() -> None:
    assert problems_of({"listen": 5}) == ["x.toml: listen: must be a table, got 5"]


def test_missing_file_means_defaults(tmp_path) -> None:
    assert load_config(Example, tmp_path / "absent.toml") == Example()


def test_broken_toml_names_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[listen]\nport = = 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(Example, path)
    (problem,) = info.value.problems
    assert problem.file == str(path)
    assert "not valid TOML" in problem.message and "line 2" in problem.message


def test_binary_file_is_refused_clearly(tmp_path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError) as info:
        load_config(Example, path)
    assert "UTF-8" in str(info.value) or "TOML" in str(info.value)


def test_unreadable_file_is_refused_clearly(tmp_path) -> None:
    if os.geteuid() == 0:
        path = tmp_path
        expected = "is a directory"
    else:  # pragma: no cover - root ignores permission bits
        path = tmp_path / "secret.toml"
        path.write_text("")
        path.chmod(0)
        expected = "permission denied"
    with pytest.raises(ConfigError) as info:
        load_config(Example, path)
    assert expected in str(info.value)


def test_describe_lists_every_key_with_default_and_help() -> None:
    rows = {key: (kind, default, text) for key, kind, default, text in describe(Example)}
    assert rows["listen.port"] == ("an integer", 427, "UDP and TCP port")
    assert rows["scopes"][1] == ["DEFAULT"]
    assert "log.level" in rows
