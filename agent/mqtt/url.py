"""A broker address, typed: ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``.

The rules for what a broker URL may be are the config's
(``agent.config.parse_mqtt_url``: the config check and the link must never
disagree about a URL); ``BrokerUrl`` gives that answer a type, so the
session, the link and the probe say ``broker.tls`` instead of indexing a
tuple. TLS comes from the scheme alone (``mqtts``, port 8883 by default;
``mqtt``, 1883).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.config import parse_mqtt_url

__all__ = ["BrokerUrl"]


@dataclass(frozen=True, slots=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Raises ConfigError (the text says what is allowed)."""
        host, port, tls = parse_mqtt_url(url)
        return cls(host, port, tls)

    def __str__(self) -> str:
        """The node as the link's state reason names it."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"
