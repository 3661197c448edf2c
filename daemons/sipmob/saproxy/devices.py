"""The device files of `sipmob-saproxy` (``/etc/sipmob/devices.d/*.toml``) and their SLP attributes.

One file describes one basic SIP device: its SIP URI, where it is (room, floor, building), what it
can do (media with direction, codecs, H.263 image formats, display size, bandwidth) and who may use
it. `load_devices` reads a whole directory and either returns every device or raises `ConfigError`
with one problem per mistake (file and key), so a reload with a broken file keeps the old devices.
`configured_attributes` maps a device to the ``service:sip-device`` attributes of
``docs/slp-schema.md``.

The ``allow`` list (the user URIs that may use a device) is kept out of SLP on purpose: an SLP
attribute is readable by anyone on the home network without authentication (RFC 2608 as deployed
has no SLP authentication), and the list would disclose the household's SIP addresses. SLP carries
only ``restricted=true`` for such a device, so a mobile node knows it may be refused; enforcing the
list is the device's (or its proxy's) business, with SIP digest authentication.

Not here: what probing learns about a device and how it is merged in (`sipmob.saproxy.probe`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable
from pathlib import Path

from sipmob.service.config import ConfigError, ConfigProblem, each, load_config, one_of, setting
from sipmob.sip.uri import URI, SIPParseError
from sipmob.slp.attrs import Attribute, AttrValue, is_bool_spelling, is_int_spelling

SERVICE_TYPE = "service:sip-device"
DIRECTIONS = ("sendrecv", "sendonly", "recvonly")
IMAGE_SIZES = ("SQCIF", "QCIF", "CIF", "4CIF", "16CIF")
CODEC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,31}\Z")
IMAGE_FORMAT_RE = re.compile(r"(SQCIF|QCIF|CIF|4CIF|16CIF):([1-9]|[12][0-9]|3[0-2])\Z")


def _codec(value: str) -> str | None:
    if CODEC_RE.match(value) is None:
        return f"must be an RTP payload name such as PCMU or H263-1998, got {value!r}"
    return None


def _image_format(value: str) -> str | None:
    # H.263 MPI 1-32 (RFC 4629 §8.1.1); the draft's §6.2 fmtp "CIF=4" is written "CIF:4" here.
    if IMAGE_FORMAT_RE.match(value) is None:
        return f"must be SIZE:MPI with SIZE one of {', '.join(IMAGE_SIZES)} and MPI 1-32, got {value!r}"
    return None


def _user_uri(value: str) -> str | None:
    try:
        uri = URI.parse(value)
    except SIPParseError:
        return f"must be a sip:, sips: or tel: URI, got {value!r}"
    if uri.scheme not in ("sip", "sips", "tel"):
        return f"must be a sip:, sips: or tel: URI, got {value!r}"
    return None


def _text(value: str) -> str | None:
    if len(value) > 64 or any(ord(c) < 0x20 for c in value):
        return f"must be at most 64 characters without control characters, got {value!r}"
    return None


def _dimension(value: int) -> str | None:
    return None if 1 <= value <= 16384 else f"must be 1-16384 pixels, got {value}"


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceFile:
    """The keys of one device file (see ``etc/sipmob/devices.d/*.toml.example``)."""

    uri: str = setting(help="the device's SIP URI: sip:tv@192.0.2.20, or an AOR reached through "
                            "[sip] outbound_proxy")
    name: str = setting("", check=_text, help="a short human name")
    room: str = setting("", check=_text, help="the room: kitchen, living-room")
    floor: int | None = setting(None, check=lambda v: None if -10 <= v <= 200 else
                                f"must be -10 to 200, got {v}", help="0 for the ground floor")
    building: str = setting("", check=_text, help="for homes with several buildings")
    vendor: str = setting("", check=_text, help="maker, for the user's benefit")
    audio: str = setting("", check=lambda v: one_of(*DIRECTIONS)(v) if v else None,
                         help="audio direction: sendrecv, sendonly, recvonly; empty: none or as probed")
    video: str = setting("", check=lambda v: one_of(*DIRECTIONS)(v) if v else None,
                         help="video direction: sendrecv, sendonly, recvonly; empty: none or as probed")
    audio_codecs: list[str] = setting(default_factory=list, check=each(_codec),
                                      help="audio codecs, most preferred first")
    video_codecs: list[str] = setting(default_factory=list, check=each(_codec),
                                      help="video codecs, most preferred first")
    image_formats: list[str] = setting(default_factory=list, check=each(_image_format),
                                       help="H.263 sizes with their MPI, as CIF:4")
    display_width: int | None = setting(None, check=_dimension, help="pixels")
    display_height: int | None = setting(None, check=_dimension, help="pixels")
    bandwidth: int | None = setting(None, check=lambda v: None if 1 <= v <= 1_000_000 else
                                    f"must be 1-1000000 kbit/s, got {v}", help="kbit/s the device can take")
    allow: list[str] = setting(default_factory=list, check=each(_user_uri),
                               help="user URIs that may use the device; empty: everyone")

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        problem = _device_uri(self.uri)
        if problem:
            problems.append(("uri", problem))
        if (self.display_width is None) != (self.display_height is None):
            problems.append(("display_width", "display_width and display_height go together"))
        if self.image_formats and not self.video:
            problems.append(("image_formats", "needs video (image formats describe received video)"))
        return problems


def _device_uri(value: str) -> str | None:
    try:
        uri = URI.parse(value)
    except SIPParseError:
        return f"must be a SIP URI such as sip:tv@192.0.2.20, got {value!r}"
    if uri.scheme != "sip":
        return f"must be a sip: URI (the SA proxy probes over UDP), got {value!r}"
    if not uri.host:
        return f"has no host: {value!r}"
    if uri.transport not in (None, "udp"):
        return f"transport={uri.transport} is not supported (UDP only), in {value!r}"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class Device:
    """One configured device: ``id`` is the file's name without ``.toml``."""

    id: str
    path: str
    spec: DeviceFile
    uri: URI

    @property
    def url(self) -> str:
        """The URL it is registered under in SLP: its SIP URI as written."""
        return self.spec.uri

    @property
    def direct(self) -> bool:
        """True when OPTIONS go to the URI's own host (an IP literal), not through the outbound proxy."""
        try:
            ipaddress.ip_address(self.uri.host.strip("[]"))
        except ValueError:
            return False
        return True


def load_devices(directory: str | Path, *, have_outbound_proxy: bool = True) -> tuple[Device, ...]:
    """Every ``*.toml`` device file in `directory`, sorted by name; raises ConfigError listing every
    problem. A missing directory is no device at all (the daemon then waits for a reload)."""
    folder = Path(directory)
    problems: list[ConfigProblem] = []
    devices: list[Device] = []
    if not folder.exists():
        return ()
    if not folder.is_dir():
        raise ConfigError([ConfigProblem(str(folder), "", "is not a directory")])
    seen: dict[str, str] = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            spec = load_config(DeviceFile, path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        device = Device(path.stem, str(path), spec, URI.parse(spec.uri))
        key = str(device.uri.without_params())
        if key in seen:
            problems.append(ConfigProblem(str(path), "uri", f"{spec.uri} is already the uri of {seen[key]}"))
            continue
        seen[key] = str(path)
        if not device.direct and not have_outbound_proxy:
            problems.append(ConfigProblem(str(path), "uri",
                                          f"{spec.uri} names a domain: set [sip] outbound_proxy to reach it "
                                          "(the SA proxy does no DNS)"))
            continue
        devices.append(device)
    if problems:
        raise ConfigError(problems)
    return tuple(devices)


# SLP attributes (docs/slp-schema.md) ------------------------------------------------------------


def scalar(value: str) -> AttrValue:
    """A string as RFC 2608 §5 will read it: "101" is the integer 101, "true" the boolean."""
    if is_int_spelling(value):
        return int(value)
    if is_bool_spelling(value):
        return value.lower() == "true"
    return value


def multi(tag: str, values: Iterable[str]) -> Attribute | None:
    """A multi-valued string attribute, without duplicates, or None when nothing is left."""
    kept: list[AttrValue] = []
    seen: set[str] = set()
    for v in values:
        if v and not is_int_spelling(v) and not is_bool_spelling(v) and v.lower() not in seen:
            seen.add(v.lower())
            kept.append(v)
    return Attribute(tag, tuple(kept)) if kept else None


def media_values(audio: str, video: str) -> list[str]:
    return [f"{kind}-{direction}" for kind, direction in (("audio", audio), ("video", video)) if direction]


def configured_attributes(device: Device) -> dict[str, Attribute]:
    """The attributes the device file gives, in the schema's order; empty keys are left out."""
    s = device.spec
    attrs: list[Attribute | None] = [
        Attribute("name", (scalar(s.name),)) if s.name else None,
        Attribute("room", (scalar(s.room),)) if s.room else None,
        Attribute("floor", (s.floor,)) if s.floor is not None else None,
        Attribute("building", (scalar(s.building),)) if s.building else None,
        multi("media", media_values(s.audio, s.video)),
        multi("audio-codecs", s.audio_codecs),
        multi("video-codecs", s.video_codecs),
        multi("image-formats", s.image_formats),
        Attribute("display-width", (s.display_width,)) if s.display_width is not None else None,
        Attribute("display-height", (s.display_height,)) if s.display_height is not None else None,
        Attribute("bandwidth", (s.bandwidth,)) if s.bandwidth is not None else None,
        Attribute("vendor", (scalar(s.vendor),)) if s.vendor else None,
        Attribute("restricted", (True,)) if s.allow else None,
        Attribute("mobility", ("basic",)),
    ]
    return {a.key: a for a in attrs if a is not None}
