"""Keeping the SA proxy's registrations true: probing basic devices with SIP OPTIONS, sans-I/O.

`Prober` is the up/down machine of every device. It never sends anything itself: `handle_timer(now)`
returns the devices to probe now, the owner sends one OPTIONS each (through its SIP user agent) and
reports the outcome with `answered` (any final response: RFC 3261 §11 makes OPTIONS the way to ask
whether a UA is reachable, and a 404 or a 486 comes from a live device as surely as a 200) or `failed` (the
transaction timed out, Timer F, or the transport failed). `get_timer()` is the next deadline.

    state     outcome                       next state  next probe
    UNKNOWN   answered                      UP          interval
    UNKNOWN   failed                        DOWN        interval, doubling up to backoff_max
    UP        answered                      UP          interval
    UP        failed (fewer than down_after) UP         retry
    UP        failed (down_after in a row)  DOWN        interval, doubling up to backoff_max
    DOWN      answered                      UP          interval
    DOWN      failed                        DOWN        the doubled wait, up to backoff_max

Each move between states is one `StateChanged` event (`events()`), which the app turns into an SLP
registration or deregistration and one log line. Probe times get a ±10 % jitter from the injected
random source so that fifty devices configured together do not stay in lock-step.

`Capabilities.from_response` reads what a 200 says about a device (Allow, Accept, and the SDP
body: media and directions, codecs, H.263 image formats, b=AS), bounded so that a device sending
garbage, 10,000 codecs or a huge body costs little and yields a problem to log; `merge` fills the
attributes the device file leaves out with what was probed and names each contradiction between
the two (the file wins).

Not here: sockets, the transaction layer, SLP, logging (`sipmob.saproxy.app`).
"""

from __future__ import annotations

import dataclasses
import enum
import random

from sipmob.saproxy.devices import (
    CODEC_RE,
    IMAGE_FORMAT_RE,
    Device,
    configured_attributes,
    media_values,
    multi,
)
from sipmob.sdp import AUXILIARY_ENCODINGS, SDPParseError, parse
from sipmob.sip.headers import split_commas
from sipmob.sip.message import Headers, Response
from sipmob.slp.attrs import Attribute

MAX_BODY = 16384  # an OPTIONS answer's SDP is a few hundred bytes; more is not a capability list
MAX_CODECS = 16  # per kind: more than any real device offers, and keeps the SrvReg small
MAX_TOKENS = 32  # Allow and Accept entries kept


class DeviceState(enum.StrEnum):
    UNKNOWN = "unknown"  # not probed yet
    UP = "up"
    DOWN = "down"


@dataclasses.dataclass(frozen=True, slots=True)
class ProbeConfig:
    interval: float = 15.0
    timeout: float = 4.0
    retry: float = 1.0
    down_after: int = 2
    backoff_max: float = 60.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0 or self.retry <= 0 or self.down_after < 1:
            raise ValueError("probe intervals must be positive and down_after at least 1")
        if self.backoff_max < self.interval:
            raise ValueError("backoff_max must be at least interval")


@dataclasses.dataclass(frozen=True, slots=True)
class StateChanged:
    device: str
    old: DeviceState
    new: DeviceState
    reason: str


class _Probe:
    __slots__ = ("backoff", "deadline", "failures", "in_flight", "state")

    def __init__(self, deadline: float) -> None:
        self.state = DeviceState.UNKNOWN
        self.deadline = deadline  # next probe, or the give-up time of the one in flight
        self.in_flight = False
        self.failures = 0
        self.backoff = 0.0


class Prober:
    """The probe schedule and up/down state of every device, by device id."""

    def __init__(self, config: ProbeConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._probes: dict[str, _Probe] = {}
        self._events: list[StateChanged] = []

    def add(self, device: str, now: float) -> None:
        """Start probing `device` at once (a device already known keeps its state)."""
        if device not in self._probes:
            self._probes[device] = _Probe(now)

    def remove(self, device: str) -> None:
        self._probes.pop(device, None)

    def reconfigure(self, config: ProbeConfig) -> None:
        self.config = config

    def state(self, device: str) -> DeviceState:
        probe = self._probes.get(device)
        return probe.state if probe is not None else DeviceState.UNKNOWN

    def counts(self) -> dict[DeviceState, int]:
        counts: dict[DeviceState, int] = {state: 0 for state in DeviceState}
        for probe in self._probes.values():
            counts[probe.state] += 1
        return counts

    def __contains__(self, device: object) -> bool:
        return device in self._probes

    def events(self) -> list[StateChanged]:
        out, self._events = self._events, []
        return out

    def get_timer(self) -> float | None:
        return min((p.deadline for p in self._probes.values()), default=None)

    def handle_timer(self, now: float) -> list[str]:
        """The devices to send an OPTIONS to now; a probe in flight past twice its timeout (its
        outcome was never reported) counts as failed."""
        due = []
        for device, probe in list(self._probes.items()):
            if probe.deadline > now:
                continue
            if probe.in_flight:
                self.failed(device, "no outcome reported", now)
                if device not in self._probes or self._probes[device].deadline > now:
                    continue
            probe.in_flight = True
            probe.deadline = now + 2 * self.config.timeout
            due.append(device)
        return due

    def answered(self, device: str, now: float, reason: str = "answered OPTIONS") -> None:
        probe = self._probes.get(device)
        if probe is None or not probe.in_flight:
            return  # removed meanwhile, or a late answer to a probe already counted as failed
        probe.in_flight = False
        probe.failures = 0
        probe.backoff = 0.0
        probe.deadline = now + self._jitter(self.config.interval)
        self._move(device, probe, DeviceState.UP, reason)

    def failed(self, device: str, reason: str, now: float) -> None:
        probe = self._probes.get(device)
        if probe is None or not probe.in_flight:
            return
        probe.in_flight = False
        probe.failures += 1
        if probe.state is DeviceState.UP and probe.failures < self.config.down_after:
            probe.deadline = now + self.config.retry  # confirm quickly before telling the DA
            return
        probe.backoff = min(self.config.backoff_max,
                            probe.backoff * 2 if probe.backoff else self.config.interval)
        probe.deadline = now + self._jitter(probe.backoff)
        self._move(device, probe, DeviceState.DOWN, reason)

    def _move(self, device: str, probe: _Probe, new: DeviceState, reason: str) -> None:
        if probe.state is not new:
            self._events.append(StateChanged(device, probe.state, new, reason))
            probe.state = new

    def _jitter(self, seconds: float) -> float:
        return seconds * (0.9 + 0.2 * self._rng.random())


# What a 200 says ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Capabilities:
    """What a device said about itself in a 200 to OPTIONS; ``problems`` is what was wrong with it."""

    methods: tuple[str, ...] = ()
    accept: tuple[str, ...] = ()
    audio: str = ""  # direction, as in the device file
    video: str = ""
    audio_codecs: tuple[str, ...] = ()
    video_codecs: tuple[str, ...] = ()
    image_formats: tuple[str, ...] = ()
    bandwidth: int | None = None
    problems: tuple[str, ...] = ()

    @classmethod
    def from_response(cls, response: Response) -> Capabilities:
        problems: list[str] = []
        methods = _tokens(response.headers, "Allow", problems)
        accept = _tokens(response.headers, "Accept", problems)
        fields: dict[str, object] = {}
        body = response.body
        content_type = (response.content_type or "").split(";")[0].strip().lower()
        if body and content_type == "application/sdp":
            if len(body) > MAX_BODY:
                problems.append(f"SDP body of {len(body)} bytes ignored (more than {MAX_BODY})")
            else:
                fields = _from_sdp(body, problems)
        elif body:
            problems.append(f"body of type {content_type or 'unknown'} ignored")
        return cls(methods=methods, accept=accept, problems=tuple(problems), **fields)  # type: ignore[arg-type]


def _tokens(headers: Headers, name: str, problems: list[str]) -> tuple[str, ...]:
    values: list[str] = []
    for line in headers.get_all(name):
        values.extend(v.strip() for v in split_commas(line) if v.strip())
    good = [v for v in values if CODEC_RE.match(v.replace("/", "")) is not None]
    if len(good) != len(values) or len(good) > MAX_TOKENS:
        problems.append(f"{name}: {len(values)} entries, {len(good)} well-formed, "
                        f"kept {min(len(good), MAX_TOKENS)}")
    return tuple(good[:MAX_TOKENS])


def _from_sdp(body: bytes, problems: list[str]) -> dict[str, object]:
    try:
        sdp = parse(body)
    except (SDPParseError, ValueError) as exc:
        problems.append(f"unparseable SDP: {exc}")
        return {}
    out: dict[str, object] = {}
    codecs: dict[str, list[str]] = {"audio": [], "video": []}
    image_formats: list[str] = []
    bandwidth = max((b.bandwidth for b in sdp.bandwidths if b.bwtype.upper() == "AS"), default=None)
    for index, media in enumerate(sdp.media):
        if media.media not in codecs:
            continue
        direction = sdp.direction(index)
        if direction.value in ("sendrecv", "sendonly", "recvonly") and media.media not in out:
            out[media.media] = direction.value
        for bw in media.bandwidths:
            if bw.bwtype.upper() == "AS":
                bandwidth = max(bandwidth or 0, bw.bandwidth)
        for pt in media.payload_types[: MAX_CODECS * 4]:
            try:
                rtpmap = media.rtpmap(pt)
            except ValueError:
                continue
            if rtpmap is None or rtpmap.encoding.lower() in AUXILIARY_ENCODINGS:
                continue
            if CODEC_RE.match(rtpmap.encoding) is not None:
                codecs[media.media].append(rtpmap.encoding)
            if rtpmap.encoding.upper() in ("H263", "H263-1998", "H263-2000"):
                image_formats.extend(_h263_formats(media.fmtp(pt) or ""))
        if len(media.payload_types) > MAX_CODECS:
            problems.append(f"{len(media.payload_types)} {media.media} payload types, kept {MAX_CODECS}")
    for kind, names in codecs.items():
        unique = list(dict.fromkeys(names))
        if unique:
            out[f"{kind}_codecs"] = tuple(unique[:MAX_CODECS])
    if image_formats:
        out["image_formats"] = tuple(dict.fromkeys(image_formats))
    if bandwidth is not None and 0 < bandwidth <= 1_000_000:
        out["bandwidth"] = bandwidth
    return out


def _h263_formats(fmtp: str) -> list[str]:
    """RFC 4629 §8.1.1 "CIF=4;QCIF=3" (the draft's §6.2 image sizes) as ["CIF:4", "QCIF:3"]."""
    out = []
    for part in fmtp.split(";"):
        size, _, mpi = part.strip().partition("=")
        candidate = f"{size.strip().upper()}:{mpi.strip()}"
        if IMAGE_FORMAT_RE.match(candidate):
            out.append(candidate)
    return out


# Merging ------------------------------------------------------------------------------------------


def merge(device: Device, caps: Capabilities | None) -> tuple[dict[str, Attribute], list[str]]:
    """The device's attributes: the file's, completed by what was probed (the file wins), and a
    description of each contradiction between them."""
    attrs = configured_attributes(device)
    if caps is None:
        return attrs, []
    s = device.spec
    contradictions: list[str] = []
    probed: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
        # (attribute, configured values, probed values)
        ("media", tuple(media_values(s.audio, s.video)), tuple(media_values(caps.audio, caps.video))),
        ("audio-codecs", tuple(s.audio_codecs), caps.audio_codecs),
        ("video-codecs", tuple(s.video_codecs), caps.video_codecs),
        ("image-formats", tuple(s.image_formats), caps.image_formats),
    ]
    for tag, configured, seen in probed:
        if not configured:
            attr = multi(tag, seen)
            if attr is not None:
                attrs[attr.key] = attr
        elif seen and not {v.lower() for v in configured} & {v.lower() for v in seen}:
            contradictions.append(f"{tag}: the device file says {','.join(configured)}, "
                                  f"the device says {','.join(seen)}")
    if s.bandwidth is None and caps.bandwidth is not None:
        attrs["bandwidth"] = Attribute("bandwidth", (caps.bandwidth,))
    for tag, values in (("sip-methods", caps.methods), ("sip-accept", caps.accept)):
        attr = multi(tag, values)
        if attr is not None:
            attrs[attr.key] = attr
    mobility = attrs.pop("mobility")
    attrs[mobility.key] = mobility  # last, as in the schema's examples
    return attrs, contradictions
