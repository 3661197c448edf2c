"""``sipmob web-password``: set the web page's password (stored as an scrypt hash, mode 0600).

    sipmob web-password [--config /etc/sipmob/web.toml] [--file PATH] [--stdin]

Asks twice on the terminal (or reads one line from standard input with ``--stdin``, for
installers), writes ``[auth] password_file`` atomically, owned by the ``sipmob`` user when run as
root (the daemon runs as sipmob and must read it), and tells a running ``sipmob-web`` nothing:
it reads the file at start and on SIGHUP (``systemctl reload sipmob-web``).

Not here: checking a password (`sipmob.web.auth`).
"""

from __future__ import annotations

import argparse
import getpass
import os
import pwd
import sys
from collections.abc import Sequence

from sipmob.service.config import ConfigError, load_config
from sipmob.web import auth
from sipmob.web.config import WebConfig

MIN_LENGTH = 8


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sipmob web-password", description="set the web page's password")
    p.add_argument("--config", default=os.environ.get("SIPMOB_WEB_CONFIG", "/etc/sipmob/web.toml"))
    p.add_argument("--file", help="write here instead of [auth] password_file")
    p.add_argument("--stdin", action="store_true", help="read the password from standard input")
    args = p.parse_args(argv)
    path = args.file
    if path is None:
        try:
            path = load_config(WebConfig, args.config).auth.password_file
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("New password for the sipmob web page: ")
        if getpass.getpass("Again: ") != password:
            print("sipmob web-password: the two passwords differ; nothing changed", file=sys.stderr)
            return 1
    if len(password) < MIN_LENGTH or len(password.encode()) > auth.MAX_PASSWORD:
        print(f"sipmob web-password: the password must be {MIN_LENGTH} to {auth.MAX_PASSWORD} bytes long; "
              "nothing changed", file=sys.stderr)
        return 1
    owner = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam("sipmob")
            owner = (entry.pw_uid, entry.pw_gid)
        except KeyError:
            pass
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        auth.write_hash(path, auth.hash_password(password), owner=owner)
    except OSError as exc:
        print(f"sipmob web-password: cannot write {path}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"password set in {path}; reload the page's daemon: systemctl reload sipmob-web")
    return 0


if __name__ == "__main__":
    sys.exit(main())
