"""Per-registrant secrets for SLPv2 registrations: HMAC-SHA-256 authentication blocks, sans-I/O.

Responsible for: the authenticator of a SrvReg or SrvDeReg (computing and checking it), the
registrant's side that signs them (`Signer`: one timestamp per URL, always increasing) and the
DA's memory of the timestamps it accepted (`ReplayGuard`: old and duplicate blocks are told apart
from new ones, in bounded memory).

Not here: which registrant owns which URL and what error a DA answers (`sipmob.slp.da`), reading
key files (the daemons' configuration), the wire format of the block itself (`wire`, RFC 2608
§9.2). No clock: the caller passes ``now``, which must be wall-clock seconds since 1970, since
timestamps travel between hosts.

The design follows RFC 2608 §9.2 with a modern MAC in place of DSA with SHA-1 (§9.2.2):

- The block is a §9.2 authentication block: Block Structure Descriptor `BSD_HMAC_SHA256`, taken
  from the range §9.2 and §15 leave "for private use" (0x8000-0x8FFF), its length, a 32-bit
  Timestamp, the SLP SPI string and a Structured Authenticator of 32 bytes: the HMAC-SHA-256 of
  `authenticated` under the registrant's key. A SrvReg carries it as the URL entry's block (and
  no attribute block: the one MAC covers the attribute list too); a SrvDeReg likewise in its URL
  entry.
- The SPI names the registrant (§9.2: it "identifies the ... keying material"); a DA holds one key
  per SPI. SPIs are at most `MAX_SPI` bytes of letters, digits, ``.``, ``_`` and ``-``, inside
  the <scope-val> grammar §9.2 requires.
- What the MAC covers starts with exactly what §9.2.1 lists for a URL (SPI length and SPI, URL
  length and URL, Timestamp) and goes on with what else would let a captured block be reused
  for another request: the BSD, the function id, the lifetime, the FRESH flag, the language tag,
  the service type and scope list, then §9.2.1's attribute-list components (SPI, <attr-list>,
  Timestamp) for a SrvReg, or the tag list for a SrvDeReg. Every string is length-prefixed, so
  no two requests share an input.
- The Timestamp is, as §9.2 says, when the authenticator expires: a signer sets it `VALIDITY`
  seconds ahead. A DA accepts it only within ``window`` seconds of its own clock either way (two
  home hosts' clocks may differ) and only if it is later than the last one it accepted from the
  same SPI for the same URL; the very same block again (a retransmission whose SrvAck was lost)
  gets the answer the first one got and changes nothing. A signer therefore never reuses a
  timestamp for a URL (`Signer`), even when it sends twice in a second.
- RFC 2608 §8.3 forbids incremental registrations of authenticated services: a signed SrvReg
  must carry FRESH (the DA answers AUTHENTICATION_FAILED otherwise).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import re
import struct
from collections import OrderedDict

from sipmob.slp.messages import AuthBlock, Flags, SrvDeReg, SrvReg, UrlEntry

__all__ = [
    "BSD_HMAC_SHA256",
    "MAC_LEN",
    "MIN_KEY_LEN",
    "Freshness",
    "ReplayGuard",
    "Signer",
    "authenticated",
    "block_of",
    "check_key",
    "check_spi",
    "sign",
    "verify",
]

BSD_HMAC_SHA256 = 0x8256  # RFC 2608 §9.2: BSDs 0x8000-0x8FFF are for private use
MAC_LEN = 32
MIN_KEY_LEN = 16  # bytes: 128 bits, the least HMAC-SHA-256 should be keyed with (RFC 2104 §3)
MAX_SPI = 64
VALIDITY = 30  # seconds a signer's block stays valid
MAX_TIMESTAMP = 0xFFFFFFFF

_SPI = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_SPI}}}\Z")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_HEAD = struct.Struct("!HBHH")  # BSD, function id, lifetime, flags

Signed = SrvReg | SrvDeReg


def check_spi(spi: str) -> str | None:
    """None if `spi` is a valid SPI name, else what is wrong with it."""
    if not _SPI.match(spi):
        return f"must be 1-{MAX_SPI} letters, digits, '.', '_' or '-', got {spi!r}"
    return None


def check_key(key: bytes) -> str | None:
    """None if `key` is long enough to key HMAC-SHA-256, else what is wrong with it."""
    if len(key) < MIN_KEY_LEN:
        return f"must be at least {MIN_KEY_LEN} bytes, got {len(key)}"
    return None


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def authenticated(msg: Signed, spi: str, timestamp: int) -> bytes:
    """The bytes the MAC of `msg`'s block covers (see the module docstring), URL part first."""
    entry = msg.url_entry
    spi_part = _string(spi)
    stamp = _U32.pack(timestamp)
    parts = [spi_part, _string(entry.url), stamp,
             _HEAD.pack(BSD_HMAC_SHA256, msg.header.function_id, entry.lifetime,
                        msg.header.flags & Flags.FRESH),
             _string(msg.header.lang)]
    if isinstance(msg, SrvReg):
        parts += [_string(msg.service_type), _string(msg.scope_list),
                  spi_part, _string(msg.attr_list), stamp]
    else:
        parts += [_string(msg.scope_list), _string(msg.tag_list)]
    return b"".join(parts)


def _mac(key: bytes, msg: Signed, spi: str, timestamp: int) -> bytes:
    return hmac.new(key, authenticated(msg, spi, timestamp), hashlib.sha256).digest()


def sign(msg: Signed, spi: str, key: bytes, timestamp: int) -> Signed:
    """`msg` with its URL entry carrying our block (and only it) for `spi` at `timestamp`."""
    if check_spi(spi) or check_key(key) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("cannot sign with this SPI, key or timestamp")
    bare = dataclasses.replace(msg, url_entry=dataclasses.replace(msg.url_entry, auths=()))
    block = AuthBlock(BSD_HMAC_SHA256, timestamp, spi, _mac(key, bare, spi, timestamp))
    return dataclasses.replace(msg, url_entry=dataclasses.replace(msg.url_entry, auths=(block,)))


def block_of(entry: UrlEntry) -> AuthBlock | None:
    """The first of our blocks in a URL entry, or None: other BSDs (DSA) are not ours to check."""
    for block in entry.auths:
        if block.bsd == BSD_HMAC_SHA256:
            return block
    return None


def verify(msg: Signed, block: AuthBlock, key: bytes) -> bool:
    """Whether `block` is a valid authenticator of `msg` under `key` (timestamps aside)."""
    if block.bsd != BSD_HMAC_SHA256 or len(block.structured_auth) != MAC_LEN:
        return False
    try:
        expected = _mac(key, msg, block.spi, block.timestamp)
    except ValueError:
        return False
    return hmac.compare_digest(expected, block.structured_auth)


class Signer:
    """The registrant's side: signs with one SPI and key, a later timestamp each time per URL."""

    def __init__(self, spi: str, key: bytes, validity: int = VALIDITY) -> None:
        problem = check_spi(spi) or check_key(key)
        if problem:
            raise ValueError(problem)
        self.spi = spi
        self._key = key
        self.validity = validity
        self._last: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"Signer(spi={self.spi!r})"  # never the key

    def uses(self, spi: str, key: bytes) -> bool:
        """Whether this signer signs as `spi` with `key`."""
        return self.spi == spi and hmac.compare_digest(self._key, key)

    def timestamp(self, url: str, now: float) -> int:
        stamp = max(int(now) + self.validity, self._last.get(url, 0) + 1)
        if len(self._last) >= 4096:
            # Expired stamps cannot clash with new ones (those are at least now + validity).
            self._last = {u: t for u, t in self._last.items() if t > now}
        self._last[url] = stamp
        return stamp

    def sign(self, msg: Signed, now: float) -> Signed:
        return sign(msg, self.spi, self._key, self.timestamp(msg.url_entry.url, now))


class Freshness(enum.Enum):
    NEW = "new"  # later than anything accepted for this SPI and URL: apply it
    DUPLICATE = "duplicate"  # the block last accepted, again: answer as then, change nothing
    REPLAYED = "replayed"  # not later than the last accepted: refuse
    EXPIRED = "expired"  # outside the window around our clock: refuse
    FULL = "full"  # no room to remember it: refuse for now (DA_BUSY_NOW)


class ReplayGuard:
    """The timestamps a DA accepted, per SPI and URL, for `window` seconds after they expire.

    A block is only remembered after its MAC was checked, so only key holders fill it; entries
    whose timestamp left the window are forgotten (any block that old is refused as EXPIRED) and
    at most `capacity` are kept.
    """

    def __init__(self, window: float, capacity: int) -> None:
        self.window = window
        self.capacity = capacity
        # (spi, url) -> (timestamp, MAC, result): kept in the order accepted, oldest first
        self._seen: OrderedDict[tuple[str, str], tuple[int, bytes, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, url: str, block: AuthBlock, now: float) -> tuple[Freshness, int]:
        """How fresh `block` is for `url`; with DUPLICATE, the result the first one got."""
        if abs(block.timestamp - now) > self.window:
            return Freshness.EXPIRED, 0
        seen = self._seen.get((block.spi, url))
        if seen is not None:
            if block.timestamp == seen[0] and hmac.compare_digest(block.structured_auth, seen[1]):
                return Freshness.DUPLICATE, seen[2]
            if block.timestamp <= seen[0]:
                return Freshness.REPLAYED, 0
            return Freshness.NEW, 0
        if len(self._seen) >= self.capacity:
            self._forget(now)
            if len(self._seen) >= self.capacity:
                return Freshness.FULL, 0
        return Freshness.NEW, 0

    def accept(self, url: str, block: AuthBlock, result: int) -> None:
        """Remember `block` as the latest accepted for its SPI and `url`, answered `result`."""
        key = (block.spi, url)
        seen = self._seen.get(key)
        if seen is not None and seen[0] > block.timestamp:
            return
        self._seen[key] = (block.timestamp, block.structured_auth, result)
        self._seen.move_to_end(key)

    def seed(self, spi: str, url: str, timestamp: int) -> None:
        """What a persisted registration says was accepted last (no MAC: never a duplicate)."""
        key = (spi, url)
        seen = self._seen.get(key)
        if (seen is None or seen[0] < timestamp) and len(self._seen) < self.capacity:
            self._seen[key] = (timestamp, b"", 0)

    def last(self, spi: str, url: str) -> int | None:
        seen = self._seen.get((spi, url))
        return seen[0] if seen is not None else None

    def _forget(self, now: float) -> None:
        # Oldest accepted first: their timestamps are (nearly) the oldest too.
        seen = self._seen
        while seen and next(iter(seen.values()))[0] < now - self.window:
            seen.popitem(last=False)
