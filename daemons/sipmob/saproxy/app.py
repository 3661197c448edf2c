"""The `sipmob-saproxy` application: basic SIP devices registered in SLP while they answer OPTIONS.

Responsible for: the SIP user agent the OPTIONS go through (`UserAgent`, which also answers what
devices send us, allowing OPTIONS only), the `Prober`'s timer, turning probe outcomes and 200
bodies into SLP registrations (`SLPServiceAgent` does the RFC 2608 part: every DA, every scope,
refresh, re-registration after a DA reboot, deregistration on stop), the optional mDNS
advertisement, one log line per change of a device's state and per new problem with what a device
says, the status line, and applying a reloaded device directory.

Not here: the up/down rules and what a 200 means (`sipmob.saproxy.probe`), the device files and the
attribute schema (`sipmob.saproxy.devices`), SIP itself (`sipmob.sip`).
"""

from __future__ import annotations

import json
import logging
import random
import socket
from typing import Any

from twisted.internet import defer

from sipmob.saproxy.config import SaproxyConfig, Settings
from sipmob.saproxy.devices import SERVICE_TYPE, Device
from sipmob.saproxy.probe import (
    Capabilities,
    DeviceState,
    ProbeConfig,
    Prober,
    StateChanged,
    merge,
)
from sipmob.service import slpkeys
from sipmob.service.config import split_host_port
from sipmob.service.daemon import Runtime
from sipmob.service.sipua import SIPError, UserAgent
from sipmob.service.slp import SLPClient, SLPServiceAgent
from sipmob.service.statefile import DebouncedWriter, read_json
from sipmob.service.timers import TimerDriver
from sipmob.sip.message import Response
from sipmob.sip.transaction import TimerConfig
from sipmob.sip.transport import Address
from sipmob.slp.attrs import format_attr_list

log = logging.getLogger("sipmob.saproxy")

STOP_TIMEOUT = 5  # seconds to deregister at stop: RFC 2608 retransmissions at 2 s and 4 s fit in it


def probe_config(config: SaproxyConfig) -> ProbeConfig:
    p = config.probe
    return ProbeConfig(interval=p.interval, timeout=p.timeout, retry=p.retry,
                       down_after=p.down_after, backoff_max=p.backoff_max)


def timer_config(config: SaproxyConfig) -> TimerConfig:
    """Timer F (64*T1, §17.1.2.2) is the probe timeout. T1 is the round-trip estimate (§17.1.1.1):
    4 s / 64 = 62 ms is still sixty times a home LAN's round trip, and keeps the exponential
    back-off of retransmissions the RFC requires."""
    return TimerConfig(t1=config.probe.timeout / 64)


class SaproxyApp:
    def __init__(self, settings: Settings, runtime: Runtime, rng: random.Random | None = None) -> None:
        self.config = settings.config
        self.devices: dict[str, Device] = {d.id: d for d in settings.devices}
        self.runtime = runtime
        self.reactor = runtime.reactor
        self.prober = Prober(probe_config(self.config), rng)
        self.timer = TimerDriver(self.reactor, self.prober.get_timer, self._probe_due)
        self.sip: UserAgent | None = None
        self.sa: SLPServiceAgent | None = None
        self.mdns: Any = None
        self._pending: dict[str, int] = {}  # device id -> the probe in flight (a number)
        self._probes = 0
        self._caps: dict[str, Capabilities] = {}
        self._registered: dict[str, tuple[str, str]] = {}  # device id -> (url, attribute list)
        self._reported: dict[str, set[str]] = {}  # problems already logged, by device
        self._status = ""
        self.writer = DebouncedWriter(self.reactor, self.config.state_file, self._state_bytes)

    # App protocol --------------------------------------------------------------------------------

    def start(self) -> None:
        sip = self.config.sip
        via_host = self._via_host(sip.address)
        self.sip = UserAgent(self.reactor, listen=[(sip.address, sip.port, "udp")], user="saproxy",
                             timers=timer_config(self.config), allow=("OPTIONS",), aor=sip.from_uri,
                             advertise=via_host if via_host != sip.address else None)
        self.sip.start()
        (bound,) = self.sip.addresses
        slp = self.config.slp
        # With a key, our registrations are signed: only we can change them at the DA.
        self._agent_config = slpkeys.signing(slp, log, da_find=slp.da_interval)
        self.sa = SLPServiceAgent(self.reactor, das=[split_host_port(d, 427) for d in slp.das],
                                  scopes=slp.scopes, multicast=slp.multicast, config=self._agent_config)
        self.sa.start()
        self._deregister_stale()
        if self.config.mdns.enabled:
            try:
                from sipmob.saproxy.mdns import MdnsAdvertiser

                self.mdns = MdnsAdvertiser(self.config.mdns.interfaces)
            except (ImportError, OSError) as exc:  # the package is only recommended
                log.error("mDNS advertisement off: %s (it needs python3-zeroconf)", exc)
        now = self.reactor.seconds()
        for device_id in self.devices:
            self.prober.add(device_id, now)
        self.timer.update()
        self._report_status()
        log.info("probing %d devices from %s:%d; DAs %s, scopes %s", len(self.devices), via_host,
                 bound.port, ",".join(slp.das) or "by multicast", ",".join(slp.scopes))

    def reload(self, settings: Settings) -> None:
        new = settings.config
        if (new.sip, new.slp, new.mdns, new.state) != (self.config.sip, self.config.slp, self.config.mdns,
                                                        self.config.state):
            log.warning("[sip], [slp], [mdns] and [state] settings apply at the next restart")
        self.config = new
        self.prober.reconfigure(probe_config(new))
        logging.getLogger().setLevel(new.log.level.upper())
        now = self.reactor.seconds()
        incoming = {d.id: d for d in settings.devices}
        for device_id in [i for i in self.devices if i not in incoming]:
            log.info("device %s removed", device_id, extra={"SIPMOB_DEVICE": device_id})
            self._forget(device_id)
            del self.devices[device_id]
        for device_id, device in incoming.items():
            old = self.devices.get(device_id)
            if old is None:
                log.info("device %s added: %s", device_id, device.url, extra={"SIPMOB_DEVICE": device_id})
                self.devices[device_id] = device
                self.prober.add(device_id, now)
            elif old != device:
                log.info("device %s changed", device_id, extra={"SIPMOB_DEVICE": device_id})
                if old.uri != device.uri:
                    self._forget(device_id)  # a different device: its state starts afresh
                    self.devices[device_id] = device
                    self.prober.add(device_id, now)
                else:
                    self.devices[device_id] = device
                    self._reported.pop(device_id, None)
                    if self.prober.state(device_id) is DeviceState.UP:
                        self._register(device_id)
        self.timer.update()
        self._report_status()

    def stop(self) -> defer.Deferred[Any]:
        self.timer.cancel()
        if self.mdns is not None:
            self.mdns.close()
            self.mdns = None
        waits = []
        if self.sa is not None:
            # Deregisters every device from every DA. Bounded: with a DA that does not answer the
            # agent's stop does not fire, and the registrations then end with their lifetime anyway.
            stopped = self.sa.stop().addTimeout(STOP_TIMEOUT, self.reactor)
            waits.append(stopped.addErrback(self._stop_timed_out))
        if self.sip is not None:
            waits.append(self.sip.stop())
        self._registered.clear()
        self.writer.mark_dirty()
        self.writer.flush()
        return defer.gatherResults(waits)

    def _stop_timed_out(self, failure: Any) -> None:
        failure.trap(defer.TimeoutError, defer.CancelledError)
        log.warning("a DA did not answer the deregistrations within %d s: they end with their lifetime "
                    "(%d s)", STOP_TIMEOUT, self.config.slp.lifetime)

    def status(self) -> str:
        counts = self.prober.counts()
        up, down, unknown = counts[DeviceState.UP], counts[DeviceState.DOWN], counts[DeviceState.UNKNOWN]
        text = f"{up} device{'' if up == 1 else 's'} up, {down} down"
        return text + (f", {unknown} not probed yet" if unknown else "")

    # Probing ---------------------------------------------------------------------------------------

    def _probe_due(self, now: float) -> None:
        sip = self.sip
        assert sip is not None
        contact = [("Contact", str(sip.machine.local_contact)), ("Accept", "application/sdp")]
        for device_id in self.prober.handle_timer(now):
            device = self.devices[device_id]
            self._probes += 1
            probe = self._probes
            try:
                d = sip.request("OPTIONS", device.uri, headers=contact, destination=self._destination(device))
            except Exception as exc:  # a URI the layer cannot send to: as good as no answer
                log.debug("cannot probe %s: %s", device_id, exc)
                self.prober.failed(device_id, f"cannot send OPTIONS: {exc}", now)
                continue
            self._pending[device_id] = probe
            d.addCallbacks(self._answered, self._unanswered, callbackArgs=(device_id, probe),
                           errbackArgs=(device_id, probe))
            log.debug("OPTIONS %s", device.url, extra={"SIPMOB_DEVICE": device_id})
        self._after_probe()

    def _destination(self, device: Device) -> Address:
        if device.direct:
            return Address(device.uri.host.strip("[]"), device.uri.port or 5060, "udp")
        host, port = split_host_port(self.config.sip.outbound_proxy, 5060)
        return Address(host, port, "udp")

    def _answered(self, response: Response, device_id: str, probe: int) -> None:
        if self._pending.get(device_id) != probe or device_id not in self.devices:
            return  # the device was removed or changed meanwhile
        del self._pending[device_id]
        if 200 <= response.status < 300:
            self._learn(device_id, Capabilities.from_response(response))
        self.prober.answered(device_id, self.reactor.seconds(), f"answered OPTIONS with {response.status}")
        self._after_probe()

    def _unanswered(self, failure: Any, device_id: str, probe: int) -> None:
        if self._pending.get(device_id) != probe:
            return
        del self._pending[device_id]
        exc = failure.value
        reason = "no answer to OPTIONS" if isinstance(exc, SIPError) else f"OPTIONS failed: {exc}"
        self.prober.failed(device_id, reason, self.reactor.seconds())
        self._after_probe()

    def _learn(self, device_id: str, caps: Capabilities) -> None:
        self._caps[device_id] = caps
        _, contradictions = merge(self.devices[device_id], caps)
        reported = self._reported.setdefault(device_id, set())
        for problem in [*caps.problems, *contradictions]:
            if problem not in reported:
                reported.add(problem)
                log.warning("device %s: %s", device_id, problem, extra={"SIPMOB_DEVICE": device_id})
        if self.prober.state(device_id) is DeviceState.UP:
            self._register(device_id)  # only sent when the attributes changed

    def _after_probe(self) -> None:
        changed = False
        for event in self.prober.events():
            changed = True
            self._state_changed(event)
        self.timer.update()
        if changed:
            self._report_status()

    def _state_changed(self, event: StateChanged) -> None:
        device = self.devices.get(event.device)
        if device is None:
            return
        if event.new is DeviceState.UP:
            log.info("device %s is up (%s): %s", event.device, device.url, event.reason,
                     extra={"SIPMOB_DEVICE": event.device})
            self._register(event.device)
        else:
            log.info("device %s is down (%s): %s", event.device, device.url, event.reason,
                     extra={"SIPMOB_DEVICE": event.device})
            self._deregister(event.device)

    # SLP and mDNS ---------------------------------------------------------------------------------

    def _register(self, device_id: str) -> None:
        assert self.sa is not None
        device = self.devices[device_id]
        attrs, _ = merge(device, self._caps.get(device_id))
        attr_list = format_attr_list(attrs)
        if self._registered.get(device_id) == (device.url, attr_list):
            return
        previous = self._registered.get(device_id)
        if previous is not None and previous[0] != device.url:
            self.sa.deregister(previous[0])
        self._registered[device_id] = (device.url, attr_list)
        self.writer.mark_dirty()
        self.sa.register(device.url, SERVICE_TYPE, attr_list, self.config.slp.lifetime)
        if self.mdns is not None:
            self.mdns.publish(device, attrs)

    def _deregister(self, device_id: str) -> None:
        previous = self._registered.pop(device_id, None)
        if previous is not None and self.sa is not None:
            self.sa.deregister(previous[0])
            self.writer.mark_dirty()
        if self.mdns is not None:
            self.mdns.withdraw(device_id)

    def _forget(self, device_id: str) -> None:
        self._deregister(device_id)
        self.prober.remove(device_id)
        self._caps.pop(device_id, None)
        self._reported.pop(device_id, None)
        self._pending.pop(device_id, None)

    def _state_bytes(self) -> bytes:
        return json.dumps({"registered": sorted(url for url, _ in self._registered.values())}).encode()

    def _deregister_stale(self) -> None:
        """Deregister what a previous run registered and the device files no longer name: after a
        crash it would otherwise stay in the DA for its whole lifetime."""
        state = read_json(self.config.state_file)
        urls = state.get("registered", []) if isinstance(state, dict) else []
        configured = {d.url for d in self.devices.values()}
        stale = sorted({u for u in urls if isinstance(u, str)} - configured)
        self.writer.mark_dirty()  # the file reflects this run from now on
        if not stale:
            return
        slp = self.config.slp
        client = SLPClient(self.reactor, das=[split_host_port(d, 427) for d in slp.das], scopes=slp.scopes,
                           config=self._agent_config)
        done = []
        for url in stale:
            log.info("deregistering %s, registered by the previous run and no longer configured", url)
            done.append(client.deregister(url).addErrback(
                lambda f, url=url: log.warning("could not deregister %s: %s", url, f.getErrorMessage())))
        defer.DeferredList(done).addBoth(lambda _: client.close())

    def _report_status(self) -> None:
        status = self.status()
        if status != self._status:
            self._status = status
            self.runtime.status_changed(self)

    def _via_host(self, bound: str) -> str:
        """Our address as devices see it, for Via and Contact: the bound one, or when bound to any
        address, the one the kernel would send from towards the first device (nothing is sent)."""
        if bound not in ("0.0.0.0", "::"):
            return bound
        targets = [self._destination(d).host for d in self.devices.values()]
        for target in targets[:1]:
            family = socket.AF_INET6 if ":" in target else socket.AF_INET
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as probe:
                    probe.connect((target, 9))
                    return str(probe.getsockname()[0])
            except OSError:
                pass
        return "127.0.0.1"
