"""Settings > General > ECR Hub: connection mode, broker, SN, TLS files, gateway, readers."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Label, RadioSet, Static, TextArea

from agent.config_edit import EcrHubSettings, format_readers, parse_readers
from ui.widgets.console_radio import ConsoleRadioButton

FIELDS: tuple[tuple[str, str, str], ...] = (
    ("broker_url", "Broker URL", "mqtts://HOST:8883"),
    ("terminal_sn", "Terminal SN", "e.g. T0001"),
    ("ca_file", "TLS CA file", "optional: ca.pem"),
    ("cert_file", "TLS cert file", "optional: terminal.crt"),
    ("key_file", "TLS key file", "optional: terminal.key"),
    ("gateway_url", "Gateway URL", "https://HOST"),
)


class EcrHubForm(Vertical):
    """``load(settings)`` fills it; ``settings()`` reads it back (raises
    ``agent.config.ConfigError`` for a bad readers line)."""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="form-row", id="mode-row"):
            yield Label("Connection", classes="form-label")
            with RadioSet(id="mode", compact=True):
                yield ConsoleRadioButton("Cloud", value=True, id="mode-cloud")
                yield ConsoleRadioButton("LAN", disabled=True, id="mode-lan")
                yield ConsoleRadioButton("USB", disabled=True, id="mode-usb")
        yield Static("LAN and USB: not available in this build", id="mode-note")
        for key, label, placeholder in FIELDS:
            with Horizontal(classes="form-row"):
                yield Label(label, classes="form-label")
                yield Input(id=key, placeholder=placeholder, compact=True)
        yield Label('Readers   NAME = "KIND:PORT[;key=value]", one a line', id="readers-label")
        yield TextArea(id="readers", compact=True, soft_wrap=False, highlight_cursor_line=False)

    def load(self, settings: EcrHubSettings) -> None:
        for key, _label, _placeholder in FIELDS:
            self.query_one(f"#{key}", Input).value = getattr(settings, key)
        self.query_one("#readers", TextArea).text = format_readers(settings.readers)

    def settings(self) -> EcrHubSettings:
        values = {key: self.query_one(f"#{key}", Input).value for key, _l, _p in FIELDS}
        readers = parse_readers(self.query_one("#readers", TextArea).text)
        return EcrHubSettings(readers=readers, **values)

    def focus_first(self) -> None:
        self.query_one(f"#{FIELDS[0][0]}", Input).focus()
