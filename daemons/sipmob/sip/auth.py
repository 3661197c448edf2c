"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), both sides, sans-I/O.

Responsible for: parsing and formatting ``WWW-Authenticate`` / ``Proxy-Authenticate`` challenges
and ``Authorization`` / ``Proxy-Authorization`` credentials; computing the response for MD5,
SHA-256 and SHA-512-256 and their ``-sess`` variants with ``qop=auth`` or ``auth-int``; and, for a
server, issuing stateless nonces (a timestamp, random bytes and an HMAC over both, so any process
holding the secret can check them without a nonce table) and verifying credentials against a
stored HA1, with stale-nonce and nonce-count replay checks.

Not here: which requests to challenge, the 401/407 responses themselves (the TU builds them from
`Challenge.__str__`), where HA1 values are kept, or retrying a request with credentials.
Plain passwords are never needed server-side: `verify` asks a ``lookup_ha1`` callback.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable

from sipmob.sip.uri import SIPParseError, parse_quoted, quote

__all__ = [
    "ALGORITHMS",
    "AuthResult",
    "AuthStatus",
    "Challenge",
    "Credentials",
    "DigestServer",
    "authorization",
    "compute_ha1",
    "compute_response",
    "make_challenge",
]


def _hasher(name: str) -> Callable[[bytes], str]:
    def h(data: bytes) -> str:
        return hashlib.new(name, data).hexdigest()

    return h


# RFC 8760 §2 / RFC 7616 §3.2: algorithm names as they appear on the wire (matched case-insensitively)
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "MD5": _hasher("md5"),
    "SHA-256": _hasher("sha256"),
    "SHA-512-256": _hasher("sha512_256"),
}


def _algorithm(name: str) -> tuple[str, bool]:
    """(base algorithm, is -sess) for a wire name; raises SIPParseError if unsupported."""
    upper = name.upper()
    sess = upper.endswith("-SESS")
    base = upper[:-5] if sess else upper
    if base not in ALGORITHMS:
        raise SIPParseError(f"Unsupported digest algorithm {name}")
    return base, sess


def _h(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode("utf-8"))


def compute_ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), what a server stores instead of the password (RFC 7616 §3.4.2)."""
    base, _ = _algorithm(algorithm)
    return _h(base, f"{username}:{realm}:{password}")


def compute_response(
    algorithm: str,
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    *,
    qop: str | None,
    cnonce: str | None = None,
    nc: str | None = None,
    body: bytes = b"",
) -> str:
    """The request-digest of RFC 7616 §3.4.1 from a stored (non-session) HA1."""
    base, sess = _algorithm(algorithm)
    if sess:
        ha1 = _h(base, f"{ha1}:{nonce}:{cnonce}")  # §3.4.2: -sess binds HA1 to this nonce
    if qop == "auth-int":
        ha2 = _h(base, f"{method}:{uri}:{ALGORITHMS[base](body)}")
    else:
        ha2 = _h(base, f"{method}:{uri}")
    if qop is None:
        return _h(base, f"{ha1}:{nonce}:{ha2}")  # RFC 2069 compatibility
    return _h(base, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# auth-param lists ---------------------------------------------------------------------------


def _parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Digest a=b, c="d"`` -> ("Digest", {"a": "b", "c": "d"}) with names in lower case."""
    s = value.strip()
    scheme, _, rest = s.partition(" ")
    if not scheme or (not rest.strip() and scheme.lower() == "digest"):
        raise SIPParseError("Bad Digest header")
    params: dict[str, str] = {}
    i = 0
    n = len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq == -1:
            raise SIPParseError("Bad auth-param")
        name = rest[i:eq].strip().lower()
        if not name or any(c in ' \t,"' for c in name):
            raise SIPParseError("Bad auth-param name")
        i = eq + 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            val, i = parse_quoted(rest, i)
        else:
            j = i
            while j < n and rest[j] not in " \t,":
                j += 1
            val = rest[i:j]
            i = j
        if name in params:
            raise SIPParseError(f"Repeated auth-param {name}")
        params[name] = val
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] != ",":
            raise SIPParseError("Bad auth-param list")
    return scheme, params


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    """A Digest challenge (RFC 7616 §3.3) from a 401's WWW-Authenticate or a 407's Proxy-Authenticate."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ("auth",)
    opaque: str | None = None
    stale: bool = False
    domain: str | None = None

    @classmethod
    def parse(cls, value: str) -> Challenge:
        scheme, p = _parse_auth_params(value)
        if scheme.lower() != "digest":
            raise SIPParseError(f"Unsupported auth scheme {scheme}")
        if "realm" not in p or "nonce" not in p:
            raise SIPParseError("Digest challenge without realm or nonce")
        qop = tuple(q.strip() for q in p["qop"].split(",") if q.strip()) if "qop" in p else ()
        return cls(
            realm=p["realm"],
            nonce=p["nonce"],
            algorithm=p.get("algorithm", "MD5"),
            qop=qop,
            opaque=p.get("opaque"),
            stale=p.get("stale", "").lower() == "true",
            domain=p.get("domain"),
        )

    @property
    def supported(self) -> bool:
        """Whether we can answer it (a known algorithm and, if qop is offered, auth or auth-int)."""
        try:
            _algorithm(self.algorithm)
        except SIPParseError:
            return False
        return not self.qop or bool({"auth", "auth-int"} & set(self.qop))

    def __str__(self) -> str:
        parts = [f"realm={quote(self.realm)}"]
        if self.domain is not None:
            parts.append(f"domain={quote(self.domain)}")
        parts.append(f"nonce={quote(self.nonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={quote(self.opaque)}")
        if self.stale:
            parts.append("stale=true")
        parts.append(f"algorithm={self.algorithm}")
        if self.qop:
            parts.append(f"qop={quote(','.join(self.qop))}")
        return "Digest " + ", ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """Digest credentials (RFC 7616 §3.4) from an Authorization or Proxy-Authorization header."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    cnonce: str | None = None
    nc: str | None = None
    opaque: str | None = None

    @classmethod
    def parse(cls, value: str) -> Credentials:
        scheme, p = _parse_auth_params(value)
        if scheme.lower() != "digest":
            raise SIPParseError(f"Unsupported auth scheme {scheme}")
        try:
            creds = cls(
                username=p["username"],
                realm=p["realm"],
                nonce=p["nonce"],
                uri=p["uri"],
                response=p["response"],
                algorithm=p.get("algorithm", "MD5"),
                qop=p.get("qop"),
                cnonce=p.get("cnonce"),
                nc=p.get("nc"),
                opaque=p.get("opaque"),
            )
        except KeyError as e:
            raise SIPParseError(f"Digest credentials without {e.args[0]}") from None
        if creds.qop is not None and (creds.cnonce is None or creds.nc is None):
            raise SIPParseError("Digest credentials with qop but without cnonce or nc")
        if creds.nc is not None and (len(creds.nc) != 8 or not _is_hex(creds.nc)):
            raise SIPParseError("Bad nonce count")
        return creds

    def __str__(self) -> str:
        parts = [
            f"username={quote(self.username)}",
            f"realm={quote(self.realm)}",
            f"nonce={quote(self.nonce)}",
            f"uri={quote(self.uri)}",
            f"response={quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={quote(self.opaque)}")
        if self.qop is not None:
            parts += [f"qop={self.qop}", f"nc={self.nc}"]
        return "Digest " + ", ".join(parts)


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in s)


# client side --------------------------------------------------------------------------------


def authorization(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    cnonce: str,
    nc: int,
    body: bytes = b"",
) -> str:
    """The Authorization (or Proxy-Authorization) value answering ``challenge``.

    ``uri`` is the Request-URI as sent; ``nc`` counts the requests made with this nonce, from 1.
    ``qop=auth`` is preferred over ``auth-int``; without any qop offered, RFC 2069 form is used.
    """
    if "auth" in challenge.qop:
        qop: str | None = "auth"
    elif "auth-int" in challenge.qop:
        qop = "auth-int"
    elif challenge.qop:
        raise SIPParseError(f"Unsupported qop {','.join(challenge.qop)}")
    else:
        qop = None
    ha1 = compute_ha1(challenge.algorithm, username, challenge.realm, password)
    nc_s = f"{nc:08x}" if qop else None
    response = compute_response(
        challenge.algorithm,
        ha1,
        challenge.nonce,
        method,
        uri,
        qop=qop,
        cnonce=cnonce if qop else None,
        nc=nc_s,
        body=body,
    )
    return str(
        Credentials(
            username=username,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=uri,
            response=response,
            algorithm=challenge.algorithm,
            qop=qop,
            cnonce=cnonce if qop else None,
            nc=nc_s,
            opaque=challenge.opaque,
        )
    )


# server side --------------------------------------------------------------------------------

_NONCE_RAW = 8 + 8 + 16  # timestamp (ms), random, truncated HMAC-SHA-256


def _sign(secret: bytes, realm: str, head: bytes) -> bytes:
    return hmac.new(secret, head + realm.encode("utf-8"), hashlib.sha256).digest()[:16]


def make_challenge(
    realm: str,
    algorithm: str,
    nonce_secret: bytes,
    now: float,
    *,
    stale: bool = False,
    opaque: str | None = None,
    qop: tuple[str, ...] = ("auth",),
    salt: bytes | None = None,
) -> Challenge:
    """A challenge with a stateless nonce: ``b64url(ms timestamp | salt | HMAC(secret, ...))``.

    ``salt`` (8 bytes) defaults to fresh random bytes; it is a parameter so tests are repeatable.
    """
    _algorithm(algorithm)
    salt = secrets.token_bytes(8) if salt is None else salt
    if len(salt) != 8:
        raise ValueError("salt must be 8 bytes")
    head = struct.pack("!Q", int(now * 1000)) + salt
    nonce = base64.urlsafe_b64encode(head + _sign(nonce_secret, realm, head)).decode("ascii")
    return Challenge(realm=realm, nonce=nonce, algorithm=algorithm, qop=qop, opaque=opaque, stale=stale)


def nonce_time(nonce: str, realm: str, nonce_secret: bytes) -> float | None:
    """When the nonce was issued, if we issued it for this realm (None for a forged or foreign one)."""
    try:
        raw = base64.urlsafe_b64decode(nonce.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return None
    if len(raw) != _NONCE_RAW:
        return None
    head, mac = raw[:16], raw[16:]
    if not hmac.compare_digest(mac, _sign(nonce_secret, realm, head)):
        return None
    (ms,) = struct.unpack("!Q", head[:8])
    return float(ms / 1000)


class AuthStatus(enum.Enum):
    OK = "ok"
    MALFORMED = "malformed"  # answer 400
    WRONG_REALM = "wrong realm"  # challenge again
    UNKNOWN_NONCE = "unknown nonce"  # not ours: challenge again
    STALE = "stale nonce"  # challenge again with stale=true, the client retries silently
    REPLAY = "replayed nonce count"  # challenge again
    UNKNOWN_USER = "unknown user"  # challenge again (as for a bad password: no user enumeration)
    BAD_RESPONSE = "bad response"
    URI_MISMATCH = "uri mismatch"  # answer 400


@dataclasses.dataclass(frozen=True, slots=True)
class AuthResult:
    status: AuthStatus
    username: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is AuthStatus.OK

    @property
    def stale(self) -> bool:
        return self.status is AuthStatus.STALE


LookupHA1 = Callable[[str, str, str], str | None]
"""``lookup_ha1(username, realm, algorithm) -> hex HA1 or None``; algorithm without ``-sess``."""


class DigestServer:
    """Issues and checks Digest nonces for one realm.

    Nonces are stateless (see `make_challenge`); the only state is, per nonce still in use, the
    nonce counts already seen (RFC 7616 §3.4.6 replay protection), dropped when the nonce expires.
    A nonce count may arrive out of order (UDP reordering) but never twice.
    """

    def __init__(
        self,
        realm: str,
        nonce_secret: bytes,
        *,
        algorithm: str = "SHA-256",
        nonce_lifetime: float = 300.0,
        max_counts_per_nonce: int = 1024,
    ) -> None:
        _algorithm(algorithm)
        if len(nonce_secret) < 16:
            raise ValueError("nonce_secret must be at least 16 bytes")
        self.realm = realm
        self.algorithm = algorithm
        self.nonce_lifetime = nonce_lifetime
        self.max_counts_per_nonce = max_counts_per_nonce
        self._secret = nonce_secret
        self._seen: dict[str, tuple[float, set[int]]] = {}

    def make_challenge(self, now: float, *, stale: bool = False, algorithm: str | None = None) -> Challenge:
        return make_challenge(self.realm, algorithm or self.algorithm, self._secret, now, stale=stale)

    def verify(
        self,
        authorization_value: str,
        method: str,
        lookup_ha1: LookupHA1,
        now: float,
        *,
        request_uri: str | None = None,
        body: bytes = b"",
    ) -> AuthResult:
        """Check an Authorization/Proxy-Authorization value for a request made with ``method``.

        ``request_uri``, when given, must equal the credentials' ``uri`` (RFC 7616 §3.4.6).
        """
        self._expire(now)
        try:
            creds = Credentials.parse(authorization_value)
            base, sess = _algorithm(creds.algorithm)
        except SIPParseError:
            return AuthResult(AuthStatus.MALFORMED)
        if creds.qop not in ("auth", "auth-int"):
            return AuthResult(AuthStatus.MALFORMED, creds.username)  # we always offer qop
        if creds.realm != self.realm:
            return AuthResult(AuthStatus.WRONG_REALM, creds.username)
        if request_uri is not None and creds.uri != request_uri:
            return AuthResult(AuthStatus.URI_MISMATCH, creds.username)
        issued = nonce_time(creds.nonce, self.realm, self._secret)
        if issued is None or issued > now + 1.0:
            return AuthResult(AuthStatus.UNKNOWN_NONCE, creds.username)
        ha1 = lookup_ha1(creds.username, self.realm, base)
        if ha1 is None:
            return AuthResult(AuthStatus.UNKNOWN_USER, creds.username)
        expected = compute_response(
            creds.algorithm,
            ha1,
            creds.nonce,
            method,
            creds.uri,
            qop=creds.qop,
            cnonce=creds.cnonce,
            nc=creds.nc,
            body=body,
        )
        if not hmac.compare_digest(expected.lower(), creds.response.lower()):
            return AuthResult(AuthStatus.BAD_RESPONSE, creds.username)
        # only a correct response counts as stale: the client knows the password, the nonce is old
        if now - issued > self.nonce_lifetime:
            return AuthResult(AuthStatus.STALE, creds.username)
        assert creds.nc is not None
        nc = int(creds.nc, 16)
        _, seen = self._seen.setdefault(creds.nonce, (issued, set()))
        if nc in seen or len(seen) >= self.max_counts_per_nonce:
            return AuthResult(AuthStatus.REPLAY, creds.username)
        seen.add(nc)
        return AuthResult(AuthStatus.OK, creds.username)

    def _expire(self, now: float) -> None:
        limit = now - self.nonce_lifetime
        for nonce in [n for n, (issued, _) in self._seen.items() if issued < limit]:
            del self._seen[nonce]

    @property
    def tracked_nonces(self) -> int:
        return len(self._seen)
