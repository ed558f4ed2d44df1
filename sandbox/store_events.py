"""The sandbox store's MQTT traffic with the terminals (docs/protocol.md part C).

``pushes``: every push the TMS published, by its ``message_id``, so that
an event that names only the message is tied to its order. ``events``: the
terminal events that passed verification, each stored once (a redelivery
of the same event is recognised and not stored again); in arrival order
they are an order's terminal timeline, with the hops the terminal stamped
(``terminal_timeline``, a sandbox extension of ``order.query``).
"""

from __future__ import annotations

from typing import Any

from cloud import wirejson
from sandbox.store_db import StoreDb, wall_ms


class TerminalTraffic(StoreDb):
    """``pushes`` and ``events``; a part of ``sandbox.store.Store``."""

    def add_push(
        self,
        *,
        message_id: str,
        trans_no: str,
        terminal_sn: str,
        topic: str,
        payload: str,
        expiry_s: int | None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO pushes (message_id, trans_no, terminal_sn, topic, payload, "
                "expiry_s, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (message_id, trans_no, terminal_sn, topic, payload, expiry_s, wall_ms()),
            )

    def trans_no_for_message(self, message_id: str) -> str | None:
        row = self._one("SELECT trans_no FROM pushes WHERE message_id = ?", message_id)
        return None if row is None else str(row["trans_no"])

    def add_event(
        self,
        *,
        trans_no: str | None,
        terminal_sn: str,
        event: str,
        message_id: str,
        reason: str | None,
        hops: str | None,
        timestamp: str,
        received_ms: int,
    ) -> bool:
        """Store a verified terminal event; False when it was a redelivery."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO events (trans_no, terminal_sn, event, message_id, reason, "
                "hops, timestamp, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (trans_no, terminal_sn, event, message_id, reason, hops, timestamp, received_ms),
            )
        return cur.rowcount == 1

    def timeline(self, trans_no: str) -> list[dict[str, Any]]:
        """The terminal events of ``trans_no`` in arrival order; ``hops`` parsed."""
        rows = self._db.execute(
            "SELECT event, message_id, reason, hops, timestamp, received_ms FROM events "
            "WHERE trans_no = ? ORDER BY id",
            (trans_no,),
        ).fetchall()
        out: list[dict[str, Any]] = []
        for r in rows:
            item = {k: r[k] for k in ("event", "message_id", "timestamp", "received_ms")}
            if r["reason"]:
                item["reason"] = r["reason"]
            if r["hops"]:
                try:
                    item["hops"] = wirejson.loads(r["hops"])
                except ValueError:
                    item["hops"] = r["hops"]
            out.append(item)
        return out
