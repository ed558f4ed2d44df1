"""The MQTT topic layout of part C (docs/protocol.md), in one place.

The terminal (``agent.mqtt.link``), the TMS (``sandbox.tms``), the broker
ACLs (``sandbox.broker``), the tests and the benchmarks all build and parse
topic names here, so the layout cannot drift between them. Pure.

    sadad/v1/terminals/{sn}/orders   TMS -> terminal, QoS 1
    sadad/v1/terminals/{sn}/events   terminal -> TMS, QoS 1
    sadad/v1/terminals/{sn}/status   terminal (and its will), QoS 1, retained
"""

from __future__ import annotations

from typing import Literal

PREFIX = "sadad/v1/terminals"
Kind = Literal["orders", "events", "status"]
KINDS: tuple[Kind, ...] = ("orders", "events", "status")


def topic(sn: str, kind: Kind) -> str:
    return f"{PREFIX}/{sn}/{kind}"


def orders_topic(sn: str) -> str:
    return topic(sn, "orders")


def events_topic(sn: str) -> str:
    return topic(sn, "events")


def status_topic(sn: str) -> str:
    return topic(sn, "status")


def every_terminal(kind: Kind) -> str:
    """The subscription filter for ``kind`` of every terminal (the TMS's)."""
    return f"{PREFIX}/+/{kind}"


def sn_from_topic(name: str, kind: Kind) -> str | None:
    """The SN in ``sadad/v1/terminals/{sn}/{kind}``, or None for another topic."""
    head, sep, rest = name.rpartition("/")
    if not sep or rest != kind:
        return None
    prefix, sep, sn = head.rpartition("/")
    if not sep or prefix != PREFIX or not sn or sn in ("+", "#"):
        return None
    return sn
