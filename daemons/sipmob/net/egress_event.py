"""The ``sip-egress`` event package: an Egress List in a NOTIFY body (SIP-NEMO §2.1, §4.5), sans-I/O.

A gateway that SUBSCRIBEs to another with ``Event: sip-egress`` gets, in each NOTIFY, the other's
whole Egress List as ``application/sip-egress+json``::

    {"host": "sip:mn@10.200.1.2:5060",
     "egresses": [{"eface": "wan1", "contact": "10.200.1.2", "status": "ON", "load": 1,
                   "priority": 1, "cost": 0, "rtt_ms": 1.9}, ...]}

The fields are the draft's: Host ID (``host``, the notifier's SIP URI), E-face ID (``eface``),
Contact (the egress's source address, absent while it has none), Status (``ON`` when sessions may
use it), Load (sessions on it); ``priority``, ``cost`` and ``rtt_ms`` (last probe) are ours. A NOTIFY
follows every change of the list. Bodies are bounded (`MAX_BODY`, `MAX_ENTRIES`); anything else is
an `EgressEventError` naming what is wrong.

In SLP the gateway is ``service:sip-egress`` under a URL of its own, `advert_url`
(``service:sip-egress://mn@10.200.1.2:5060``, RFC 2609 §2.1): a phone also registers its SIP URI as
``service:sip-device``, and a DA keeps one registration per URL (RFC 2608 §9.3), so the two must
not share one.

Not here: the subscription dialogs (`sipmob.service.sipua`), who may subscribe (the daemon's
policy), the list itself (`sipmob.net.egress`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

EVENT = "sip-egress"
CONTENT_TYPE = "application/sip-egress+json"
MAX_BODY = 8192
MAX_ENTRIES = 32
SERVICE_TYPE = "service:sip-egress"
_URL_HEAD = SERVICE_TYPE + "://"


class EgressEventError(ValueError):
    """A body that is not an Egress List (the peer's fault)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    eface: str
    contact: str | None
    status: bool
    load: int
    priority: int = 100
    cost: int = 0
    rtt_ms: float | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class EgressListBody:
    host: str
    entries: tuple[Entry, ...]


def advert_url(contact: str) -> str:
    """The ``service:sip-egress`` URL of a gateway whose SIP contact is `contact` (``sip:mn@h:5060``
    -> ``service:sip-egress://mn@h:5060``): the contact's address, in a URL of the egress service's
    own, apart from the same SIP URI registered as another service."""
    _scheme, colon, rest = contact.partition(":")
    if not colon or not rest:
        raise ValueError(f"contact {contact!r} has no scheme")
    return _URL_HEAD + rest


def contact_of(url: str) -> str:
    """The SIP URI a ``service:sip-egress`` URL names (the inverse of `advert_url`); a URL of
    another form (a gateway that registered its SIP URI itself) is returned as it is."""
    if url[: len(_URL_HEAD)].lower() == _URL_HEAD:
        return "sip:" + url[len(_URL_HEAD):]
    return url


def from_rows(host: str, rows: Sequence[Mapping[str, object]]) -> EgressListBody:
    """The body for `sipmob.net.egress.EgressList.rows()`."""
    entries = []
    for row in rows[:MAX_ENTRIES]:
        rtt = row.get("last_rtt")
        address = row.get("address")
        load, priority, cost = row.get("sessions", 0), row.get("priority", 100), row.get("cost", 0)
        entries.append(Entry(str(row["name"]), str(address) if address else None, row.get("status") == "up",
                             load if isinstance(load, int) else 0,
                             priority if isinstance(priority, int) else 100,
                             cost if isinstance(cost, int) else 0,
                             round(rtt * 1000, 1) if isinstance(rtt, float) else None))
    return EgressListBody(host, tuple(entries))


def encode(body: EgressListBody) -> bytes:
    document = {"host": body.host, "egresses": [
        {"eface": e.eface, **({"contact": e.contact} if e.contact else {}),
         "status": "ON" if e.status else "OFF", "load": e.load, "priority": e.priority, "cost": e.cost,
         **({"rtt_ms": e.rtt_ms} if e.rtt_ms is not None else {})}
        for e in body.entries]}
    return json.dumps(document, separators=(",", ":")).encode()


def decode(data: bytes) -> EgressListBody:
    if len(data) > MAX_BODY:
        raise EgressEventError(f"body of {len(data)} bytes, more than {MAX_BODY}")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EgressEventError(f"not JSON: {exc}") from None
    except RecursionError:
        raise EgressEventError("nested too deeply") from None
    if not isinstance(document, dict) or not isinstance(document.get("host"), str):
        raise EgressEventError('needs an object with a "host" string')
    items = document.get("egresses")
    if not isinstance(items, list) or len(items) > MAX_ENTRIES:
        raise EgressEventError(f'"egresses" must be a list of at most {MAX_ENTRIES} entries')
    return EgressListBody(document["host"], tuple(_entry(i, item) for i, item in enumerate(items)))


def _entry(i: int, item: object) -> Entry:
    if not isinstance(item, dict):
        raise EgressEventError(f"egresses[{i}] is not an object")
    eface, contact, status = item.get("eface"), item.get("contact"), item.get("status")
    load, priority, cost, rtt = (item.get("load", 0), item.get("priority", 100), item.get("cost", 0),
                                 item.get("rtt_ms"))
    if not isinstance(eface, str) or not eface:
        raise EgressEventError(f"egresses[{i}].eface must be a name")
    if contact is not None and not isinstance(contact, str):
        raise EgressEventError(f"egresses[{i}].contact must be an address")
    if status not in ("ON", "OFF"):
        raise EgressEventError(f'egresses[{i}].status must be "ON" or "OFF"')
    for name, value in (("load", load), ("priority", priority), ("cost", cost)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise EgressEventError(f"egresses[{i}].{name} must be an integer of 0 or more")
    if rtt is not None and (not isinstance(rtt, int | float) or isinstance(rtt, bool) or rtt < 0):
        raise EgressEventError(f"egresses[{i}].rtt_ms must be a number of 0 or more")
    assert isinstance(load, int) and isinstance(priority, int) and isinstance(cost, int)
    return Entry(eface, contact, status == "ON", load, priority, cost,
                 float(rtt) if rtt is not None else None)
