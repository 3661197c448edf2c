"""Loading and validating the TOML configuration files of every daemon.

A daemon describes its configuration as frozen dataclasses: one field per key, nested dataclasses for
tables, the default being the value used when the key is absent. `load_config` reads a file, checks
every key against that description and either returns the typed configuration or raises
`ConfigError` carrying one `ConfigProblem` per mistake, each naming the file, the dotted key and what
is wrong, so that `--check-config` can print them all at once.

Extra checks on a value (a port range, an address) go in the field's metadata as ``check``: a function
returning an error message or None. Checks across several keys go in a ``validate(self)`` method of the
dataclass that returns a list of ``(key, message)`` pairs.

Not here: what a daemon does with its configuration, or where the file lives (see `daemon`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

Check = Callable[[Any], "str | None"]


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigProblem:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.key}" if self.key else self.file
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a configuration file; `str()` gives one line per problem."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def setting(default: Any = dataclasses.MISSING, *, check: Check | None = None,
            help: str = "", default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field for a configuration key, with an optional value check and help text."""
    metadata = {"check": check, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# Reusable value checks ------------------------------------------------------------------------


def port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else f"must be a port number 0-65535, got {value}"


def positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IPv4 or IPv6 address, got {value!r}"
    return None


def ip_network(value: str) -> str | None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return f"must be a network such as 192.168.1.0/24, got {value!r}"
    return None


def split_host_port(text: str, default_port: int | None = None, *,
                    ip_literal: bool = True) -> tuple[str, int]:
    """"HOST", "HOST:PORT", "[V6]:PORT" or a bare IPv6 address to (host, port); raises ValueError.

    Without `default_port` the port must be given. With `ip_literal`, HOST must be an IP address:
    the daemons do no DNS, so a name in a configuration file is a mistake worth saying at once.
    """
    form = "HOST:PORT" if default_port is None else "HOST[:PORT]"
    wrong = ValueError(f"must be {form} with HOST an IP address ([V6]:PORT for IPv6), got {text!r}"
                       if ip_literal else f"must be {form}, got {text!r}")
    host, port_text = text, ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")) or rest == ":":
            raise wrong
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host or (ip_literal and ip_address(host)):
        raise wrong
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(f"bad port in {text!r}: must be 0-65535")
        return host, int(port_text)
    if default_port is None:
        raise wrong
    return host, default_port


def host_port(default_port: int | None = None) -> Check:
    """A check for a HOST[:PORT] value (see `split_host_port`); an empty value passes."""

    def check(value: str) -> str | None:
        try:
            if value:
                split_host_port(value, default_port)
        except ValueError as exc:
            return str(exc)
        return None

    return check


def each(check: Check) -> Check:
    """Apply a check to every element of a list value."""

    def check_each(values: Sequence[Any]) -> str | None:
        for i, v in enumerate(values):
            problem = check(v)
            if problem:
                return f"item {i + 1}: {problem}"
        return None

    return check_each


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"

    return check


# The [log] table every daemon has ------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Log:
    level: str = setting("info", check=one_of("debug", "info", "warning", "error"),
                         help="debug adds a line per protocol message; info, one per event that matters")


# Loading --------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(args[0])}, or absent" if len(args) == 1 else " or ".join(map(_type_name, args))
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is list or origin is tuple:
        (inner,) = set(typing.get_args(tp)) - {Ellipsis}
        return f"a list of {_type_name(inner).removeprefix('a ').removeprefix('an ')}s"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return str(tp)


def _convert(tp: Any, value: Any, file: str, key: str, problems: list[ConfigProblem]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, file, key, problems)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(ConfigProblem(file, key, f"must be a table, got {value!r}"))
            return _MISSING
        return _build(typing.cast(type, tp), value, file, key + ".", problems)
    if origin is list or origin is tuple:
        if not isinstance(value, list):
            problems.append(ConfigProblem(file, key, f"must be {_type_name(tp)}, got {value!r}"))
            return _MISSING
        (inner,) = set(typing.get_args(tp)) - {Ellipsis}
        items = []
        for i, item in enumerate(value):
            converted = _convert(inner, item, file, f"{key}[{i}]", problems)
            if converted is _MISSING:
                return _MISSING
            items.append(converted)
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        problems.append(ConfigProblem(file, key, f"must be an integer, got {value!r}"))
        return _MISSING
    if not isinstance(value, tp):
        problems.append(ConfigProblem(file, key, f"must be {_type_name(tp)}, got {value!r}"))
        return _MISSING
    return value


_MISSING = object()


def _build(cls: type[T], data: dict[str, Any], file: str, prefix: str,
           problems: list[ConfigProblem]) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name in data:
        if name not in fields:
            known = ", ".join(sorted(fields)) or "none"
            problems.append(ConfigProblem(file, prefix + name, f"unknown key (known keys: {known})"))
    before = len(problems)
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if dataclasses.is_dataclass(hints[name]):
                    kwargs[name] = _build(hints[name], {}, file, key + ".", problems)
                else:
                    problems.append(ConfigProblem(file, key, "is required"))
            continue
        value = _convert(hints[name], data[name], file, key, problems)
        if value is _MISSING:
            continue
        check = f.metadata.get("check")
        if check is not None and value is not None:
            message = check(value)
            if message:
                problems.append(ConfigProblem(file, key, message))
                continue
        kwargs[name] = value
    # A bad value leaves its key out, so the object is built on that key's default and the
    # problems of sibling tables are still collected.
    try:
        obj = cls(**kwargs)
    except TypeError:
        return typing.cast(T, _MISSING)
    validate = getattr(obj, "validate", None)
    if validate is not None and len(problems) == before:
        for k, message in validate():
            problems.append(ConfigProblem(file, prefix + k, message))
    return obj


def parse_config(cls: type[T], data: dict[str, Any], file: str = "<config>") -> T:
    """Check an already-parsed TOML document against `cls`; raise ConfigError listing every problem."""
    problems: list[ConfigProblem] = []
    obj = _build(cls, data, file, "", problems)
    if problems:
        raise ConfigError(problems)
    return obj


def load_config(cls: type[T], path: str | Path, required: bool = False) -> T:
    """Read the TOML file at `path` and check it against `cls`.

    A missing file is allowed only when it is not `required` and every key has a default (the
    daemon then runs on its defaults); an unreadable or syntactically broken file is one problem
    naming the line.
    """
    file = str(path)
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        if required:
            raise ConfigError([ConfigProblem(file, "", "file not found")]) from None
        try:
            return parse_config(cls, {}, file)
        except ConfigError:
            raise ConfigError([ConfigProblem(file, "", "file not found")]) from None
    except PermissionError:
        raise ConfigError([ConfigProblem(file, "", "permission denied")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigProblem(file, "", "is a directory, not a file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(file, "", f"not UTF-8 text ({exc.reason})")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([ConfigProblem(file, "", f"not valid TOML: {exc}")]) from None
    return parse_config(cls, data, file)


REQUIRED = object()  # the default `describe` gives for a key that has none


def describe(cls: type[Any], prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) for every key of `cls`, for generated reference documentation;
    the default of a key that must be given is `REQUIRED`."""
    rows: list[tuple[str, str, Any, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, prefix + f.name + "."))  # type: ignore[arg-type]
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
        rows.append((prefix + f.name, _type_name(tp), default, f.metadata.get("help", "")))
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            # an array of tables ([[system]]): the keys of each table
            rows.extend(describe(typing.get_args(tp)[0], prefix + f.name + "[]."))
    return rows


def state_path(configured: str, name: str, default: str) -> Path:
    """Where a daemon keeps its state: the configured file, else `name` in systemd's
    $STATE_DIRECTORY, else `default`."""
    if configured:
        return Path(configured)
    directory = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(directory) / name if directory else Path(default)


def this_host_address() -> str:
    """This host's first IPv4 address that is not loopback, by name resolution (nothing is
    sent); 127.0.0.1 when it has none. What a daemon listening on 0.0.0.0 puts in its URLs."""
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            address = str(info[4][0])
            if not ipaddress.ip_address(address).is_loopback:
                return address
    except OSError:
        pass
    return "127.0.0.1"
