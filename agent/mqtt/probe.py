"""The broker probe of the setup screen's "Test connection" and ``sadad-agent doctor``.

Contract:

* ``probe_connection`` connects the way the link would (same URL, TLS
  files, credentials, MQTT 5 falling back to 3.1.1) one stage at a time:
  ``dns``, ``tcp``, ``tls`` (``mqtts://`` only), ``auth`` (CONNECT/CONNACK),
  ``subscribe`` (the orders topic), so a failure names the stage a
  technician has to fix.
* It never takes over the terminal's session: client id ``{sn}-probe`` and
  a clean session, no will, no status. Broker ACLs written with ``%c``
  (client id) must allow that id for the probe to pass the subscribe stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from paho.mqtt.enums import MQTTProtocolVersion

from agent.config import ConfigError, MqttConfig
from agent.mqtt.errors import AttemptFailed, Stage
from agent.mqtt.session import CONNECT_TIMEOUT, Session, connect_error, first_protocol, tls_context
from agent.mqtt.url import BrokerUrl
from cloud.topics import orders_topic

__all__ = ["probe_connection"]


async def probe_connection(cfg: MqttConfig, sn: str, timeout: float) -> tuple[bool, str, str]:
    """Probe the broker the way the link would connect, without touching the
    terminal's session. Returns ``(ok, stage, reason)``: ``stage`` is where it
    stopped (``dns``, ``tcp``, ``tls``, ``auth``, ``subscribe``) or ``ok``;
    ``reason`` is a sentence for the setup screen. Never raises (a bad URL is
    reported at stage ``dns``)."""
    progress: list[Stage] = ["dns"]
    try:
        async with asyncio.timeout(timeout):
            return await _probe(cfg, sn, progress)
    except TimeoutError:
        return False, progress[-1], f"no answer within {timeout:g} s"


async def _probe(cfg: MqttConfig, sn: str, progress: list[Stage]) -> tuple[bool, str, str]:
    loop = asyncio.get_running_loop()
    try:
        broker = BrokerUrl.parse(cfg.url)
    except ConfigError as exc:
        return False, "dns", f"invalid broker URL {cfg.url!r}: {exc}"
    host, port = broker.host, broker.port
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return False, "dns", connect_error(exc, host, port).reason
    progress.append("tcp")
    address = infos[0][4]
    try:
        _reader, writer = await asyncio.open_connection(str(address[0]), port)
    except OSError as exc:
        return False, "tcp", connect_error(exc, host, port).reason
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    if broker.tls:
        progress.append("tls")
        try:
            ctx = tls_context(cfg)
            _reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host, ssl_handshake_timeout=CONNECT_TIMEOUT
            )
        except AttemptFailed as exc:
            return False, "tls", exc.reason
        except OSError as exc:
            return False, "tls", connect_error(exc, host, port).reason
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    progress.append("auth")
    protocol = first_protocol(cfg)
    while True:
        session = Session(
            client_id=f"{sn}-probe", protocol=protocol, persistent=False, cfg=cfg, broker=broker
        )
        try:
            session.prepare(will=None, topic_for_will=None)
            await session.open()
            await session.wait_connack(CONNECT_TIMEOUT)
            progress.append("subscribe")
            await session.subscribe(orders_topic(sn), CONNECT_TIMEOUT)
        except AttemptFailed as exc:
            await session.aclose("probe failed")
            if exc.retry_now and protocol == MQTTProtocolVersion.MQTTv5:
                protocol = MQTTProtocolVersion.MQTTv311
                continue
            return False, exc.stage, exc.reason
        except BaseException:
            session.abort("probe cancelled")
            raise
        session.disconnect("probe done")
        await session.wait_closed(2.0)
        version = "5" if protocol == MQTTProtocolVersion.MQTTv5 else "3.1.1"
        return (
            True,
            "ok",
            f"connected to {host}:{port} as {sn}-probe (MQTT {version}) and subscribed to "
            f"{orders_topic(sn)}",
        )
