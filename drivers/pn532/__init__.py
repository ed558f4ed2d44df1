"""NXP PN532 NFC controller over HSU (UART).

Layers, as in nfcpy and bellows: ``frames`` (sans-I/O framing) ->
``commands`` (sans-I/O request builders and response parsers) -> ``device``
(the async command path over a transport). This package's ``__init__``
imports nothing so that the sans-I/O modules stay free of asyncio.
"""
