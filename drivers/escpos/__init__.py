"""ESC/POS receipt printers over pyserial, layered like the readers.

``encoder`` (blocks -> bytes; ``arabic`` shapes and orders Arabic lines for
code page 864) and ``status`` (DLE EOT requests and replies) are sans-I/O;
``spec`` parses ``escpos:PORT[;baud=N][;width=N]``; ``printer`` is the driver
on ``drivers.transport``. The simulated printer is ``drivers.sim.printer``.

The driver side (``EscPosPrinter``, the spec, the errors) is imported on
first use, so importing the pure codecs never loads asyncio or pyserial.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from drivers.escpos.encoder import Align, Block, Line, QrCode, display_width, encode
from drivers.escpos.status import PrinterStatus

if TYPE_CHECKING:
    from drivers.escpos.printer import EscPosPrinter, PrinterError, PrinterOffline
    from drivers.escpos.spec import PrinterSpec, PrinterSpecError, parse_printer_spec

__all__ = [
    "Align",
    "Block",
    "EscPosPrinter",
    "Line",
    "PrinterError",
    "PrinterOffline",
    "PrinterSpec",
    "PrinterSpecError",
    "PrinterStatus",
    "QrCode",
    "display_width",
    "encode",
    "parse_printer_spec",
]

_LAZY = {
    "EscPosPrinter": "drivers.escpos.printer",
    "PrinterError": "drivers.escpos.printer",
    "PrinterOffline": "drivers.escpos.printer",
    "PrinterSpec": "drivers.escpos.spec",
    "PrinterSpecError": "drivers.escpos.spec",
    "parse_printer_spec": "drivers.escpos.spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
