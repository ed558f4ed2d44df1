"""The setup screen (field technicians): PIN, then Settings > General > ECR Hub.

A ModalScreen over the checkout, and a thin client like the rest of the UI:
the agent decides everything (``agent.setup_access``).

* The PIN goes to the agent (``unlock_setup``), which checks it against its
  hash and keeps the lockout, so neither quitting the UI nor restarting it
  resets the count; the answer is shown as "Wrong PIN" (with the tries
  left), "Too many wrong PINs: try again in N s" or why setup stays locked
  (no PIN configured, a config that does not load, no agent).
* Once unlocked, the form is filled from the agent (``read_setup``).
* Test connection: ``test_connection``; the agent answers ``{"ok", "stage",
  "reason"}`` for the settings it runs with, shown as "Connected" or
  "Connection failed: STAGE: REASON".
* Test reader: ``test_reader``; the answer is shown (masked).
* Save: ``save_setup``; the agent validates the settings, writes its config
  (comments kept, atomically) and reloads. Problems are shown on screen,
  one per line; nothing is written then. The UI's user cannot write the
  config itself.

The app sends ``enter_setup`` when it opens this screen and ``leave_setup``
when it closes (Esc); the agent locks setup again then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, ContentSwitcher, Footer, Static

from agent import bridge_protocol as bp
from agent.bridge_client import BridgeClient
from agent.bridge_replies import (
    ConnectionCheckReply,
    EcrHubFields,
    ReaderCheckReply,
    ReadSetupReply,
    SaveSetupReply,
    UnlockReply,
    reply_data,
)
from agent.config import ConfigError
from agent.config_edit import EcrHubSettings
from ui.view import mask_digits
from ui.widgets.ecr_hub_form import EcrHubForm
from ui.widgets.pin_prompt import PinPrompt

TEST_TIMEOUT = 45.0  # the agent's probe takes up to 10 s, a reader test 20 s
SAVE_TIMEOUT = 45.0  # the write, then the agent's reload
UNLOCK_TIMEOUT = 10.0
AGENT_DOWN = "Setup needs the agent, which is not running."


def _settings(fields: EcrHubFields) -> EcrHubSettings:
    """The agent's ``read_setup`` answer as the form's settings."""
    return EcrHubSettings(
        broker_url=fields.broker_url,
        terminal_sn=fields.terminal_sn,
        ca_file=fields.ca_file,
        cert_file=fields.cert_file,
        key_file=fields.key_file,
        gateway_url=fields.gateway_url,
        readers=fields.readers,
    )


class SetupScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", key_display="Esc"),
        Binding("f5", "test_connection", "Test connection", key_display="F5"),
        Binding("f6", "test_reader", "Test reader", key_display="F6"),
        Binding("ctrl+s", "save", "Save", key_display="Ctrl+S"),
    ]

    def __init__(
        self,
        client: BridgeClient,
        clock: Callable[[], int],
        *,
        ascii_only: bool = False,
    ) -> None:
        super().__init__(id="setup", classes="ascii" if ascii_only else "")
        self.client = client
        self.clock = clock
        self.unlocked = False
        self.loaded: EcrHubSettings | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="setup-dialog"):
            yield Static("Settings > General > ECR Hub", id="setup-title")
            with ContentSwitcher(id="setup-stage", initial="locked"):
                yield PinPrompt(id="locked")
                with VerticalScroll(id="unlocked"):
                    yield EcrHubForm(id="form")
                    with Horizontal(id="setup-actions"):
                        yield Button("Test connection", id="test-connection", compact=True)
                        yield Button("Test reader", id="test-reader", compact=True)
                        yield Button("Save", id="save", variant="primary", compact=True)
                        yield Button("Close", id="close", compact=True)
                    yield Static(id="connection-result", classes="result")
                    yield Static(id="reader-result", classes="result")
                    yield Static(id="save-result", classes="result")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one(PinPrompt).focus_pin()

    # ------------------------------------------------------------ PIN

    def on_pin_prompt_submitted(self, event: PinPrompt.Submitted) -> None:
        self.check_pin(event.pin)

    @work(exclusive=True, group="setup-unlock")
    async def check_pin(self, pin: str) -> None:
        prompt = self.query_one(PinPrompt)
        try:
            reply = await self._request("unlock_setup", UNLOCK_TIMEOUT, pin=pin)
        except bp.AgentUnavailable:
            prompt.wrong(AGENT_DOWN)
            return
        except bp.BridgeError as exc:
            prompt.wrong(f"The PIN could not be checked: {exc}")
            return
        data = reply_data(reply, UnlockReply)
        if reply.ok and data.ok:
            await self.unlock()
            return
        why = reply.error or data.reason or "refused"
        if why == "locked":
            prompt.wrong(f"Too many wrong PINs: try again in {data.locked_for} s.")
        elif why == "wrong":
            prompt.wrong(f"Wrong PIN: setup stays locked. {data.attempts_left} tries left.")
        else:
            prompt.locked(f"Setup stays locked: {why}")

    async def unlock(self) -> None:
        try:
            reply = await self._request("read_setup", UNLOCK_TIMEOUT)
            data = reply_data(reply, ReadSetupReply)
        except bp.BridgeError as exc:
            reply, data = None, ReadSetupReply(reason=str(exc))
        self.unlocked = True
        if reply is not None and reply.ok and data.ok and data.settings is not None:
            self.loaded = _settings(data.settings)
        else:
            self.loaded = EcrHubSettings()
            reason = (reply.error if reply is not None else None) or data.reason
            self._result("save-result", f"The settings could not be read:\n{reason}", ok=False)
        form = self.query_one(EcrHubForm)
        form.load(self.loaded)
        self.query_one(ContentSwitcher).current = "unlocked"
        form.focus_first()
        self.refresh_bindings()

    # ------------------------------------------------------------ actions

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("test_connection", "test_reader", "save"):
            return self.unlocked
        return True

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {
            "test-connection": self.action_test_connection,
            "test-reader": self.action_test_reader,
            "save": self.action_save,
            "close": self.action_close,
        }
        action = actions.get(event.button.id or "")
        if action is not None:
            event.stop()
            action()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_test_connection(self) -> None:
        if self.unlocked:
            self.check_connection()

    def action_test_reader(self) -> None:
        if self.unlocked:
            self.check_reader()

    def action_save(self) -> None:
        if self.unlocked:
            self.save()

    def _result(self, widget_id: str, text: str, *, ok: bool | None) -> None:
        line = self.query_one(f"#{widget_id}", Static)
        line.update(Content(text))
        line.set_class(ok is True, "-ok")
        line.set_class(ok is False, "-failed")
        self.call_after_refresh(self.query_one("#unlocked").scroll_to_widget, line, animate=False)

    async def _request(self, name: str, timeout: float, **args: Any) -> bp.Reply:
        """Send an intent now. Raises BridgeError (AgentUnavailable at once
        when the agent is not connected, instead of waiting for it)."""
        if not self.client.connected:
            raise bp.AgentUnavailable("the agent is not running")
        return await self.client.request(name, timeout=timeout, **args)

    def _dirty(self) -> bool:
        try:
            return self.query_one(EcrHubForm).settings() != self.loaded
        except ConfigError:
            return True

    @work(exclusive=True, group="setup-test-connection")
    async def check_connection(self) -> None:
        widget = "connection-result"
        self._result(widget, "Testing the connection...", ok=None)
        note = "  (tested the saved settings: save to test your changes)" if self._dirty() else ""
        try:
            reply = await self._request("test_connection", TEST_TIMEOUT)
        except bp.BridgeError as exc:
            self._result(widget, f"Connection failed: agent: {exc}", ok=False)
            return
        data = reply_data(reply, ConnectionCheckReply)
        if not reply.ok:
            self._result(widget, f"Connection failed: agent: {reply.error}", ok=False)
        elif data.ok:
            self._result(widget, f"Connected{note}", ok=True)
        else:
            stage = mask_digits(data.stage or "unknown")
            reason = mask_digits(data.reason or "no reason given")
            self._result(widget, f"Connection failed: {stage}: {reason}{note}", ok=False)

    @work(exclusive=True, group="setup-test-reader")
    async def check_reader(self) -> None:
        widget = "reader-result"
        self._result(widget, "Reader test: present a card or a code to the reader...", ok=None)
        try:
            reply = await self._request("test_reader", TEST_TIMEOUT)
        except bp.BridgeError as exc:
            self._result(widget, f"Reader test failed: agent: {exc}", ok=False)
            return
        if not reply.ok:
            self._result(widget, f"Reader test failed: agent: {reply.error}", ok=False)
            return
        data = reply_data(reply, ReaderCheckReply)
        name = data.reader or "reader"
        if data.ok:
            shown = mask_digits(data.presented or "read")
            self._result(widget, f"Reader {name}: OK - {shown}", ok=True)
        else:
            reason = mask_digits(data.reason or "failed")
            self._result(widget, f"Reader {name}: failed - {reason}", ok=False)

    @work(exclusive=True, group="setup-save")
    async def save(self) -> None:
        widget = "save-result"
        try:
            settings = self.query_one(EcrHubForm).settings()
        except ConfigError as exc:
            self._result(widget, "Not saved:\n" + str(exc), ok=False)
            return
        self._result(widget, "Saving...", ok=None)
        fields = {
            "broker_url": settings.broker_url,
            "terminal_sn": settings.terminal_sn,
            "ca_file": settings.ca_file,
            "cert_file": settings.cert_file,
            "key_file": settings.key_file,
            "gateway_url": settings.gateway_url,
            "readers": [list(r) for r in settings.readers],
        }
        try:
            reply = await self._request("save_setup", SAVE_TIMEOUT, **fields)
        except bp.AgentUnavailable:
            self._result(widget, "Not saved: " + AGENT_DOWN, ok=False)
            return
        except bp.BridgeError as exc:
            self._result(widget, f"Not saved: {exc}", ok=False)
            return
        data = reply_data(reply, SaveSetupReply)
        if not reply.ok or not data.ok:
            reason = reply.error or data.reason or "refused"
            self._result(widget, "Not saved:\n" + reason, ok=False)
            return
        self.loaded = settings
        warnings = "".join(f"\nwarning: {w}" for w in data.warnings)
        if data.reloaded:
            self._result(widget, f"Saved. The agent reloaded the configuration.{warnings}", ok=True)
        else:
            reason = data.reason or "refused"
            self._result(
                widget, f"Saved, but the agent did not reload: {reason}{warnings}", ok=False
            )
