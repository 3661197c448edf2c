"""Advertising the SA proxy's devices with mDNS-SD (RFC 6762/6763) through python3-zeroconf 0.47.

Each device that is up and has an IP literal in its URI becomes ``<name>._sip._udp.local.`` whose SRV
points at ``<id>.sipmob.local.`` with the device's own address (so Bonjour clients dial the device,
not the gateway) and whose TXT record carries ``room``, ``capabilities`` (the SLP ``media`` values),
``name`` and ``uri``. A device that goes down or is removed is withdrawn (goodbye, TTL 0).

python-zeroconf runs its own asyncio loop in a thread of its own; every call here hands the work to
that loop and returns at once, so the reactor never waits for mDNS announcements.

Not here: deciding which devices are up (`sipmob.saproxy.probe`), SLP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sipmob.saproxy.devices import Device
from sipmob.slp.attrs import Attribute

log = logging.getLogger("sipmob.saproxy")

SERVICE_TYPE = "_sip._udp.local."


def instance_label(device: Device) -> str:
    """The instance name (RFC 6763 §4.1.1: UTF-8, at most 63 bytes, dots allowed but avoided)."""
    label = (device.spec.name or device.id).replace(".", " ").strip() or device.id
    while len(label.encode()) > 63:
        label = label[:-1]
    return label


def txt_properties(device: Device, attrs: Mapping[str, Attribute]) -> dict[str, str]:
    """The TXT keys (RFC 6763 §6: short keys, each key=value pair under 255 bytes)."""
    props = {"txtvers": "1", "uri": device.url}
    for key, tag in (("room", "room"), ("name", "name"), ("capabilities", "media")):
        attr = attrs.get(tag)
        if attr is not None and attr.values:
            props[key] = ",".join(str(v) for v in attr.values)[:200]
    return props


def service_info(device: Device, attrs: Mapping[str, Attribute]) -> Any:
    """The zeroconf ServiceInfo of a device, or None when its URI has no IP address to publish."""
    from zeroconf import ServiceInfo

    host = device.uri.host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    server = re.sub(r"[^A-Za-z0-9-]", "-", device.id)[:63] + ".sipmob.local."
    return ServiceInfo(SERVICE_TYPE, f"{instance_label(device)}.{SERVICE_TYPE}",
                       port=device.uri.port or 5060, properties=txt_properties(device, attrs),
                       server=server, parsed_addresses=[host])


class MdnsAdvertiser:
    """The devices currently advertised, by device id."""

    def __init__(self, interfaces: Sequence[str] = ()) -> None:
        from zeroconf import InterfaceChoice, IPVersion, Zeroconf

        choice: Any = list(interfaces) if interfaces else InterfaceChoice.All
        self._zc = Zeroconf(interfaces=choice, ip_version=IPVersion.V4Only)
        self._published: dict[str, Any] = {}

    def publish(self, device: Device, attrs: Mapping[str, Attribute]) -> None:
        info = service_info(device, attrs)
        if info is None:
            return
        old = self._published.get(device.id)
        if old is not None and old.name == info.name:
            self._published[device.id] = info
            self._submit(self._zc.async_update_service(info))
            return
        if old is not None:
            self.withdraw(device.id)
        self._published[device.id] = info
        # allow_name_change: two devices with the same name get "name (2)", as Bonjour does
        self._submit(self._zc.async_register_service(info, allow_name_change=True))
        log.info("advertising %s with mDNS as %s", device.url, info.name,
                 extra={"SIPMOB_DEVICE": device.id})

    def withdraw(self, device_id: str) -> None:
        info = self._published.pop(device_id, None)
        if info is not None:
            self._submit(self._zc.async_unregister_service(info))

    @property
    def published(self) -> list[str]:
        return sorted(self._published)

    def close(self) -> None:
        """Say goodbye for every device and stop zeroconf's thread (blocks for its goodbyes)."""
        self._published.clear()
        self._zc.close()

    def _submit(self, coro: Any) -> None:
        loop = self._zc.loop
        assert loop is not None  # zeroconf starts its loop in its constructor
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        future.add_done_callback(_report)


def _report(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning("mDNS advertisement failed: %s", exc)
