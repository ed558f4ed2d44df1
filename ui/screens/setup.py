"""The setup screen (field technicians): PIN, then Settings > General > ECR Hub.

A ModalScreen over the checkout. The PIN comes from the agent's config file
(``agent.config.technician_pin``); with none configured, or a config that
does not load, setup stays locked and says why. Once unlocked:

* Test connection: the ``test_connection`` intent; the agent answers
  ``{"ok", "stage", "reason"}`` for the settings it runs with, shown as
  "Connected" or "Connection failed: STAGE: REASON".
* Test reader: the ``test_reader`` intent; the answer is shown (masked).
* Save: ``ui.config_edit.save_settings`` (comments kept, validated with
  ``loads_config``, written atomically) in a thread, then the ``reload``
  intent. Problems are shown on screen, one per line; nothing is written
  then.

The app sends ``enter_setup`` when it opens this screen and ``leave_setup``
when it closes (Esc).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, ContentSwitcher, Footer, Static

from agent import bridge_protocol as bp
from agent.config import ConfigError, load_config, technician_pin
from ui.bridge_client import BridgeClient
from ui.config_edit import EcrHubSettings, missing_tls_files, read_settings, save_settings
from ui.pin_guard import PinGuard
from ui.view import mask_digits
from ui.widgets.ecr_hub_form import EcrHubForm
from ui.widgets.pin_prompt import PinPrompt

TEST_TIMEOUT = 45.0  # the agent's probe takes up to 10 s, a reader test 20 s
RELOAD_TIMEOUT = 30.0


def _load_pin(path: Path) -> str | None:
    """The PIN from the config (None: none configured). Raises ConfigError."""
    return technician_pin(load_config(path))


def _read_text(path: Path) -> str:
    """Raises ConfigError."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc


class SetupScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", key_display="Esc"),
        Binding("f5", "test_connection", "Test connection", key_display="F5"),
        Binding("f6", "test_reader", "Test reader", key_display="F6"),
        Binding("ctrl+s", "save", "Save", key_display="Ctrl+S"),
    ]

    def __init__(
        self,
        config_path: str | os.PathLike[str],
        client: BridgeClient,
        clock: Callable[[], int],
        guard: PinGuard,
        *,
        ascii_only: bool = False,
    ) -> None:
        super().__init__(id="setup", classes="ascii" if ascii_only else "")
        self.config_path = Path(config_path)
        self.client = client
        self.clock = clock
        self.guard = guard
        self.unlocked = False
        self.expected_pin: str | None = None
        self.early_pin: str | None = None  # submitted before the PIN was loaded
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
        self.load_pin()

    # ------------------------------------------------------------ PIN

    @work(exclusive=True, group="setup-load")
    async def load_pin(self) -> None:
        prompt = self.query_one(PinPrompt)
        try:
            pin = await asyncio.to_thread(_load_pin, self.config_path)
        except ConfigError as exc:
            prompt.locked("Setup stays locked: the config does not load.\n" + str(exc))
            return
        if pin is None:
            prompt.locked(
                "Setup stays locked: no technician PIN configured.\n"
                "Set terminal.technician_pin_file in the agent's config."
            )
            return
        self.expected_pin = pin
        if self.early_pin is not None:
            self.check_pin(self.early_pin)

    def on_pin_prompt_submitted(self, event: PinPrompt.Submitted) -> None:
        if self.expected_pin is None:
            # Still loading (a fast typist): checked once loaded, not lost.
            self.early_pin = event.pin
            return
        self.check_pin(event.pin)

    def check_pin(self, pin: str) -> None:
        assert self.expected_pin is not None
        self.early_pin = None
        prompt = self.query_one(PinPrompt)
        verdict = self.guard.check(pin, self.expected_pin, self.clock())
        if verdict == "ok":
            self.unlock()
        elif verdict == "locked":
            wait = self.guard.seconds_locked(self.clock())
            prompt.wrong(f"Too many wrong PINs: try again in {wait} s.")
        else:
            wait = self.guard.seconds_locked(self.clock())
            extra = f" Too many tries: locked for {wait} s." if wait else ""
            prompt.wrong(f"Wrong PIN: setup stays locked.{extra}")

    @work(exclusive=True, group="setup-load")
    async def unlock(self) -> None:
        self.unlocked = True
        self.expected_pin = None
        try:
            text = await asyncio.to_thread(_read_text, self.config_path)
            self.loaded = read_settings(text, file=self.config_path.name)
        except ConfigError as exc:
            self.loaded = EcrHubSettings()
            self._result("save-result", f"The config does not load:\n{exc}", ok=False)
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
            self.test_connection()

    def action_test_reader(self) -> None:
        if self.unlocked:
            self.test_reader()

    def action_save(self) -> None:
        if self.unlocked:
            self.save()

    def _result(self, widget_id: str, text: str, *, ok: bool | None) -> None:
        line = self.query_one(f"#{widget_id}", Static)
        line.update(Content(text))
        line.set_class(ok is True, "-ok")
        line.set_class(ok is False, "-failed")
        self.call_after_refresh(self.query_one("#unlocked").scroll_to_widget, line, animate=False)

    async def _request(self, name: str, timeout: float) -> bp.Reply:
        """Send an intent now. Raises BridgeError (AgentUnavailable at once
        when the agent is not connected, instead of waiting for it)."""
        if not self.client.connected:
            raise bp.AgentUnavailable("the agent is not running")
        return await self.client.request(name, timeout=timeout)

    def _dirty(self) -> bool:
        try:
            return self.query_one(EcrHubForm).settings() != self.loaded
        except ConfigError:
            return True

    @work(exclusive=True, group="setup-test-connection")
    async def test_connection(self) -> None:
        widget = "connection-result"
        self._result(widget, "Testing the connection...", ok=None)
        note = "  (tested the saved settings: save to test your changes)" if self._dirty() else ""
        try:
            reply = await self._request("test_connection", TEST_TIMEOUT)
        except bp.BridgeError as exc:
            self._result(widget, f"Connection failed: agent: {exc}", ok=False)
            return
        data = reply.data
        if not reply.ok:
            self._result(widget, f"Connection failed: agent: {reply.error}", ok=False)
        elif data.get("ok"):
            self._result(widget, f"Connected{note}", ok=True)
        else:
            stage = mask_digits(str(data.get("stage") or "unknown"))
            reason = mask_digits(str(data.get("reason") or "no reason given"))
            self._result(widget, f"Connection failed: {stage}: {reason}{note}", ok=False)

    @work(exclusive=True, group="setup-test-reader")
    async def test_reader(self) -> None:
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
        data = reply.data
        name = str(data.get("reader") or "reader")
        if data.get("ok"):
            shown = mask_digits(str(data.get("presented") or "read"))
            self._result(widget, f"Reader {name}: OK - {shown}", ok=True)
        else:
            reason = mask_digits(str(data.get("reason") or "failed"))
            self._result(widget, f"Reader {name}: failed - {reason}", ok=False)

    @work(exclusive=True, group="setup-save")
    async def save(self) -> None:
        widget = "save-result"
        try:
            settings = self.query_one(EcrHubForm).settings()
            cfg = await asyncio.to_thread(save_settings, self.config_path, settings)
        except ConfigError as exc:
            self._result(widget, "Not saved:\n" + str(exc), ok=False)
            return
        self.loaded = settings
        warnings = "".join(f"\nwarning: {w}" for w in missing_tls_files(cfg))
        self._result(widget, f"Saved. Asking the agent to reload...{warnings}", ok=None)
        try:
            reply = await self._request("reload", RELOAD_TIMEOUT)
        except bp.AgentUnavailable:
            self._result(
                widget,
                f"Saved. The agent is not running: it reads the file when it starts.{warnings}",
                ok=True,
            )
            return
        except bp.BridgeError as exc:
            self._result(widget, f"Saved, but the reload failed: {exc}{warnings}", ok=False)
            return
        if reply.ok and reply.data.get("ok", True):
            self._result(widget, f"Saved. The agent reloaded the configuration.{warnings}", ok=True)
        else:
            reason = reply.error or reply.data.get("reason") or "refused"
            self._result(
                widget, f"Saved, but the agent did not reload: {reason}{warnings}", ok=False
            )
