"""Registrants' secret keys for SLP authentication blocks: key files, the ``[slp]`` keys, ``sipmob keygen``.

Responsible for: reading a key file as every sipmob program does (`read_key`: a regular file, not a
symbolic link, mode 0600, at least 16 bytes once surrounding whitespace is stripped); the ``[slp]
spi`` and ``key_file`` settings of every registrant's configuration (the SA proxy, the MDSM, the
transcoder, the phone: `spi_setting`, `key_file_setting`, `key_problems`), and the signing part of
an `AgentConfig` made from them (`signing`); making a new key (`make_key`, ``sipmob keygen NAME``).

Not here: the authentication blocks and what they cover (`sipmob.slp.auth`), the DA's key
directory and trusted SPIs (`sipmob.slpda.config`).
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import pwd
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from sipmob.service.config import ConfigError, ConfigProblem, setting
from sipmob.slp import auth
from sipmob.slp.agent import AgentConfig

__all__ = [
    "KEY_DIRECTORY",
    "KeyedRegistrant",
    "auth_key",
    "key_file_setting",
    "key_path",
    "key_problems",
    "main",
    "make_key",
    "read_key",
    "signing",
    "spi_setting",
]

KEY_DIRECTORY = "/etc/sipmob/keys"  # the packages make their keys here; sipmob-slpda reads SPI.key
KEY_BYTES = 32  # random bytes in a new key, written in base64
USER = "sipmob"  # the daemons' user: it must read the keys of this directory

PROG = "sipmob keygen"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def key_path(spi: str) -> str:
    """Where the packages keep the key of registrant `spi`."""
    return f"{KEY_DIRECTORY}/{spi}.key"


def read_key(path: str) -> bytes:
    """A registrant's secret: the file's bytes without surrounding whitespace (so a key made with
    ``head -c 32 /dev/urandom | base64`` works as written). Raises ValueError saying what is wrong:
    unreadable, readable by group or others (it must be mode 0600), or too short."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ValueError(f"cannot read the key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"the key file {path} is not a regular file")
        if mode & 0o077:
            raise ValueError(f"the key file {path} is mode {stat.S_IMODE(mode):04o}: others may read "
                             f"it (chmod 600)")
        key = fh.read(4097).strip()
    problem = auth.check_key(key)
    if problem:
        raise ValueError(f"the key in {path} {problem}")
    return key


# The [slp] keys of a registrant ------------------------------------------------------------------


class KeyedRegistrant(Protocol):
    """An ``[slp]`` table with `spi_setting` and `key_file_setting` fields."""

    @property
    def spi(self) -> str: ...

    @property
    def key_file(self) -> str: ...


def _spi(value: str) -> str | None:
    return auth.check_spi(value) if value else None


def spi_setting(default: str) -> Any:
    """The ``spi`` key: our name in our authentication blocks (empty: only with no key)."""
    return setting(default, check=_spi,
                   help="our name (SLP SPI) in the authentication blocks of our registrations")


def key_file_setting(default: str) -> Any:
    """The ``key_file`` key: where our secret is, read at start; missing or empty: unsigned."""
    return setting(default,
                   help="file holding our secret key (mode 0600, at least 16 bytes), which the DA knows "
                        "as the key of `spi` (sipmob-slpda: SPI.key in its key_directory): every "
                        "registration and deregistration is then signed, and only we can change them; "
                        "read at start; missing or empty: unsigned")


def auth_key(key_file: str) -> bytes:
    """The key of `key_file` (b"" when there is none); raises ValueError when it cannot be used."""
    if not key_file or not os.path.lexists(key_file):
        return b""
    return read_key(key_file)


def key_problems(slp: KeyedRegistrant) -> list[tuple[str, str]]:
    """For a ``validate()``: the key file cannot be used, or there is a key but no SPI to sign as."""
    try:
        key = auth_key(slp.key_file)
    except ValueError as exc:
        return [("key_file", str(exc))]
    if key and not slp.spi:
        return [("spi", f"must name us to sign with the key in {slp.key_file}")]
    return []


def signing(slp: KeyedRegistrant, log: logging.Logger, **agent: Any) -> AgentConfig:
    """An `AgentConfig` (with `agent`'s other settings) that signs as ``slp.spi`` when
    ``slp.key_file`` holds a key, and says in `log` when it does not. Agents made from the one
    config share its signer. Raises ConfigError if the key file turned bad since it was checked."""
    try:
        key = auth_key(slp.key_file)
    except ValueError as exc:
        raise ConfigError([ConfigProblem(slp.key_file, "", str(exc))]) from None
    if not key:
        log.log(logging.WARNING if slp.key_file else logging.INFO,
                "no key in %s: registrations are unsigned, and only their source address protects them",
                slp.key_file or "[slp] key_file")
    return AgentConfig(auth_spi=slp.spi if key else "", auth_key=key, **agent)


# sipmob keygen ------------------------------------------------------------------------------------


def make_key(path: Path, owner: tuple[int, int] | None = None) -> bytes:
    """A new random key written to `path` (mode 0600, owned by `owner` (uid, gid) if given), never
    over an existing file: FileExistsError then. The file appears whole or not at all."""
    key = base64.b64encode(os.urandom(KEY_BYTES))
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            if owner is not None:
                os.fchown(fh.fileno(), *owner)
            os.fchmod(fh.fileno(), 0o600)
            fh.write(key + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, path)  # unlike rename, refuses to replace a key someone already uses
    finally:
        os.unlink(tmp)
    return key


def _owner(name: str) -> tuple[int, int] | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Make the secret key a household device or phone signs its SLP "
                               "registrations with, where sipmob-slpda reads it (DIRECTORY/NAME.key).")
    p.add_argument("name", help="the registrant's name (its SPI): letters, digits, '.', '_' and '-'")
    p.add_argument("--directory", default=KEY_DIRECTORY,
                   help="sipmob-slpda's key_directory (default %(default)s)")
    p.add_argument("--copy", metavar="FILE",
                   help="also write the key to FILE (mode 0600, owned by whoever ran sudo), for a "
                        "phone that does not run as the sipmob user")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = auth.check_spi(args.name)
    if problem:
        print(f"{PROG}: the name {problem}", file=sys.stderr)
        return EXIT_USAGE
    directory = Path(args.directory)
    path = directory / f"{args.name}.key"
    copy = Path(args.copy).absolute() if args.copy else None
    root = os.geteuid() == 0
    daemons = _owner(USER) if root else None
    sudo = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    user = (int(sudo[0]), int(sudo[1])) if root and sudo[0].isdigit() and sudo[1].isdigit() else None
    for existing in (path, copy):
        if existing is not None and os.path.lexists(existing):
            print(f"{PROG}: {existing} exists: a key is never replaced (remove it first, and reload "
                  f"sipmob-slpda)", file=sys.stderr)
            return EXIT_FAILED
    try:
        if not directory.exists():
            directory.mkdir(mode=0o750, parents=True)
            if daemons is not None:
                os.chown(directory, 0, daemons[1])
        key = make_key(path, daemons)
        if copy is not None:
            try:
                _write_copy(copy, key, user)
            except OSError:
                path.unlink()  # all or nothing: the same command can be run again
                raise
    except OSError as exc:
        print(f"{PROG}: {exc.filename or directory}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"made {path} (mode 0600{f', user {USER}' if daemons else ''}): sipmob-slpda reads it at its "
          f"next start or reload (systemctl reload sipmob-slpda)")
    print(f"the phone signs with it as {args.name}; in its mn.toml:")
    print(f'[slp]\nspi = "{args.name}"\nkey_file = "{copy or path}"')
    print(f'to trust it as the SA proxy is trusted: add "{args.name}" to [registration] trusted_spis '
          f"in /etc/sipmob/slpda.toml")
    return EXIT_OK


def _write_copy(path: Path, key: bytes, owner: tuple[int, int] | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        if owner is not None:
            os.fchown(fh.fileno(), *owner)
        fh.write(key + b"\n")


if __name__ == "__main__":
    sys.exit(main())
