"""Who may use the web page: the password hash, sessions with their CSRF tokens, and the login
rate limit. No sockets, no clock of its own: every call that depends on time takes ``now``.

Responsible for:
- the password file: one line ``scrypt$N$r$p$SALT$HASH`` (base64), made by `hash_password` with
  hashlib.scrypt (memory-hard, in the standard library; N=2**14, r=8, p=1 costs about 16 MiB and
  some tens of milliseconds on a Raspberry Pi 4, which is what bounds a guesser who has the file);
  `verify_password` compares in constant time;
- `Sessions`: a random 256-bit token per login (the cookie), each with its own CSRF token (sent
  back by the page in a header or a form field on every action), an absolute lifetime, and at
  most `max_sessions` at once (the oldest goes first);
- `LoginLimiter`: failed logins per source address in a sliding window; past the limit the
  source is refused (429) until the window has moved on, and all sources together have a limit
  too, so scrypt's cost cannot be turned into a denial of service by many addresses.

Not here: HTTP (`sipmob.web.app`), where the file lives (`sipmob.web.config`).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import hmac
import os
import secrets

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
MAX_PASSWORD = 1024  # bytes: a longer "password" is an attempt to make us hash megabytes


class PasswordFileError(ValueError):
    """The password file is missing, unreadable or not one of ours."""


def hash_password(password: str, *, salt: bytes | None = None, n: int = SCRYPT_N) -> str:
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=SCRYPT_MAXMEM, dklen=32)
    b64 = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def parse_hash(line: str) -> tuple[int, int, int, bytes, bytes]:
    parts = line.strip().split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise PasswordFileError("not a sipmob-web password hash (scrypt$N$r$p$salt$hash)") from None
    # A file that asks for an absurd cost would make every login a denial of service.
    if not (2 <= n <= 2**20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16 and digest):
        raise PasswordFileError("scrypt parameters out of range")
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    n, r, p, salt, digest = parse_hash(stored)
    data = password.encode()
    if len(data) > MAX_PASSWORD:
        return False
    candidate = hashlib.scrypt(data, salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAXMEM, dklen=len(digest))
    return hmac.compare_digest(candidate, digest)


def read_hash(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline(4096)
    except FileNotFoundError:
        raise PasswordFileError(f"{path}: no password set (run: sipmob web-password)") from None
    except OSError as exc:
        raise PasswordFileError(f"{path}: {exc.strerror}") from None
    parse_hash(line)
    return line.strip()


def write_hash(path: str, line: str, *, owner: tuple[int, int] | None = None) -> None:
    """Write the hash to ``path`` atomically, mode 0600 from the start (never readable by others)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclasses.dataclass(slots=True)
class Session:
    token: str
    csrf: str
    expires: float


class Sessions:
    def __init__(self, lifetime: float, max_sessions: int = 64) -> None:
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def create(self, now: float) -> Session:
        self._expire(now)
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now + self.lifetime)
        self._sessions[session.token] = session
        return session

    def get(self, token: str | None, now: float) -> Session | None:
        if not token:
            return None
        session = self._sessions.get(token)
        if session is None or session.expires <= now:
            self._sessions.pop(token, None)
            return None
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items() if s.expires <= now]:
            del self._sessions[token]

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_ok(session: Session, offered: str | None) -> bool:
    return bool(offered) and hmac.compare_digest(session.csrf.encode(), (offered or "").encode())


class LoginLimiter:
    """At most ``per_source`` failed logins per source and ``total`` overall in ``window`` seconds."""

    def __init__(self, per_source: int = 5, total: int = 30, window: float = 60.0,
                 max_sources: int = 4096) -> None:
        self.per_source = per_source
        self.total = total
        self.window = window
        self.max_sources = max_sources
        self._failures: dict[str, collections.deque[float]] = {}
        self._all: collections.deque[float] = collections.deque()

    def _trim(self, q: collections.deque[float], now: float) -> None:
        while q and q[0] <= now - self.window:
            q.popleft()

    def retry_after(self, source: str, now: float) -> float:
        """0 when ``source`` may try now; else seconds until it may."""
        self._trim(self._all, now)
        waits = []
        if len(self._all) >= self.total:
            waits.append(self._all[0] + self.window - now)
        q = self._failures.get(source)
        if q is not None:
            self._trim(q, now)
            if not q:
                del self._failures[source]
            elif len(q) >= self.per_source:
                waits.append(q[0] + self.window - now)
        return max(waits, default=0.0)

    def failed(self, source: str, now: float) -> None:
        if source not in self._failures and len(self._failures) >= self.max_sources:
            # Forget the source whose last failure is oldest; the global limit still holds.
            oldest = min(self._failures, key=lambda s: self._failures[s][-1])
            del self._failures[oldest]
        self._failures.setdefault(source, collections.deque()).append(now)
        self._all.append(now)

    def succeeded(self, source: str) -> None:
        self._failures.pop(source, None)
