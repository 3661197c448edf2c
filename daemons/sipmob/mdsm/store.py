"""The calls of `sipmob-mdsm` on disk (SQLite, stdlib `sqlite3`), so that calls outlive the daemon.

Responsible for: one row per call holding everything a restarted daemon needs to answer the next
request in each of its legs: every leg's dialog (Call-ID, tags, URIs, remote target, route set,
CSeq numbers), its current local and remote descriptions and ``o=`` version, and the plan mapping
the CN's m-lines to members (`sipmob.mdsm.plan.Plan`); `dialog_to_dict` and `dialog_from_dict`.
The application saves a call BEFORE sending any message that depends on what changed, and each
saved local CSeq is one ahead of the dialog's (the request about to go out uses it), so a crash
between the write and the send costs a skipped CSeq number, never a reused one (RFC 3261 §12.2.1.1
wants them increasing, not consecutive). WAL journal, one transaction per save: a ``kill -9``
leaves either the old row or the new one.

A second table holds the handoffs still being set up (one row each: the referrer's subscription
dialog, and for every leg we INVITEd either what its first provisional response told us, enough
to CANCEL it, or its dialog once answered), so that a restarted daemon can undo them.

Not here: what the rows mean to the calls (`sipmob.mdsm.app`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sipmob.sip.dialog import Dialog, DialogState
from sipmob.sip.uri import URI, NameAddr

SCHEMA_VERSION = 1


def dialog_to_dict(dialog: Dialog, *, reserve: int = 1) -> dict[str, Any]:
    """A confirmed dialog as JSON-able data, its local CSeq `reserve` ahead (see the module doc)."""
    return {"call_id": dialog.call_id, "local_tag": dialog.local_tag, "remote_tag": dialog.remote_tag,
            "local_uri": str(dialog.local_uri), "remote_uri": str(dialog.remote_uri),
            "remote_target": str(dialog.remote_target), "route_set": [str(r) for r in dialog.route_set],
            "local_seq": dialog.local_seq + reserve, "remote_seq": dialog.remote_seq,
            "is_uac": dialog.is_uac, "local_contact": str(dialog.local_contact), "secure": dialog.secure}


def dialog_from_dict(data: Mapping[str, Any]) -> Dialog:
    return Dialog(call_id=str(data["call_id"]), local_tag=str(data["local_tag"]),
                  remote_tag=str(data["remote_tag"]), local_uri=NameAddr.parse(data["local_uri"]),
                  remote_uri=NameAddr.parse(data["remote_uri"]),
                  remote_target=URI.parse(data["remote_target"]),
                  route_set=[NameAddr.parse(r) for r in data["route_set"]], local_seq=int(data["local_seq"]),
                  remote_seq=None if data["remote_seq"] is None else int(data["remote_seq"]),
                  is_uac=bool(data["is_uac"]), local_contact=NameAddr.parse(data["local_contact"]),
                  state=DialogState.CONFIRMED, secure=bool(data["secure"]))


class Store:
    """``calls(id, system, data)``; `data` is the JSON of one call (see `sipmob.mdsm.app`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process (not a power cut); what matters here
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (id TEXT PRIMARY KEY, system TEXT NOT NULL, "
                        "data TEXT NOT NULL)")
        self.db.execute("CREATE TABLE IF NOT EXISTS setups (id TEXT PRIMARY KEY, system TEXT NOT NULL, "
                        "data TEXT NOT NULL)")
        self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def save(self, call_id: str, system: str, data: Mapping[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO calls VALUES (?, ?, ?)",
                        (call_id, system, json.dumps(data, separators=(",", ":"))))

    def delete(self, call_id: str) -> None:
        self.db.execute("DELETE FROM calls WHERE id = ?", (call_id,))

    def load(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """Every saved call; a row that is not valid JSON is skipped (and left for a person to see)."""
        for call_id, system, text in self.db.execute("SELECT id, system, data FROM calls ORDER BY id"):
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                yield call_id, system, data

    # Handoffs still being set up (`sipmob.mdsm.app.Setup`): rolled back by the next start --------

    def save_setup(self, setup_id: str, system: str, data: Mapping[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO setups VALUES (?, ?, ?)",
                        (setup_id, system, json.dumps(data, separators=(",", ":"))))

    def delete_setup(self, setup_id: str) -> None:
        self.db.execute("DELETE FROM setups WHERE id = ?", (setup_id,))

    def setups(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for setup_id, system, text in self.db.execute("SELECT id, system, data FROM setups ORDER BY id"):
            try:
                data = json.loads(text)
            except ValueError:
                continue
            if isinstance(data, dict):
                yield setup_id, system, data

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        self.db.close()
