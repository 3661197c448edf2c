"""``sipmob phone``: the mobile node, a SIP phone that moves its own calls in Mobile Node Control mode.

`Phone` wires the parts together: a `sipmob.service.sipua.UserAgent` for SIP, one
`sipmob.service.rtp.RtpEndpoint` per call for our own audio (a tone or a WAV file, recorded if
configured), an `SLPClient` to find devices, the control socket (`sipmob.mn.control`) the ``sipmob``
commands talk to, and for each transfer, split or retrieval the planner (`sipmob.mn.mobility`) and
the executor (`sipmob.mn.executor`) through `_CallControl`, the SIP and media operations of one call.

A stream whose device shares no codec with the CN goes through a transcoder found in the DA
instead of being refused (`sipmob.mn.transcoding`); its leg is one more of the call's device legs.

Each dialog's descriptions go through an `OfferAnswerState`, so every offer we send has the right
``o=`` version. One mobility action runs at a time per call; a second one is refused.

The phone sends audio only. A CN's video stream is taken ``recvonly`` on a socket that only counts
packets (a phone without a screen worth the name), so that the stream exists in the session and can
be transferred or split to the home's displays and cameras; calls the phone places offer audio only.
The CN's re-INVITEs are answered from the call's state, and carried to the devices when its media
is on them (`sipmob.mn.remote_offer`).

With ``[identity] registrar`` set, the phone registers ``sip:USER@REGISTRAR-HOST`` at start (the
UA core refreshes it and retries after failures), logs one line per change of the binding, and
un-REGISTERs on a clean stop; Digest challenges are answered with ``auth_user`` and the password
read once, at start, from ``password_file``.

Who may call, replace a call or ask OPTIONS is decided before the SIP core acts, by the phone's
`sipmob.mn.policy.PhonePolicy` (404, 503, 486, 403). A call whose other party sends nothing for
``[calls] media_timeout`` while the phone plays it, or whose audio destination answers with ICMP
unreachable for `UNREACHABLE_GRACE`, is ended with BYE: a forged ``c=`` line cannot turn the phone
into a packet cannon. The phone sends from the first moment of a call rather than waiting to hear
the other party first: a peer behind a NAT or a firewall may itself wait for our packets, and the
exposure is bounded by ``max_calls`` x 50 packets/s x ``media_timeout`` from callers in
``answer_from`` only.

Every call is written to `sipmob.mn.store` before what depends on it is sent. At the next start the
calls a killed phone left there are taken back (the dialogs with the CN and the devices, where the
media is, our RTP socket on its old port): the other parties notice nothing and the call can be
retrieved or hung up as before. A call that cannot be taken back (its port taken, a damaged record)
is ended with a BYE to the CN and to every device, and ``sipmob calls`` lists it as ended.

Not here: the planning rules, the SIP stack, the command line (`sipmob.mn.cli`).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import logging
import secrets
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.internet.error import CannotListenError

from sipmob.media import codecs as media_codecs
from sipmob.media.recorder import WavRecorder
from sipmob.media.sources import AudioSource, ToneSource, WavSource
from sipmob.mn import devices as discovery
from sipmob.mn.config import MnConfig, read_password
from sipmob.mn.control import CommandError, ControlServer
from sipmob.mn.controls import COMMANDS as CALL_COMMANDS
from sipmob.mn.controls import CallControls
from sipmob.mn.device import DeviceRole
from sipmob.mn.executor import SignallingFailed, execute
from sipmob.mn.handoff import Mode, PhoneHandoff, choose_mode, parse_refer
from sipmob.mn.mobility import (
    MOBILE_NODE,
    CallState,
    Layout,
    MediaChoice,
    NoCommonCodec,
    Plan,
    PlanError,
    initial_layout,
    plan_retrieve,
    plan_split,
    plan_transfer,
    where,
)
from sipmob.mn.policy import PhonePolicy
from sipmob.mn.remote_offer import RemoteOffers, own_fmtp, stream_status
from sipmob.mn.store import CallStore, StoredCall
from sipmob.mn.transcoding import TranscoderLeg, Transcoding, party, widen
from sipmob.sdp import (
    Codec,
    Direction,
    DuplexSplit,
    LocalCapabilities,
    MediaCapability,
    OfferAnswerError,
    OfferAnswerState,
    Origin,
    Pending,
    SDPParseError,
    SessionDescription,
    answer,
    codecs_of,
    parse,
)
from sipmob.service import daemon, slpkeys
from sipmob.service.config import ConfigError, ConfigProblem, split_host_port
from sipmob.service.nexthop import LocatingUserAgent
from sipmob.service.resolver import Resolver
from sipmob.service.sipua import (
    Call,
    CallFailed,
    IncomingCall,
    IncomingRequest,
    Registration,
    SIPError,
    UserAgent,
)
from sipmob.service.slp import SLPClient
from sipmob.sip.dialog import Dialog
from sipmob.sip.locate import RType
from sipmob.sip.message import Response
from sipmob.sip.prack import rseq_of, uas_wants_reliable
from sipmob.sip.session_timer import Policy as SessionTimerPolicy
from sipmob.sip.uabase import ALLOW
from sipmob.sip.uri import URI

log = logging.getLogger("sipmob.mn")

STOP_WAIT = 2.0  # seconds to wait for the answers to our BYEs when stopping
TELEPHONE_EVENT = Codec("telephone-event", 8000, fmtp="0-15")
TELEPHONE_EVENT_PT = 101
# CSeqs a dialog may have used after its record was last written (requests are written before
# they are sent, so 1 would do; the margin costs nothing, §12.2.1.1 only asks that CSeq grows)
RESTART_SEQ_MARGIN = 100
# seconds a destination may answer our RTP with ICMP unreachable, hearing nothing from anyone, before
# the call is ended: a CN's socket can be a moment late at the start, a forged c= line stays wrong
UNREACHABLE_GRACE = 2.0
# seconds a call's RTP socket keeps receiving after the other party ended it
MEDIA_LINGER = 0.5
VIDEO_CODECS = (Codec("VP8", 90000), Codec("H264", 90000, fmtp="packetization-mode=1"),
                Codec("H263", 90000))


def _addrtype(address: str) -> str:
    return "IP6" if ":" in address else "IP4"


def _origin(address: str) -> Origin:
    return Origin("sipmob", secrets.randbelow(2**31), 1, "IN", "IP6" if ":" in address else "IP4", address)


@dataclasses.dataclass
class PhoneCall:
    """One call with a CN and where its streams are."""

    id: str
    peer: str
    call: Call
    oa: OfferAnswerState
    cn_sdp: SessionDescription
    local_sdp: SessionDescription
    rtp: Any  # RtpEndpoint
    layout: Layout = ()
    device_sdps: dict[str, SessionDescription] = dataclasses.field(default_factory=dict)
    device_calls: dict[str, Call] = dataclasses.field(default_factory=dict)
    device_oas: dict[str, OfferAnswerState] = dataclasses.field(default_factory=dict)
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    busy: bool = False
    recorder: WavRecorder | None = None
    video_rtp: Any = None  # RtpEndpoint receiving the CN's video, when the CN offered some
    ended: bool = False
    source: str = ""  # the address an incoming call's INVITE came from
    transcoder: TranscoderLeg | None = None  # the audio reaches its device through this

    def state(self) -> CallState:
        return CallState(self.id, self.peer, self.cn_sdp, self.local_sdp, self.layout,
                         dict(self.device_sdps), dict(self.names))

    def describe(self) -> dict[str, Any]:
        streams = []
        for i, location in enumerate(self.layout):
            if location is None:
                continue
            kind = self.cn_sdp.media[i].media
            if isinstance(location, DuplexSplit):
                where = (f"out on {self.names.get(location.output_device, location.output_device)}, "
                         f"in from {self.names.get(location.input_device, location.input_device)}")
            else:
                where = "this phone" if location == MOBILE_NODE else self.names.get(location, location)
            via = ({"transcoder": f"via transcoder: {self.transcoder.summary}"}
                   if self.transcoder is not None and self.transcoder.index == i
                   and location == self.transcoder.device else {})
            streams.append({"media": kind, "where": where, **stream_status(self, i), **via})
        stats = self.rtp.stats()
        return {"id": self.id, "peer": self.peer, "state": self.call.state, "streams": streams,
                "devices": sorted(self.device_calls), "sending": bool(self.rtp.sending),
                "rtp_sent": stats.sent_packets,
                "rtp_received": sum(r.received for r in stats.sources.values()),
                "rtcp_sent": stats.rtcp_sent, "rtcp_received": stats.rtcp_received,
                "video_received": (sum(r.received for r in self.video_rtp.stats().sources.values())
                                   if self.video_rtp is not None else 0)}


class _CallControl:
    """The SIP and media operations of one call, for the executor (`sipmob.mn.executor.CallControl`).

    sipua ACKs every 2xx itself, so ``ack_*`` have nothing left to do, and cancelling an INVITE's
    Deferred (the executor does on a timeout) sends the CANCEL, so ``cancel_device`` has neither.
    """

    def __init__(self, phone: Phone, pc: PhoneCall) -> None:
        self.phone = phone
        self.pc = pc

    def cn_origin(self) -> Origin:
        return self.pc.oa.origin

    @defer.inlineCallbacks
    def invite_device(self, device: str, offer: SessionDescription) -> Any:
        oa = OfferAnswerState(_origin(self.phone.address))
        stamped = oa.create_offer(offer)
        try:
            call = yield self.phone.ua.invite(device, stamped.to_bytes())
        except CallFailed as exc:
            raise SignallingFailed(exc.status, exc.reason) from None
        self.pc.device_calls[device] = call
        self.pc.device_oas[device] = oa
        call.on_terminated(lambda c, reason: self._device_ended(device, c, reason))
        call.on_request("INFO", lambda c, request: self.phone.transcoding.info(self.pc, device, request))
        self.phone.persist(self.pc)  # before anything is sent that moves media to this device
        return self._answer_of(oa, call.remote_sdp, device)

    def _answer_of(self, oa: OfferAnswerState, body: bytes | None, who: str) -> SessionDescription:
        try:
            sdp = parse(body or b"")
            oa.receive_answer(sdp)
        except (SDPParseError, OfferAnswerError) as exc:
            raise SignallingFailed(None, f"unusable answer from {who}: {exc}") from None
        return sdp

    def _device_ended(self, device: str, call: Call, reason: str = "") -> None:
        if self.pc.device_calls.get(device) is call:
            del self.pc.device_calls[device]
            self.pc.device_oas.pop(device, None)
            if self.pc.transcoder is not None and self.pc.transcoder.url == device:
                if reason != "local":  # not our own BYE (a hang-up): the transcoder let go
                    self.phone.transcoding.ended(self.pc, device)
            else:
                log.info("call %s: %s hung up", self.pc.id, self.pc.names.get(device, device))

    def cancel_device(self, device: str) -> None:
        pass

    def ack_device(self, device: str) -> None:
        pass

    def bye_device(self, device: str) -> defer.Deferred[Any] | None:
        call = self.pc.device_calls.pop(device, None)
        self.pc.device_oas.pop(device, None)
        self.phone.persist(self.pc)
        return call.bye() if call is not None else None

    @defer.inlineCallbacks
    def reinvite_device(self, device: str, offer: SessionDescription) -> Any:
        call, oa = self.pc.device_calls[device], self.pc.device_oas[device]
        try:
            response = yield call.reinvite(oa.create_offer(offer).to_bytes())
        except SIPError as exc:
            oa.rollback()
            raise SignallingFailed(exc.status, exc.reason) from None
        return self._answer_of(oa, response.body, device)

    @defer.inlineCallbacks
    def reinvite_cn(self, offer: SessionDescription) -> Any:
        pc = self.pc
        self.phone.persist(pc)
        try:
            response = yield pc.call.reinvite(pc.oa.create_offer(offer).to_bytes())
        except SIPError as exc:
            pc.oa.rollback()
            raise SignallingFailed(exc.status, exc.reason) from None
        sdp = self._answer_of(pc.oa, response.body, pc.peer)
        pc.cn_sdp = sdp
        return sdp

    def ack_cn(self) -> None:
        pass

    def start_local_media(self, indices: Sequence[int]) -> None:
        if self.phone.audio_index(self.pc) in indices:
            self.phone.start_media(self.pc)

    def stop_local_media(self, indices: Sequence[int]) -> None:
        if self.phone.audio_index(self.pc) in indices:
            self.pc.rtp.stop_sending()


class Phone:
    """The ``sipmob phone`` app (`sipmob.service.daemon.App`)."""

    def __init__(self, config: MnConfig, reactor: Any) -> None:
        self.config = config
        self.reactor = reactor
        self.address = config.listen.address
        identity = config.identity
        credentials = None
        if identity.password_file:
            try:
                password = read_password(identity.password_file)
            except OSError as exc:  # checked with the file, but it may have gone since
                raise ConfigError([ConfigProblem(identity.password_file, "",
                                                 f"cannot read the password file: {exc.strerror}")]) from None
            credentials = (identity.auth_user or identity.user, password)
        self._answering = 0  # INVITEs accepted whose ACK has not come yet
        # ringing calls whose answer went in a reliable 180: their media and offer/answer state
        self._early: dict[int, tuple[Any, Any, OfferAnswerState]] = {}
        self._answering_from: collections.Counter[str] = collections.Counter()
        self.policy = self._policy(config)
        # Names in URIs (callee, registrar, outbound proxy) are located by RFC 3263.
        resolver = Resolver(reactor, servers=config.dns_servers or None,
                            transports=("udp", "tcp") if config.listen.tcp else ("udp",),
                            families=(RType.AAAA,) if ":" in config.listen.address else (RType.A,))
        self.ua: UserAgent = LocatingUserAgent(
            reactor, resolver=resolver, outbound_proxy=identity.outbound_proxy or None,
            listen=[(config.listen.address, config.listen.port, "udp"),
                    *([(config.listen.address, config.listen.port, "tcp")] if config.listen.tcp else [])],
            user=identity.user, display_name=identity.display_name or None,
            capabilities_sdp=self._capabilities, credentials=credentials, policy=self.policy,
            allow=(*ALLOW, "UPDATE"),  # RFC 3311 (remote_offer)
            session_timer=SessionTimerPolicy())  # RFC 4028 as a full party, in the core
        self._media_watch: task.LoopingCall | None = None
        self._lingering: dict[int, tuple[PhoneCall, Any]] = {}  # ended calls whose RTP still receives
        self.registration: Registration | None = None
        self._registration_logged: tuple[str, int | None] | None = None
        self.slp = SLPClient(reactor, da=config.da_address, scopes=config.slp.scopes,
                             multicast=config.da_address is None)
        self.control = ControlServer(reactor, config.control_path, self.handle)
        self.calls: dict[str, PhoneCall] = {}
        self.store: CallStore | None = None
        self.recovered: list[dict[str, Any]] = []  # calls found in the store at start, and their fate
        self._next_id = 1
        self.codecs = _codecs(config.media.codecs)
        self.egress: Any = None
        if config.listen.egress:  # SIP and RTP follow the egress list (sipmob.mn.egress)
            from sipmob.mn.egress import PhoneEgress
            self.egress = PhoneEgress.from_file(self, config.listen.egress)
        # Our SLP registrations (device, egress: one URL, two types) signed by one signer, if we have a key.
        self.slp_signing = slpkeys.signing(config.slp, log) if config.device.enabled or (
            self.egress is not None and self.egress.config.share.allow) else None
        self.controls = CallControls(self, reactor, ring_timeout=config.calls.ring_timeout)
        self.handoff = PhoneHandoff(self)
        self.device = DeviceRole(self) if config.device.enabled else None
        self.remote_offers = RemoteOffers(self)
        self.transcoding = Transcoding(self)

    # App ------------------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self) -> Any:
        yield self.ua.start()
        if self.egress is not None:
            self.egress.start()
        self.ua.on_incoming_call(self._incoming)
        self._open_store()
        self.ua.on_request("REFER", self._on_refer)
        if self.device is not None:
            self.device.start()
        if self.config.identity.registrar:
            self._register()
        self.control.start()
        log.info("phone %s ready; control socket %s", self.ua.contact, self.control.path)

    def reload(self, config: MnConfig) -> None:
        self.config = dataclasses.replace(self.config, calls=config.calls, media=config.media, slp=config.slp,
                                          identity=dataclasses.replace(self.config.identity,
                                                                       owners=config.identity.owners))
        self.policy = self._policy(self.config)
        self.ua.set_policy(self.policy)

    def _policy(self, config: MnConfig) -> PhonePolicy:
        calls = config.calls
        return PhonePolicy(user=config.identity.user, owners=config.identity.owners,
                           answer_from=calls.answer_from, max_calls=calls.max_calls,
                           max_calls_per_source=calls.max_calls_per_source,
                           setups_per_minute=calls.setups_per_minute,
                           calls=lambda: len(self.calls) + self._answering,
                           calls_from=self._calls_from,
                           proxies=(config.identity.outbound_proxy, config.identity.registrar),
                           relays=self._relay_hosts, own=lambda host: self.ua.own_host(host))

    def _relay_hosts(self, call_id: str) -> frozenset[str]:
        return self.egress.relay_hosts(call_id) if self.egress is not None else frozenset()

    def _calls_from(self, host: str) -> int:
        return self._answering_from[host] + sum(1 for pc in self.calls.values() if pc.source == host)

    @defer.inlineCallbacks
    def stop(self) -> Any:
        self.controls.stop()
        yield self.control.stop()
        if self._media_watch is not None and self._media_watch.running:
            self._media_watch.stop()
        self._close_lingering()
        byes: list[defer.Deferred[Any]] = []
        for pc in list(self.calls.values()):
            byes += [call.bye() for call in list(pc.device_calls.values())]
            byes.append(pc.call.bye())
            if self.calls.get(pc.id) is pc:  # the BYE may have ended it already: close sockets once
                self._ended(pc)
        if byes:
            # A peer that is gone would keep us for a whole BYE transaction (64*T1): the BYEs are
            # sent, their answers are a courtesy.
            waiting = defer.DeferredList(byes, consumeErrors=True)
            waiting.addTimeout(STOP_WAIT, self.reactor)
            try:
                yield waiting
            except defer.TimeoutError:
                log.info("stopping without the answer to every BYE")
        yield self.slp.close()
        if self.device is not None:
            yield self.device.stop()
        yield self._unregister()
        if self.egress is not None:
            yield self.egress.stop()
        yield self.ua.stop()
        if self.store is not None:
            self.store.close()

    # Calls that outlive the process -----------------------------------------------------------------

    def _open_store(self) -> None:
        path = self.config.state_file
        try:
            self.store = CallStore(path, str(self.ua.contact))
            stored = self.store.calls()
        except (OSError, sqlite3.Error) as exc:
            log.warning("calls will not survive a restart: cannot use %s: %s", path, exc)
            self.store = None
            return
        for call in stored:
            if not self._resume(call):
                self._end_stored(call)
        self.handoff.restore()

    def _resume(self, stored: StoredCall) -> bool:
        """Take back a call a killed phone left: its dialogs (the CN's and the devices'), where its
        media is, and our RTP socket on the same port, so that the CN and the devices notice
        nothing and ``sipmob retrieve`` or a hang-up work as before. False when any part cannot be
        had again (a damaged record, the port taken): the caller then ends the call."""
        try:
            local, remote = parse(stored.local_sdp.encode()), parse(stored.remote_sdp.encode())
            layout = tuple(_location(x) for x in stored.layout)
            cn_dialog = Dialog.from_record(stored.cn, seq_margin=RESTART_SEQ_MARGIN)
            devices = {uri: (Dialog.from_record(record, seq_margin=RESTART_SEQ_MARGIN),
                             *(parse(sdp.encode()) for sdp in stored.device_sdps[uri]))
                       for uri, record in stored.devices.items()}
            oa = _agreed(local, remote)
            device_oas = {uri: _agreed(ours, theirs) for uri, (_, ours, theirs) in devices.items()}
        except (ValueError, KeyError, TypeError, SDPParseError, OfferAnswerError) as exc:
            log.warning("call %s: cannot resume it: %s", stored.id, exc)
            return False
        if len(layout) != len(remote.media):
            return False
        ports = {m.media: m.port for m in local.media if m.port}
        # with an egress list the call's media was on its egress's address, which our description
        # names (session-level c=; streams on devices have their own): the CN sends there
        address = local.connection.address if self.egress is not None and local.connection else self.address
        if self.egress is not None and not self.egress.has_address(address):
            # gone while we were not running: any port on an address we have, until the call moves
            # (at once, `PhoneEgress.call_added`) to a surviving egress
            log.warning("call %s: its address %s is gone", stored.id, address)
            address, ports = self.egress.fallback_address(), dict.fromkeys(ports, 0)
        endpoints: list[Any] = []
        try:
            from sipmob.service.rtp import RtpEndpoint

            rtp = RtpEndpoint(self.reactor, (address, ports.get("audio", 0)), rtcp=True)
            endpoints.append(rtp)
            video_rtp = None
            if "video" in ports:
                video_rtp = RtpEndpoint(self.reactor, (address, ports["video"]), clock_rate=90000)
                endpoints.append(video_rtp)
        except (CannotListenError, OSError) as exc:
            log.warning("call %s: cannot resume it: its RTP port is taken (%s)", stored.id, exc)
            self._close(*endpoints)
            return False
        call = self.ua.adopt(cn_dialog, local_sdp=local.to_bytes(), remote_sdp=remote.to_bytes(),
                             peer_host=stored.peer_host)
        pc = PhoneCall(stored.id, stored.peer, call, oa, remote, local, rtp, layout, video_rtp=video_rtp,
                       names=dict(stored.names))
        control = _CallControl(self, pc)
        for uri, (dialog, ours, theirs) in devices.items():
            device_call = self.ua.adopt(dialog, local_sdp=ours.to_bytes(), remote_sdp=theirs.to_bytes(),
                                        peer_host=stored.device_peer_hosts.get(uri, ""))
            pc.device_calls[uri] = device_call
            pc.device_oas[uri] = device_oas[uri]
            pc.device_sdps[uri] = theirs
            device_call.on_terminated(lambda c, reason, d=uri: control._device_ended(d, c, reason))
            device_call.on_request("INFO", lambda c, request, d=uri: self.transcoding.info(pc, d, request))
        if stored.transcoder:
            try:
                leg = TranscoderLeg.from_record(stored.transcoder)
                pc.device_sdps.pop(leg.url, None)
                pc.device_sdps[leg.device] = party(devices[leg.url][2], 0)  # what the CN is told
                pc.transcoder = leg
            except (ValueError, KeyError, TypeError, IndexError, SDPParseError) as exc:
                log.warning("call %s: its transcoder leg cannot be taken back: %s", stored.id, exc)
        if stored.id.isdigit():
            self._next_id = max(self._next_id, int(stored.id) + 1)
        index = self.audio_index(pc)
        self._track(pc, play=index is not None and index < len(layout) and layout[index] == MOBILE_NODE,
                    restored=True)
        log.warning("call %s with %s resumed after a restart (%s)", pc.id, pc.peer,
                    "; ".join(f"{s['media']}: {s['where']}" for s in pc.describe()["streams"]) or "no media")
        return True

    def _end_stored(self, stored: StoredCall) -> None:
        """A call the phone held when it last stopped without ending it (a crash, kill -9): its
        media state is gone with the process, so every leg gets a BYE (no orphan RTP between the
        CN and the devices), and `sipmob calls` says so."""
        assert self.store is not None
        if stored.id.isdigit():
            self._next_id = max(self._next_id, int(stored.id) + 1)
        legs = [(stored.peer, stored.cn, stored.peer_host)]
        legs += [(stored.names.get(d, d), record, stored.device_peer_hosts.get(d, ""))
                 for d, record in stored.devices.items()]
        byes: list[defer.Deferred[Any]] = []
        for who, record, peer_host in legs:
            try:
                dialog = Dialog.from_record(record, seq_margin=RESTART_SEQ_MARGIN)
                byes.append(self.ua.adopt(dialog, peer_host=peer_host).bye())
            except Exception as exc:  # a damaged record must not stop the phone
                log.warning("call %s: cannot end the leg with %s: %s", stored.id, who, exc)
        entry = {"id": stored.id, "peer": stored.peer, "state": "ending (the phone restarted)",
                 "streams": list(stored.streams), "devices": sorted(stored.devices), "sending": False,
                 "rtp_sent": 0, "rtp_received": 0, "video_received": 0}
        self.recovered.append(entry)
        log.warning("call %s with %s was left by a previous run: BYE to it and %d device(s)", stored.id,
                    stored.peer, len(stored.devices))

        def done(_: Any) -> None:
            entry["state"] = "ended (the phone restarted)"
            if self.store is not None:
                self.store.delete(stored.id)

        defer.DeferredList(byes, consumeErrors=True).addCallback(done)

    def persist(self, pc: PhoneCall) -> None:
        """Write the call's legs and layout (before what depends on them is sent)."""
        if self.store is None or pc.ended:
            return
        record = StoredCall(pc.id, pc.peer, pc.call.dialog.to_record(),
                            local_sdp=pc.local_sdp.to_bytes().decode(errors="replace"),
                            remote_sdp=pc.cn_sdp.to_bytes().decode(errors="replace"),
                            devices={d: c.dialog.to_record() for d, c in pc.device_calls.items()},
                            names=dict(pc.names), streams=tuple(pc.describe()["streams"]),
                            layout=tuple(_location_record(x) for x in pc.layout),
                            device_sdps={d: ((c.local_sdp or b"").decode(errors="replace"),
                                             (c.remote_sdp or b"").decode(errors="replace"))
                                         for d, c in pc.device_calls.items()},
                            transcoder=pc.transcoder.to_record() if pc.transcoder is not None else {},
                            peer_host=pc.call.peer_host,
                            device_peer_hosts={d: c.peer_host for d, c in pc.device_calls.items()})
        try:
            self.store.put(record)
        except sqlite3.Error as exc:
            log.warning("call %s: cannot write %s: %s", pc.id, self.store.path, exc)

    def _forget_stored(self, pc: PhoneCall) -> None:
        if self.store is None:
            return
        try:
            self.store.delete(pc.id)
        except sqlite3.Error as exc:
            log.warning("call %s: cannot remove it from %s: %s", pc.id, self.store.path, exc)

    # Registration ---------------------------------------------------------------------------------

    @property
    def aor(self) -> URI:
        """``sip:USER@REGISTRAR-HOST``: the address of record we register."""
        registrar = URI.parse(self.config.identity.registrar)
        return URI(registrar.scheme, user=self.config.identity.user, host=registrar.host)

    def _register(self) -> None:
        d = self.ua.register(self.config.identity.registrar, aor=self.aor,
                             on_change=self._registration_changed)
        d.addErrback(lambda _: None)  # reported by _registration_changed; the core keeps trying

    def _registration_changed(self, registration: Registration) -> None:
        self.registration = registration
        state = registration.state
        now = (state, registration.expires)
        if now == self._registration_logged:
            return  # a refresh that changed nothing
        self._registration_logged = now
        where = f"{self.aor} at {registration.registrar}"
        if state == "registered":
            log.info("registered %s for %d s", where, registration.expires or 0)
        elif state == "failed" and registration.last_failure is not None:
            status, reason = registration.last_failure
            log.warning("registration of %s failed: %d %s; next try in %.0f s", where, status, reason,
                        registration.retry_in or 0)
        elif state == "gone":
            log.info("unregistered %s", where)

    @defer.inlineCallbacks
    def _unregister(self) -> Any:
        for registration in self.ua.registrations:
            waiting = registration.unregister()
            waiting.addTimeout(STOP_WAIT, self.reactor)
            try:
                yield waiting
            except defer.TimeoutError:
                log.info("stopping without the registrar's answer to our un-REGISTER")

    def status(self) -> str:
        n = len(self.calls)
        egress = f"; {self.egress.monitor.status()}" if self.egress is not None else ""
        return f"{n} call{'s' if n != 1 else ''}{egress}"

    # Media ----------------------------------------------------------------------------------------

    def _capabilities(self) -> bytes:
        return self._local_sdp(0, _origin(self.address)).to_bytes()

    def _local_caps(self) -> LocalCapabilities:
        audio = MediaCapability("audio", (*(Codec(c.name, c.clock_rate, c.channels, c.fmtp)
                                            for c in self.codecs), TELEPHONE_EVENT))
        video = MediaCapability("video", VIDEO_CODECS, Direction.RECVONLY)
        return LocalCapabilities((audio, video))

    def _local_sdp(self, port: int, origin: Origin, address: str | None = None) -> SessionDescription:
        pts = " ".join(str(_payload_type(c)) for c in self.codecs)
        rtpmaps = "".join(f"a=rtpmap:{_payload_type(c)} {c.rtpmap}\r\n"
                          + (f"a=fmtp:{_payload_type(c)} {c.fmtp}\r\n" if c.fmtp else "")
                          for c in self.codecs)
        # RFC 4733 §7.1.1: telephone-event on a dynamic payload type, so `sipmob dtmf` can send events.
        rtpmaps += (f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000\r\n"
                    f"a=fmtp:{TELEPHONE_EVENT_PT} 0-15\r\n")
        address = address or self.address
        return parse(f"v=0\r\no={origin}\r\ns=-\r\nc=IN {_addrtype(address)} {address}\r\nt=0 0\r\n"
                     f"m=audio {port} RTP/AVP {pts} {TELEPHONE_EVENT_PT}\r\n{rtpmaps}a=sendrecv\r\n")

    def _source(self, sample_rate: int = 8000) -> AudioSource:
        """What we send, at the codec's rate: the tone made at it, an 8 kHz WAV resampled to it."""
        audio_in = self.config.media.audio_in
        if audio_in == "tone":
            return ToneSource(sample_rate=sample_rate)
        wav = WavSource(audio_in)
        if sample_rate == wav.sample_rate:
            return wav
        from sipmob.media.resampled import Resampled

        return Resampled(wav, sample_rate)

    def audio_index(self, pc: PhoneCall) -> int | None:
        return next((i for i, m in enumerate(pc.local_sdp.media) if m.media == "audio" and m.port), None)

    def start_media(self, pc: PhoneCall) -> None:
        index = self.audio_index(pc)
        if index is None or index >= len(pc.cn_sdp.media) or pc.cn_sdp.media[index].port == 0:
            return
        theirs = pc.cn_sdp.media[index]
        conn = pc.cn_sdp.connection_for(index)
        for pt, codec in codecs_of(theirs):
            ours = next((c for c in self.codecs if c.name.lower() == codec.encoding.lower()), None)
            if ours is not None and conn is not None:
                pc.rtp.start_sending(self._source(ours.clock_rate), ours.fresh(), pt,
                                     (conn.address, theirs.port))
                stated = theirs.rtcp  # RFC 3605: RTCP where a=rtcp says, else RTP's port + 1
                if stated is not None:
                    where = stated.connection.host if stated.connection is not None else conn.host
                    pc.rtp.set_rtcp_destination((where, stated.port))
                return
        log.warning("call %s: no common audio codec with %s", pc.id, pc.peer)

    def _new_rtp(self, video: bool = False, address: str | None = None) -> Any:
        """An RTP endpoint on `address` (a call's egress; default the phone's own address)."""
        from sipmob.service.rtp import RtpEndpoint

        address = address or self.address
        clock_rate = 90000 if video else 8000
        rtcp = not video  # RFC 3550 reports for the call's audio, on the odd port above its RTP
        first = self.config.listen.rtp_port
        if not first:
            return RtpEndpoint(self.reactor, (address, 0), clock_rate=clock_rate, rtcp=rtcp)
        # RTP on even ports, RTCP's the odd one above (RFC 3550 §11): the first free pair from ``first``.
        for port in range(first - first % 2, min(first + 2000, 65534), 2):
            try:
                return RtpEndpoint(self.reactor, (address, port), clock_rate=clock_rate, rtcp=rtcp)
            except CannotListenError:
                continue
        raise CannotListenError(address, first, "no free RTP port")

    def _add_call(self, call: Call, peer: str, oa: OfferAnswerState, rtp: Any,
                  video_rtp: Any = None, cid: str | None = None, source: str = "") -> PhoneCall:
        if cid is None:
            cid = self.new_call_id()
        assert oa.local is not None and oa.remote is not None
        ours, theirs = (oa.local, oa.remote)
        pc = PhoneCall(cid, peer, call, oa, theirs, ours, rtp, initial_layout(theirs), video_rtp=video_rtp,
                       source=source)
        if self.config.media.record:
            path = Path(self.config.media.record) / f"call-{cid}.wav"
            pc.recorder = self._recorder(path, rtp, oa)
        log.info("call %s with %s established", cid, peer)
        self._track(pc, play=True)
        self.controls.established(pc)
        return pc

    def _recorder(self, path: Path, rtp: Any, oa: OfferAnswerState) -> WavRecorder:
        """A WAV of what the CN sends, decoded: at 48 kHz when the codec agreed (the first of
        the CN's that we have, as `start_media` sends) is Opus, whose RTP clock the recorder
        places packets by; else at 8 kHz, G.711 by its static numbers."""
        def audio(sdp: SessionDescription | None) -> Any:
            return next((m for m in sdp.media if m.media == "audio" and m.port), None) if sdp else None

        ours, theirs = audio(oa.local), audio(oa.remote)
        agreed = next((c for _, c in codecs_of(theirs) if not c.auxiliary), None) if theirs else None
        opus = next((c for c in self.codecs if c.factory is not None), None)
        if agreed is not None and opus is not None and ours is not None and agreed.encoding.lower() == "opus":
            # the numbers we receive with are those of our own description (RFC 3264 §5.1)
            pts = [pt for pt, c in codecs_of(ours) if c.encoding.lower() == "opus"]
            rtp.clock_rate = opus.clock_rate  # RTCP's jitter is in timestamp units
            recorder = WavRecorder(path, sample_rate=opus.clock_rate)
            rtp.attach_recorder(recorder, dict.fromkeys(pts, opus.fresh()))
            return recorder
        recorder = WavRecorder(path)
        rtp.attach_recorder(recorder, {c.static_payload_type: c for c in self.codecs
                                       if c.static_payload_type is not None})
        return recorder

    def new_call_id(self) -> str:
        cid = str(self._next_id)
        self._next_id += 1
        return cid

    def end_call(self, pc: PhoneCall, reason: str, linger: bool = False) -> None:
        """Forget a call whose BYEs have been sent, and announce it; with `linger`, its RTP socket
        still takes packets for `MEDIA_LINGER`."""
        self._ended(pc, linger)
        self.controls.ended(pc, reason)

    def _track(self, pc: PhoneCall, *, play: bool, restored: bool = False) -> None:
        """A call is ours from now on: its end heard, our audio started if it `play`s here, its
        record written, its media watched. A `restored` call (from the state file) whose egress
        went while we were not running is moved at once."""
        self.calls[pc.id] = pc
        if self.egress is not None:
            self.egress.call_added(pc, restored=restored)
        pc.call.on_terminated(lambda c, reason: self._remote_ended(pc, reason))
        pc.call.on_request("INFO", lambda c, request: self.transcoding.info(pc, None, request))
        self.remote_offers.attach(pc)
        # not from inside the port's own error handling, which a hang-up would close under it
        pc.rtp.on_unreachable = lambda destination: self.reactor.callLater(0, self._check_unreachable, pc)
        if play:
            self.start_media(pc)
        self.persist(pc)
        self._watch_media()

    def _remote_ended(self, pc: PhoneCall, reason: str) -> None:
        if self.calls.get(pc.id) is not pc:
            return
        log.info("call %s with %s ended (%s)", pc.id, pc.peer, reason)
        for device, call in list(pc.device_calls.items()):
            call.bye().addErrback(lambda f, d=device: log.warning("BYE to %s failed", d))
        pc.device_calls.clear()
        self.end_call(pc, reason, linger=True)

    def _ended(self, pc: PhoneCall, linger: bool = False) -> None:
        self.calls.pop(pc.id, None)
        if pc.ended:  # the BYE we send on stop ends the call a second time, through on_terminated
            return
        pc.ended = True
        self._forget_stored(pc)
        if self.egress is not None:
            self.egress.call_ended(pc)
        pc.rtp.stop_sending()
        if linger:
            # the other party's media thread may send a packet or two after its BYE (PJSIP does,
            # on a busy machine, when an INVITE with Replaces moved the call): take them in rather
            # than answer with ICMP, since the place the media moved to may not have had them
            self._lingering[id(pc)] = (pc, self.reactor.callLater(MEDIA_LINGER, self._close_media, pc))
        else:
            self._close_media(pc)

    def _close_lingering(self) -> None:
        for ended, _ in list(self._lingering.values()):
            self._close_media(ended)

    def _close_media(self, pc: PhoneCall) -> None:
        _, lingering = self._lingering.pop(id(pc), (pc, None))
        if lingering is not None and lingering.active():
            lingering.cancel()
        if pc.recorder is not None:
            pc.rtp.detach_recorder()
            pc.recorder.close()
        pc.rtp.close()
        if pc.video_rtp is not None:
            pc.video_rtp.close()

    # Media timeout --------------------------------------------------------------------------------

    def _watch_media(self) -> None:
        timeout = self.config.calls.media_timeout
        if timeout <= 0 or (self._media_watch is not None and self._media_watch.running):
            return
        self._media_watch = task.LoopingCall(self._check_media)
        self._media_watch.clock = self.reactor
        self._media_watch.start(max(0.5, min(5.0, timeout / 4)), now=False)

    def _check_media(self) -> None:
        """End with BYE every call whose other party has sent nothing for ``media_timeout`` while
        we play it (RTP timeout as PBXs have it). A call on hold or whose peer says it does not
        send (recvonly, inactive), one whose audio is on devices, and one being moved are left alone:
        their silence is legitimate."""
        timeout = self.config.calls.media_timeout
        if not self.calls or timeout <= 0:
            if self._media_watch is not None and self._media_watch.running:
                self._media_watch.stop()
            return
        for pc in list(self.calls.values()):
            if pc.busy or not pc.rtp.sending or pc.rtp.sending_since is None:
                continue
            index = self.audio_index(pc)
            if index is None or index >= len(pc.cn_sdp.media):
                continue
            if pc.cn_sdp.direction(index) not in (Direction.SENDRECV, Direction.SENDONLY):
                continue
            if self._check_unreachable(pc):
                continue
            heard = max(pc.rtp.last_heard or 0.0, pc.rtp.sending_since)
            silence = time.monotonic() - heard
            if silence >= timeout:
                log.warning("call %s with %s: no media from it for %.0f s: hanging up", pc.id, pc.peer,
                            silence)
                self.hang_up(pc)

    def _check_unreachable(self, pc: PhoneCall) -> bool:
        """End the call if ICMP has said for `UNREACHABLE_GRACE` that our audio's destination is
        unreachable (and nothing came from it meanwhile). True when it did."""
        since = pc.rtp.unreachable_since
        if pc.ended or pc.busy or since is None or not pc.rtp.sending:
            return False
        if time.monotonic() - since < UNREACHABLE_GRACE:
            return False
        destination = pc.rtp.destination
        log.warning("call %s with %s: %s:%d is unreachable (ICMP): hanging up", pc.id, pc.peer,
                    *(destination or ("?", 0)))
        self.hang_up(pc)
        return True

    def hang_up(self, pc: PhoneCall) -> None:
        """BYE to the CN and to every device of the call, and forget it."""
        for device, call in list(pc.device_calls.items()):
            call.bye().addErrback(lambda f, d=device: log.warning("BYE to %s failed", d))
        pc.device_calls.clear()
        pc.call.bye().addErrback(lambda f: log.warning("BYE to %s failed", pc.peer))
        self._ended(pc)

    # Calls ----------------------------------------------------------------------------------------

    def _incoming(self, incoming: IncomingCall) -> None:
        # An INVITE with Replaces got here only if the core's policy found it authorised by the
        # replaced call's party (RFC 3891 §6, sipmob.sip.policy): anyone else had 403 already.
        if incoming.offer is None:
            incoming.reject(488)
            return
        if not self.config.calls.auto_answer:
            if uas_wants_reliable(incoming.request.headers)[1] and "PRACK" in ALLOW:
                self._answer_early(incoming)
            self.controls.ring(incoming, self.new_call_id())  # `sipmob answer` or `reject`
            return
        self.accept_incoming(incoming).addErrback(lambda _: None)

    def _answer_offer(self, incoming: IncomingCall) -> tuple[Any, Any, OfferAnswerState, SessionDescription]:
        """Our answer to an incoming INVITE's offer, with the media sockets it names made: (audio
        RTP, video RTP or None, the call's offer/answer state, the stamped answer). An unusable offer
        raises `SDPParseError` or `OfferAnswerError` with the sockets closed again."""
        rtp = self._new_rtp()
        video_rtp = None
        oa = OfferAnswerState(_origin(self.address))
        try:
            offer = parse(incoming.offer or b"")
            ports = {"audio": rtp.port}
            if any(m.media == "video" and m.port for m in offer.media):
                video_rtp = self._new_rtp(video=True)
                ports["video"] = video_rtp.port
            oa.receive_offer(offer)
            ours = own_fmtp(answer(offer, self._local_caps(), origin=oa.origin,
                                   connection_address=self.address, ports=ports), self.codecs)
            stamped, _ = oa.create_answer(ours)
        except (SDPParseError, OfferAnswerError):
            self._close(rtp, video_rtp)
            raise
        return rtp, video_rtp, oa, stamped

    def _answer_early(self, incoming: IncomingCall) -> None:
        """A caller that requires 100rel gets our answer in the reliable 180 (RFC 3262 §5), so that
        it may offer again while we ring (`RemoteOffers.answer_early`); the media is made now and
        kept for the 200. Only one that requires it: a caller that sees an answer in a 180 takes it
        for early media (RFC 3960) and stops its own ringback, and we send none, so one that only
        supports 100rel rings as before. An unusable offer is left for the answer to refuse."""
        try:
            rtp, video_rtp, oa, stamped = self._answer_offer(incoming)
        except (SDPParseError, OfferAnswerError):
            return
        self._early[incoming.handle] = (rtp, video_rtp, oa)

        def unanswered() -> None:
            early = self._early.pop(incoming.handle, None)
            if early is not None:
                self._close(early[0], early[1])

        incoming.answer_early(stamped.to_bytes(),
                              lambda inc, request: self.remote_offers.answer_early(oa, request), unanswered)

    def accept_incoming(self, incoming: IncomingCall, cid: str | None = None) -> defer.Deferred[Any]:
        """Answer an incoming call; fires with its `PhoneCall` once ACKed, errback `CommandError` when
        its offer is unusable (488 sent) or `CallFailed` when the caller gave up first."""
        early = self._early.pop(incoming.handle, None)
        if early is not None:
            # our answer went in the reliable 180, perhaps answered again since: the 200 carries the last
            rtp, video_rtp, oa = early
            assert oa.local is not None
            stamped = oa.local
        else:
            try:
                rtp, video_rtp, oa, stamped = self._answer_offer(incoming)
            except (SDPParseError, OfferAnswerError) as exc:
                log.warning("incoming call refused: %s", exc)
                incoming.reject(488)
                return defer.fail(CommandError(f"incoming call refused: {exc}"))
        source = incoming.source.host if incoming.source is not None else ""
        self._answering += 1
        self._answering_from[source] += 1

        def answered(result: Any) -> Any:
            self._answering -= 1
            self._answering_from[source] -= 1
            if not self._answering_from[source]:
                del self._answering_from[source]
            return result

        def failed(failure: Any) -> Any:
            self._close(rtp, video_rtp)
            return failure

        d = incoming.accept(stamped.to_bytes())
        def established(call: Call) -> PhoneCall:
            pc = self._add_call(call, str(call.dialog.remote_uri.uri), oa, rtp, video_rtp, cid, source=source)
            return pc

        d.addBoth(answered)
        d.addCallbacks(established, failed)
        return d

    @staticmethod
    def _close(*endpoints: Any) -> None:
        for endpoint in endpoints:
            if endpoint is not None:
                endpoint.close()

    @property
    def ua_aor(self) -> URI:
        """The URI in our From (the one a CN knows us by)."""
        assert self.ua.aor is not None
        return self.ua.aor

    def _on_refer(self, incoming: IncomingRequest) -> None:
        """A REFER outside a dialog: a device handing a call back to us (SH mode, Fig. 5), else
        one for our device role; anyone else gets 403."""
        what = parse_refer(incoming)
        if self.handoff.on_refer(incoming, what):
            return
        if self.device is None:
            raise SIPError(403, "Not a device")
        self.device.on_refer(incoming, what)

    def renumber(self, new: str, old: str) -> None:
        """Give a call an earlier number back (a call retrieved after a handoff)."""
        pc = self.calls.pop(new, None)
        if pc is not None:
            pc.id = old
            self.calls[old] = pc

    @defer.inlineCallbacks
    def call(self, uri: str) -> Any:
        pc = yield self.place_call(uri)
        return f"call {pc.id} with {uri} established"

    @defer.inlineCallbacks
    def place_call(self, uri: str, headers: Sequence[tuple[str, str]] = ()) -> Any:
        """INVITE `uri` (with `headers`, such as Replaces and Referred-By); Deferred[PhoneCall].
        With an egress list, the call's SIP and RTP use the egress the policy picks for it; when
        that egress fails while the call rings, `PhoneEgress` moves it (an UPDATE in the early
        dialog, or CANCEL, and the INVITE again from here with the new egress's address)."""
        from sipmob.mn.egress import Ringing

        route = self.egress.route() if self.egress is not None else None
        address = route.address if route is not None else self.address
        local = route.local if route is not None else None
        try:
            while True:
                rtp = self._new_rtp(address=address)
                oa = OfferAnswerState(_origin(address))
                offer = oa.create_offer(self._local_sdp(rtp.port, oa.origin, address))
                ringing = Ringing(route, address, oa, rtp) if route is not None else None
                answered_by: dict[str, Any] = {}

                def early_answer(response: Response, oa: OfferAnswerState = oa,
                                 answered_by: dict[str, Any] = answered_by, ringing: Any = ringing) -> None:
                    # RFC 3262 §5: the answer in a reliable 18x completes our offer's exchange, after
                    # which the callee may offer again before its 2xx (UPDATE, answered below)
                    if response.body and rseq_of(response) is not None and not answered_by \
                            and oa.pending is Pending.LOCAL_OFFER:
                        before = copy.copy(oa)
                        try:
                            oa.receive_answer(parse(response.body))
                        except (SDPParseError, OfferAnswerError) as exc:
                            log.info("call to %s: unusable answer in its %d (%s)", uri, response.status, exc)
                        else:
                            answered_by.update(tag=response.to.tag, before=before)
                            if ringing is not None:
                                ringing.answered_early = True

                def sent(handle: int, ringing: Any = ringing) -> None:
                    if ringing is not None:
                        ringing.handle = handle

                invite = self.ua.invite(uri, offer.to_bytes(), headers=headers, local=local,
                                        on_provisional=early_answer, on_sent=sent,
                                        on_early_offer=lambda request, oa=oa: self.remote_offers.answer_early(
                                            oa, request))
                if ringing is not None:
                    ringing.invite = invite
                    self.egress.ringing_started(ringing)
                try:
                    call = yield invite
                    if ringing is not None and ringing.updating is not None:
                        yield ringing.updating  # its answer first: the 2xx only repeats an older one
                    if ringing is not None:
                        rtp = ringing.rtp  # an UPDATE while it rang put it elsewhere
                    if answered_by and call.dialog.remote_tag != answered_by["tag"]:
                        oa = answered_by["before"]  # another fork answered: its answer is the one
                    if oa.pending is Pending.LOCAL_OFFER:  # else answered early; a 2xx's copy is no answer
                        oa.receive_answer(parse(call.remote_sdp or b""))
                except defer.CancelledError:
                    (ringing.rtp if ringing is not None else rtp).close()
                    if ringing is None or ringing.again is None:
                        raise
                    address, local = ringing.again  # CANCELled to ring again from another egress
                    continue
                except CallFailed as exc:
                    (ringing.rtp if ringing is not None else rtp).close()
                    raise CommandError(f"call to {uri} failed: {exc.status} {exc.reason}") from None
                except (SDPParseError, OfferAnswerError) as exc:
                    (ringing.rtp if ringing is not None else rtp).close()
                    raise CommandError(f"call to {uri}: unusable answer: {exc}") from None
                finally:
                    if ringing is not None:
                        self.egress.ringing_ended(ringing)
                break
        finally:
            if route is not None:
                self.egress.route_done(route)
        return self._add_call(call, uri, oa, rtp)

    # Mobility -------------------------------------------------------------------------------------

    def _pc(self, args: Mapping[str, Any]) -> PhoneCall:
        cid = str(args.get("call", ""))
        if cid not in self.calls:
            raise CommandError(f"no call {cid!r} (calls: {', '.join(self.calls) or 'none'})")
        pc = self.calls[cid]
        if pc.busy:
            raise CommandError(f"call {cid} is being moved already")
        return pc

    @defer.inlineCallbacks
    def _devices(self, names: Sequence[str]) -> Any:
        found = yield self._found(names)
        return [f.device() for f in found]

    @defer.inlineCallbacks
    def _found(self, names: Sequence[str]) -> Any:
        try:
            d = discovery.discover(self.slp)
            d.addTimeout(self.config.slp.timeout, self.reactor)
            found = yield d
        except Exception as exc:
            raise CommandError(f"cannot find devices: no answer from the DA ({exc})") from None
        out: list[discovery.Found] = []
        for name in names:
            try:
                out.append(discovery.resolve(found, name))
            except LookupError as exc:
                raise CommandError(str(exc)) from None
        return out

    @defer.inlineCallbacks
    def _cn_capabilities(self, pc: PhoneCall) -> Any:
        """§6.1: the CN's codecs from its OPTIONS answer; None when it gives none."""
        try:
            # To the CN's Contact (the dialog's remote target): its AOR may be a proxy's.
            response = yield self.ua.options(pc.call.dialog.remote_target,
                                             timeout=self.config.calls.options_timeout)
        except Exception as exc:
            log.info("call %s: OPTIONS to %s failed (%s); using its current description", pc.id, pc.peer, exc)
            return None
        if response.status >= 300 or not response.body:
            return None
        try:
            return parse(response.body)
        except SDPParseError:
            return None

    @defer.inlineCallbacks
    def _run(self, pc: PhoneCall, make_plan: Any, moved: Any = None, first: Any = None) -> Any:
        """Plan and carry out one action. When a stream has no codec in common with its device,
        ``moved(state, gap)`` (the m-lines the action moves) lets it go through a transcoder instead
        of being refused; ``first(state, caps)``, when given, plans the rest of the action, which is
        carried out before the transcoder is invoked (a split whose audio needs one: the video
        split is planned from the CN's description as it is now, before the CN is re-INVITEd)."""
        pc.busy = True
        done = ""
        try:
            caps = yield self._cn_capabilities(pc)
            state = self._state_for_planning(pc, caps)
            try:
                plan: Plan = make_plan(state, caps)
            except NoCommonCodec as gap:
                if moved is None:
                    raise CommandError(str(gap)) from None
                indices = moved(state, gap)
                if first is not None:
                    try:
                        rest = first(state, caps)
                    except PlanError as exc:
                        raise CommandError(str(exc)) from None
                    done = yield self._carry_out(pc, rest)
                try:
                    message = yield self.transcoding.transfer(pc, gap, caps, indices,
                                                              "split" if first is not None else "transfer")
                except CommandError as exc:
                    raise CommandError(f"{done}; but {exc}" if done else str(exc)) from None
                if done:
                    assert pc.transcoder is not None
                    via = pc.transcoder.summary
                    return f"call {pc.id}: {where(pc.state())} (audio via transcoder: {via})"
                return message
            except PlanError as exc:
                raise CommandError(str(exc)) from None
            message = yield self._carry_out(pc, plan)
            return message
        finally:
            pc.busy = False

    @defer.inlineCallbacks
    def _carry_out(self, pc: PhoneCall, plan: Plan) -> Any:
        pc.names.update(plan.call.names)
        log.info("call %s: %s %s", pc.id, plan.action, [type(s).__name__ for s in plan.steps])
        outcome = yield execute(plan, _CallControl(self, pc), self.reactor,
                                device_timeout=self.config.calls.device_timeout)
        log.info("%s", outcome.message)
        if not outcome.ok:
            raise CommandError(outcome.message)
        pc.layout = outcome.layout
        pc.device_sdps = dict(outcome.device_sdps)
        pc.cn_sdp = outcome.cn_sdp
        released = self.transcoding.release(pc)
        self.persist(pc)
        return outcome.message + released

    def _state_for_planning(self, pc: PhoneCall, caps: SessionDescription | None) -> CallState:
        state = pc.state()
        if pc.transcoder is not None and pc.transcoder.index < len(state.cn_sdp.media):
            # The CN's description names the transcoder's codec only: offer devices all it takes.
            state = dataclasses.replace(state, cn_sdp=widen(state.cn_sdp, pc.transcoder.index, caps))
        return state

    @defer.inlineCallbacks
    def transfer(self, args: Mapping[str, Any]) -> Any:
        pc = self._pc(args)
        found = yield self._found([str(n) for n in args.get("to", [])])
        modes = {choose_mode(args.get("mode"), self.config.calls.mode, f) for f in found}
        if Mode.HANDOFF in modes:
            if len(found) != 1 or args.get("media", "all") != "all":
                raise CommandError("a handoff moves the whole call to one device (use --mode mnc)")
            result = yield self.handoff.transfer(pc, found[0])
            return result
        devices = [f.device() for f in found]
        media: MediaChoice = args.get("media", "all")
        grace = self.config.calls.grace_period
        result = yield self._run(pc, lambda state, caps: plan_transfer(
            state, devices, media, grace=grace, cn_capabilities=caps),
            lambda state, gap: _moved(state, media))
        return result

    @defer.inlineCallbacks
    def split(self, args: Mapping[str, Any]) -> Any:
        pc = self._pc(args)
        names = [str(args["video_out"]), str(args["video_in"])]
        names += [str(args["audio"])] if args.get("audio") else []
        found = yield self._devices(names)
        grace = self.config.calls.grace_period
        # Audio to a device sharing no codec with the CN: the video split first, then the audio
        # through a transcoder.
        result = yield self._run(pc, lambda state, caps: plan_split(
            state, found[0], found[1], found[2] if len(found) > 2 else None, grace=grace,
            cn_capabilities=caps), lambda state, gap: [gap.index] if gap.media == "audio" else [],
            lambda state, caps: plan_split(state, found[0], found[1], None, grace=grace,
                                           cn_capabilities=caps))
        return result

    def retrieve(self, args: Mapping[str, Any]) -> Any:
        pc = self._pc(args)
        media: MediaChoice = args.get("media", "all")
        return self._run(pc, lambda state, caps: plan_retrieve(state, media))

    def handle(self, command: str, args: Mapping[str, Any]) -> Any:
        """The control socket's requests."""
        if command == "call":
            return self.call(str(args.get("uri", "")))
        if command == "calls":
            return self.controls.calls() + self.handoff.describe() + list(self.recovered)
        if command in CALL_COMMANDS:
            return self.controls.handle(command, args)
        if command == "transfer":
            return self.transfer(args)
        if command == "split":
            return self.split(args)
        if command == "retrieve":
            if str(args.get("call", "")) in self.handoff.handed_off:
                return self.handoff.retrieve(args)
            return self.retrieve(args)
        if command == "egress":
            if self.egress is None:
                raise CommandError("no egress list: set [listen] egress to an egress.toml")
            return self.egress.rows()
        raise CommandError(f"unknown command {command!r}")


def _moved(state: CallState, media: MediaChoice) -> list[int]:
    """The m-lines a transfer of ``media`` moves (the planner's choice, `mobility._indices`)."""
    return [i for i, m in enumerate(state.cn_sdp.media)
            if state.layout[i] is not None and m.port != 0 and (media == "all" or m.media == media)]


def _location_record(location: Any) -> Any:
    if isinstance(location, DuplexSplit):
        return {"out": location.output_device, "in": location.input_device}
    return location


def _location(record: Any) -> Any:
    if record is None or isinstance(record, str):
        return record
    if isinstance(record, dict) and isinstance(record.get("out"), str) and isinstance(record.get("in"), str):
        return DuplexSplit(record["out"], record["in"])
    raise ValueError(f"not a media location: {record!r}")


OPUS_PT = 111  # dynamic (RFC 3551 §3); the number the transcoder's invocation uses for Opus too


def _payload_type(codec: media_codecs.Codec) -> int:
    return codec.static_payload_type if codec.static_payload_type is not None else OPUS_PT


def _codecs(names: list[str]) -> tuple[media_codecs.Codec, ...]:
    """The configured codecs we can run here: Opus at 48 kHz (RFC 7587) where libopus is
    installed, else left out of what we offer (said once in the log); G.711 at 8 kHz."""
    out = []
    for name in names:
        try:
            out.append(media_codecs.lookup(name, media_codecs.OPUS_RATE if name.lower() == "opus" else 8000))
        except media_codecs.UnknownCodec:
            log.warning("not offering %s: libopus0 or python3-numpy is not installed", name)
    return tuple(out)


def _agreed(ours: SessionDescription, theirs: SessionDescription) -> OfferAnswerState:
    """An offer/answer state that has agreed on `ours` and `theirs` (a call taken back after a
    restart), so the next offer's ``o=`` version follows on from ours (RFC 3264 §8)."""
    oa = OfferAnswerState(ours.origin)
    oa.create_offer(ours)
    oa.receive_answer(theirs)
    return oa


def _add_arguments(parser: Any) -> None:
    parser.add_argument("--control", metavar="PATH", help="the control socket (overrides [control] path)")
    parser.add_argument("--listen", metavar="HOST:PORT", help="SIP address (overrides [listen])")
    parser.add_argument("--user", metavar="NAME", help="our SIP user (overrides [identity] user)")
    parser.add_argument("--auto-answer", action="store_true", default=None,
                        help="answer incoming calls at once (overrides [calls] auto_answer)")
    parser.add_argument("--audio-in", metavar="FILE", help='what we send: "tone" or an 8 kHz mono WAV '
                                                          "(overrides [media] audio_in)")
    parser.add_argument("--record", metavar="FILE", help="record what we receive (overrides [media] record)")
    parser.add_argument("--da", metavar="HOST[:PORT]", help="the SLP Directory Agent (overrides [slp] da)")


def _override(config: MnConfig, args: Any) -> MnConfig:
    if args.control:
        config = dataclasses.replace(config, control=dataclasses.replace(config.control, path=args.control))
    if args.listen:
        try:
            host, port = split_host_port(args.listen)
        except ValueError as exc:
            raise ValueError(f"--listen {exc}") from None
        listen = dataclasses.replace(config.listen, address=host, port=port)
        config = dataclasses.replace(config, listen=listen)
    if args.user:
        config = dataclasses.replace(config, identity=dataclasses.replace(config.identity, user=args.user))
    if args.auto_answer:
        config = dataclasses.replace(config, calls=dataclasses.replace(config.calls, auto_answer=True))
    if args.audio_in or args.record:
        config = dataclasses.replace(config, media=dataclasses.replace(
            config.media, audio_in=args.audio_in or config.media.audio_in,
            record=args.record or config.media.record))
    if args.da:
        config = dataclasses.replace(config, slp=dataclasses.replace(config.slp, da=args.da))
    # The flags bypass the file's checks: check the result the same way.
    problems = _check(config)
    if problems:
        raise ValueError("; ".join(problems))
    return config


def _check(config: MnConfig) -> list[str]:
    from sipmob.service.config import ConfigError, parse_config

    try:
        parse_config(MnConfig, dataclasses.asdict(config), "command line")
    except ConfigError as exc:
        return [f"{p.key}: {p.message}" for p in exc.problems]
    return []


SPEC = daemon.DaemonSpec(
    name="mn", config_type=MnConfig, build=lambda config, runtime: Phone(config, runtime.reactor),
    description="sipmob phone: a SIP phone that moves its calls to the devices of the home",
    add_arguments=_add_arguments, override=_override, prog="sipmob phone")


def main(argv: Sequence[str] | None = None) -> int:
    daemon.keep_tls_out()
    return daemon.run(SPEC, argv)


if __name__ == "__main__":
    sys.exit(main())
