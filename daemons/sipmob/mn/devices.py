"""Finding the home's devices over SLP, for ``sipmob devices`` and for the phone's transfers.

`predicate` builds the SrvRqst filter for ``service:sip-device`` from a room and a media type
(docs/slp-schema.md); `discover` asks the DA with `sipmob.service.slp.SLPClient` (one SrvRqst, then
one AttrRqst per URL, as the draft's Fig. 1) and returns `Found` devices, each with a short name a
person can type (`sipmob transfer 1 --to tv`): the ``name`` attribute made lower-case with dashes,
else the user part of its URI, made unique with a number. `table` and `to_json` present them;
`resolve` finds the devices a person named.

Trust: the DA sets the keyword attribute ``trusted`` on registrations from its trusted registrants
(the SA proxy, devices listed in its configuration) and strips it from everyone else's. Trusted
devices get their short names first, so an untrusted one can never take a trusted device's name,
and `resolve` turns down an untrusted device named by anything but its full URI unless told
otherwise (``sipmob transfer --untrusted``): a stranger on the LAN must not be where a call's
audio goes by a name that looks like the kitchen's.

Not here: what a device is to the planner (`sipmob.mn.mobility.Device`, built by `Found.device`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer

from sipmob.mn.mobility import Device
from sipmob.slp.attrs import Attribute, escape_value

SERVICE_TYPE = "service:sip-device"
MEDIA_DIRECTIONS = ("sendrecv", "recvonly", "sendonly")
TAGS = ""  # every attribute: the table shows some, --json all
TRUSTED = "trusted"


class UntrustedDevice(LookupError):
    """The device named is not trusted by the DA, and untrusted devices were not allowed."""


def _filter_value(value: str) -> str:
    # An unescaped * is a wildcard in a predicate (RFC 2254 §4); a room name means itself.
    return escape_value(value).replace("*", "\\2a")


def predicate(room: str | None = None, media: str | None = None) -> str:
    """The LDAPv3 filter for devices in ``room`` that handle ``media`` in any direction."""
    terms: list[str] = []
    if room:
        terms.append(f"(room={_filter_value(room)})")
    if media:
        terms.append("(|" + "".join(f"(media={media}-{d})" for d in MEDIA_DIRECTIONS) + ")")
    if len(terms) > 1:
        return "(&" + "".join(terms) + ")"
    return terms[0] if terms else ""


def _values(attrs: Mapping[str, Attribute], tag: str) -> tuple[str, ...]:
    attr = attrs.get(tag)
    return tuple(str(v) for v in attr.values) if attr is not None else ()


def _first(attrs: Mapping[str, Attribute], tag: str) -> str:
    values = _values(attrs, tag)
    return values[0] if values else ""


def _user_part(uri: str) -> str:
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    user = rest.split("@", 1)[0] if "@" in rest else rest.split(";", 1)[0]
    return user or rest


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


@dataclasses.dataclass(frozen=True, slots=True)
class Found:
    """One device the DA knows, with its attributes and the short name we give it."""

    short: str
    uri: str
    attributes: Mapping[str, tuple[str, ...]]

    @property
    def name(self) -> str:
        names = self.attributes.get("name", ())
        return names[0] if names else _user_part(self.uri)

    @property
    def trusted(self) -> bool:
        return TRUSTED in self.attributes

    def device(self) -> Device:
        a = self.attributes
        return Device(self.uri, self.name, frozenset(v.lower() for v in a.get("media", ())),
                      a.get("audio-codecs", ()), a.get("video-codecs", ()))

    def as_dict(self) -> dict[str, Any]:
        return {"short": self.short, "uri": self.uri, "name": self.name, "trusted": self.trusted,
                "attributes": {k: list(v) for k, v in self.attributes.items()}}


def _printable(text: str) -> str:
    # What a device registered is shown to a person: no control characters reach the terminal.
    return "".join(c if c.isprintable() else "?" for c in text)


def build(entries: Sequence[tuple[str, Mapping[str, Attribute]]]) -> list[Found]:
    """`Found` devices from (URL, attributes) pairs, in order, with unique short names.

    Trusted devices are named first: an untrusted one asking for the same name gets a number.
    """
    shorts: dict[int, str] = {}
    used: set[str] = set()
    trusted = [any(a.tag.lower() == TRUSTED for a in attrs.values()) for _, attrs in entries]
    for i in sorted(range(len(entries)), key=lambda i: not trusted[i]):
        uri, attrs = entries[i]
        base = slug(_first(attrs, "name")) or slug(_user_part(uri)) or "device"
        short, n = base, 2
        while short in used:
            short, n = f"{base}-{n}", n + 1
        used.add(short)
        shorts[i] = short
    return [Found(shorts[i], _printable(uri),
                  {_printable(a.tag.lower()): tuple(_printable(str(v)) for v in a.values)
                   for a in attrs.values()})
            for i, (uri, attrs) in enumerate(entries)]


def resolve(found: Sequence[Found], wanted: str, allow_untrusted: bool = False) -> Found:
    """The device a person means by ``wanted``: its short name, URI, URI user part or name.

    Trusted devices are matched first. An untrusted one is returned only when `allow_untrusted`
    or when named by its full URI (nothing can be mistaken for that); otherwise UntrustedDevice.
    """
    key = wanted.strip().lower()
    tests = ((lambda f: f.short == key), (lambda f: f.uri.lower() == key),
             (lambda f: _user_part(f.uri).lower() == key), (lambda f: f.name.lower() == key))
    for trusted_only in (True, False):
        for i, test in enumerate(tests):
            matches = [f for f in found if test(f) and (f.trusted or not trusted_only)]
            if len(matches) > 1:
                raise LookupError(f"{wanted!r} could mean {', '.join(f.short for f in matches)}")
            if len(matches) == 1:
                match = matches[0]
                if match.trusted or allow_untrusted or i == 1:
                    return match
                raise UntrustedDevice(f"{match.short} ({match.uri}) is not a trusted device: name it "
                                      f"with --untrusted to send media there")
    known = ", ".join(f.short for f in found) or "none"
    raise LookupError(f"no device {wanted!r} (known: {known})")


@defer.inlineCallbacks
def discover(client: Any, room: str | None = None, media: str | None = None) -> Any:
    """SrvRqst then one AttrRqst per URL through ``client`` (an `SLPClient`); Deferred[list[Found]].

    A device whose AttrRqst fails (it deregistered meanwhile, the DA is busy) is listed without
    attributes rather than dropped: it was there a moment ago.
    """
    urls = yield client.find_services(SERVICE_TYPE, predicate(room, media))
    queries = [client.find_attributes(entry.url, TAGS) for entry in urls]
    results = yield defer.DeferredList(queries, consumeErrors=True)
    entries = [(entry.url, attrs if ok else {}) for entry, (ok, attrs) in zip(urls, results, strict=True)]
    return build(sorted(entries, key=lambda e: e[0]))


def table(found: Sequence[Found]) -> str:
    """A readable table: short name, name, room, media, codecs, URI."""
    if not found:
        return "no devices found"
    rows = [("SHORT", "NAME", "ROOM", "MEDIA", "CODECS", "TRUSTED", "URI")]
    for f in found:
        a = f.attributes
        codecs = ",".join((*a.get("audio-codecs", ()), *a.get("video-codecs", ())))
        rows.append((f.short, f.name, ",".join(a.get("room", ())) or "-",
                     ",".join(a.get("media", ())) or "-", codecs or "-", "yes" if f.trusted else "NO",
                     f.uri))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows]
    # a virtual device of sipmob-mdsm: its members on a line of their own under it
    for n in range(len(found), 0, -1):
        members = found[n - 1].attributes.get("members", ())
        if members:
            lines.insert(n + 1, " " * (widths[0] + 2) + "members: " + ", ".join(members))
    return "\n".join(lines)


def to_json(found: Sequence[Found]) -> list[dict[str, Any]]:
    return [f.as_dict() for f in found]
