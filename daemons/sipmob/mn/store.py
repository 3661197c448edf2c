"""The phone's calls on disk: a small SQLite file (stdlib ``sqlite3``) that outlives a crash.

Responsible for keeping, for every call ``sipmob phone`` holds, what a restarted phone needs to
end it or take it back (ARCHITECTURE: "Calls are durable where a daemon controls them"): the dialog
with the CN and every device leg (`sipmob.sip.dialog.Dialog.to_record`: Call-ID, tags, CSeqs,
remote target, route set) and where its forming request came from or went to, the session
descriptions, the devices' names and where each stream is.
A record is written (and synced: ``synchronous=FULL``) before the request that depends on it is
sent, and removed when the call ends. Calls handed off to a device (Session Handoff mode,
`sipmob.mn.handoff.HandedOff`) have a table of their own: the phone is no longer in them, but a
restarted phone still lists them and can hang them up. Rows belong to one phone (its Contact
URI), so two phones on one host, or a test's phones on one machine, never end each other's calls.

Not here: when to write (`sipmob.mn.phone`), what a dialog is (`sipmob.sip.dialog`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("sipmob.mn")

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (owner, id)
)
"""
HANDED_OFF_SCHEMA = """
CREATE TABLE IF NOT EXISTS handed_off (
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (owner, id)
)
"""


@dataclasses.dataclass(frozen=True, slots=True)
class StoredCall:
    """One call as the phone wrote it."""

    id: str
    peer: str
    cn: dict[str, Any]  # the CN's dialog (Dialog.to_record)
    local_sdp: str = ""
    remote_sdp: str = ""
    devices: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # URI -> dialog
    names: dict[str, str] = dataclasses.field(default_factory=dict)
    streams: tuple[dict[str, str], ...] = ()  # as `sipmob calls` shows them
    # where each m-line's media is: null (disabled), "mobile-node", a device URI, or
    # {"out": URI, "in": URI} for a stream split by direction
    layout: tuple[Any, ...] = ()
    device_sdps: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)  # URI -> (ours, theirs)
    # the transcoder the audio goes through (`sipmob.mn.transcoding.TranscoderLeg`); its dialog is
    # among `devices`, keyed by its URI
    transcoder: dict[str, Any] = dataclasses.field(default_factory=dict)
    # where each dialog-forming request came from or went to (`sipmob.sip.ua.UACore.peer_host`):
    # the CN's, and each device's by URI; the policy knows a peer behind a NAT by it, not by its
    # Contact. Absent from records written before it was kept: "" (only the Contact then)
    peer_host: str = ""
    device_peer_hosts: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StoredCall:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("cn"), dict):
            raise ValueError("not a stored call")
        return cls(id=str(data["id"]), peer=str(data.get("peer", "")), cn=data["cn"],
                   local_sdp=str(data.get("local_sdp", "")), remote_sdp=str(data.get("remote_sdp", "")),
                   devices={str(k): v for k, v in dict(data.get("devices") or {}).items()},
                   names={str(k): str(v) for k, v in dict(data.get("names") or {}).items()},
                   streams=tuple(dict(s) for s in data.get("streams") or ()),
                   layout=tuple(data.get("layout") or ()),
                   device_sdps={str(k): (str(v[0]), str(v[1]))
                                for k, v in dict(data.get("device_sdps") or {}).items()},
                   transcoder=dict(data.get("transcoder") or {}),
                   peer_host=str(data.get("peer_host") or ""),
                   device_peer_hosts={str(k): str(v)
                                      for k, v in dict(data.get("device_peer_hosts") or {}).items()})


class CallStore:
    """The SQLite file at `path`, holding the calls of the phone whose Contact is `owner`."""

    def __init__(self, path: str | Path, owner: str) -> None:
        self.path = str(path)
        self.owner = owner
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(SCHEMA)
        self._db.execute(HANDED_OFF_SCHEMA)

    def put(self, call: StoredCall) -> None:
        self._db.execute("INSERT OR REPLACE INTO calls (owner, id, record, updated) VALUES (?, ?, ?, ?)",
                         (self.owner, call.id, call.to_json(), time.time()))

    def delete(self, call_id: str) -> None:
        self._db.execute("DELETE FROM calls WHERE owner = ? AND id = ?", (self.owner, call_id))

    def calls(self) -> list[StoredCall]:
        """Our calls as written; a damaged record is logged and dropped."""
        out = []
        rows = self._db.execute("SELECT id, record FROM calls WHERE owner = ? ORDER BY updated",
                                (self.owner,)).fetchall()
        for call_id, record in rows:
            try:
                out.append(StoredCall.from_json(record))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("dropping damaged call record %s in %s: %s", call_id, self.path, exc)
                self.delete(call_id)
        return out

    def put_handed_off(self, call_id: str, record: dict[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO handed_off (owner, id, record, updated) VALUES (?, ?, ?, ?)",
                         (self.owner, call_id, json.dumps(record, separators=(",", ":")), time.time()))

    def delete_handed_off(self, call_id: str) -> None:
        self._db.execute("DELETE FROM handed_off WHERE owner = ? AND id = ?", (self.owner, call_id))

    def handed_off(self) -> list[tuple[str, dict[str, Any]]]:
        """Our handed-off calls as written (id, record); a damaged one is logged and dropped."""
        out = []
        rows = self._db.execute("SELECT id, record FROM handed_off WHERE owner = ? ORDER BY updated",
                                (self.owner,)).fetchall()
        for call_id, record in rows:
            try:
                data = json.loads(record)
                if not isinstance(data, dict):
                    raise ValueError("not a record")
                out.append((str(call_id), data))
            except ValueError as exc:
                log.warning("dropping damaged handed-off call %s in %s: %s", call_id, self.path, exc)
                self.delete_handed_off(call_id)
        return out

    def close(self) -> None:
        self._db.close()
