"""The terminal's MQTT side of SadadTMS (docs/protocol.md part C), one idea a module.

* ``agent.mqtt.url``: ``BrokerUrl``, a typed ``mqtt://`` / ``mqtts://``
  broker address.
* ``agent.mqtt.errors``: ``LinkDown`` (retry later), ``PublishRejected``
  (final), and ``AttemptFailed``, the stage a connection attempt stopped at.
* ``agent.mqtt.session``: one connection over paho driven by the asyncio
  loop: MQTT 5 falling back to 3.1.1, persistent session, Maximum Packet
  Size, manual PUBACK.
* ``agent.mqtt.status``: the retained ``online``/``offline`` status and its
  will, with bursts of changes coalesced.
* ``agent.mqtt.link``: ``MqttLink``, the session kept up: pushes handed to
  the engine and acknowledged after it journaled them, events, reconnects
  with backoff and failover to ``fallback_urls``.
* ``agent.mqtt.probe``: ``probe_connection``, the setup screen's and the
  doctor's stage-by-stage broker check.

The imports go one way: link -> status -> session -> errors, url; the probe
uses the session only. Topic names come from ``cloud.topics``. Payloads are
never logged (pushes carry order data). Import names from the module that
defines them; this package re-exports nothing.
"""
