"""The setup screen: PIN, ECR Hub form, test connection / reader, save + reload."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, TextArea

from agent import bridge_protocol as bp
from agent import setup_records
from agent.bridge_replies import UnlockReply, reply_data
from agent.config import load_config
from cloud.messages import Screen
from tests.ui.conftest import ORDER, PIN, ScriptedAgent, make_app, screen_text, until, write_config
from ui.app import CheckoutApp
from ui.screens.checkout import CheckoutScreen
from ui.screens.setup import SetupScreen


def _shows(app: CheckoutApp, *texts: str) -> bool:
    shown = screen_text(app)
    return all(t in shown for t in texts)


async def _open(pilot: object, app: CheckoutApp) -> None:
    await until(pilot, lambda: _shows(app, "Ready for the next order"))
    await pilot.press("f2")  # type: ignore[attr-defined]
    await until(pilot, lambda: _shows(app, "Enter the technician PIN"))


async def _enter_pin(pilot: object, app: CheckoutApp, pin: str) -> None:
    """Put ``pin`` in the field and press Enter (typing it is tested once)."""
    app.screen.query_one("#pin", Input).value = pin
    await pilot.press("enter")  # type: ignore[attr-defined]


async def _unlock(pilot: object, app: CheckoutApp) -> None:
    await _open(pilot, app)
    await _enter_pin(pilot, app, PIN)
    await until(pilot, lambda: _shows(app, "Broker URL", "mqtts://tms.example.com:8883"))


async def test_wrong_pin_stays_locked_then_right_pin_opens(
    agent: ScriptedAgent, tmp_path: Path
) -> None:
    app = make_app(agent.path, write_config(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await _open(pilot, app)
        assert isinstance(app.screen, SetupScreen)
        await until(pilot, lambda: "enter_setup" in agent.names(), "the agent's intents")
        await _enter_pin(pilot, app, "1234")
        await until(pilot, lambda: _shows(app, "Wrong PIN: setup stays locked."))
        assert "Broker URL" not in screen_text(app)
        assert app.screen.query_one("#pin", Input).value == ""
        await pilot.press("ctrl+s", "f5")  # locked: these do nothing
        await pilot.press(*PIN, "enter")
        await until(pilot, lambda: _shows(app, "Broker URL", "Terminal SN", "Gateway URL"))
        text = screen_text(app)
        assert "(*) Cloud" in text
        assert "( ) LAN" in text
        assert "( ) USB" in text
        assert "not available in this build" in text
        assert app.screen.query_one("#mode-lan").disabled
        assert app.screen.query_one("#terminal_sn", Input).value == "T0001"
        assert app.screen.query_one("#ca_file", Input).value == "ca.pem"
        assert app.screen.query_one("#gateway_url", Input).value == "https://gateway.example.com"
        assert app.screen.query_one("#readers", TextArea).text == (
            'nfc = "pn532:/dev/sadad-nfc"\nqr = "scanner:/dev/sadad-qr"'
        )
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, CheckoutScreen))
        await until(pilot, lambda: "leave_setup" in agent.names(), "the agent's intents")
        assert agent.names() == [
            "enter_setup",
            "unlock_setup",
            "unlock_setup",
            "read_setup",
            "leave_setup",
        ]


async def test_too_many_wrong_pins_lock_out_across_reopening(
    agent: ScriptedAgent, tmp_path: Path
) -> None:
    app = make_app(agent.path, write_config(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await _open(pilot, app)
        await _enter_pin(pilot, app, "9999")
        await until(pilot, lambda: _shows(app, "Wrong PIN: setup stays locked. 4 tries left."))
        for _ in range(4):
            await _enter_pin(pilot, app, "9999")
            await pilot.pause(0.1)
        await until(pilot, lambda: _shows(app, "try again in 60 s"))
        await pilot.press("escape", "f2")
        await until(pilot, lambda: _shows(app, "Enter the technician PIN"))
        await _enter_pin(pilot, app, PIN)
        await until(pilot, lambda: _shows(app, "Too many wrong PINs: try again in 60 s."))
        assert "Broker URL" not in screen_text(app)
    # The agent counts, not the UI: a new UI process finds it locked too.
    again = make_app(agent.path)
    async with again.run_test(size=(80, 24)) as pilot:
        await _open(pilot, again)
        await _enter_pin(pilot, again, PIN)
        await until(pilot, lambda: _shows(again, "Too many wrong PINs"))
    actions = [a for _at, a, _o in setup_records.setup_log(agent.journal, limit=20)]
    assert actions.count("unlock") == 7
    assert PIN not in repr(setup_records.setup_log(agent.journal, limit=20))


async def test_no_pin_configured_stays_locked(agent: ScriptedAgent, tmp_path: Path) -> None:
    app = make_app(agent.path, write_config(tmp_path, pin=None))
    async with app.run_test(size=(80, 24)) as pilot:
        await _open(pilot, app)
        await _enter_pin(pilot, app, "1234")
        await until(pilot, lambda: _shows(app, "no technician PIN configured"))
        assert app.screen.query_one("#pin", Input).disabled
        assert "Broker URL" not in screen_text(app)


async def test_a_plain_pin_in_the_file_is_not_a_pin(agent: ScriptedAgent, tmp_path: Path) -> None:
    write_config(tmp_path)
    (tmp_path / "technician.pin").write_text(PIN + "\n")  # the old, plain-text way
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await _open(pilot, app)
        await _enter_pin(pilot, app, PIN)
        await until(pilot, lambda: _shows(app, "plain text"))
        assert "Broker URL" not in screen_text(app)


async def test_unreadable_config_stays_locked(agent: ScriptedAgent, tmp_path: Path) -> None:
    app = make_app(agent.path)  # no agent.toml at all
    async with app.run_test(size=(80, 24)) as pilot:
        await _open(pilot, app)
        await _enter_pin(pilot, app, PIN)
        await until(pilot, lambda: _shows(app, "the config does not load"))


async def test_setup_actions_need_the_pin_at_the_agent(agent: ScriptedAgent) -> None:
    """A process of the UI's user that skips the screen gets nothing."""
    write_config(agent.path.parent)
    from agent.bridge_client import BridgeClient

    client = BridgeClient(str(agent.path))
    await client.connect()
    try:
        for name in ("read_setup", "save_setup"):
            reply = await client.request(name, timeout=5)
            assert reply.data == {
                "ok": False,
                "reason": "setup is locked: enter the technician PIN",
            }
        unlocked = await client.request("unlock_setup", timeout=5, pin=PIN)
        assert reply_data(unlocked, UnlockReply).ok
        assert (await client.request("read_setup", timeout=5)).data["ok"]
    finally:
        await client.close()


async def test_test_connection_failure_then_success(agent: ScriptedAgent, tmp_path: Path) -> None:
    agent.replies["test_connection"] = {
        "ok": False,
        "stage": "tls",
        "reason": "certificate verify failed",
    }
    app = make_app(agent.path, write_config(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await _unlock(pilot, app)
        await pilot.press("f5")
        await until(pilot, lambda: _shows(app, "Connection failed: tls: certificate verify failed"))
        agent.replies["test_connection"] = {"ok": True, "stage": "done", "reason": ""}
        await pilot.click("#test-connection")
        await until(pilot, lambda: _shows(app, "Connected"))
        assert "Connection failed" not in screen_text(app)
        app.screen.query_one("#broker_url", Input).value = "mqtts://other.example.com"
        await pilot.press("f5")
        await until(pilot, lambda: _shows(app, "tested the saved settings"))
        assert agent.names().count("test_connection") == 3


async def test_test_reader_shows_the_answer_masked(agent: ScriptedAgent, tmp_path: Path) -> None:
    agent.replies["test_reader"] = {
        "ok": True,
        "reader": "nfc",
        "presented": "VISA 4761730000000010",
    }
    app = make_app(agent.path, write_config(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await _unlock(pilot, app)
        await pilot.press("f6")
        await until(pilot, lambda: _shows(app, "Reader nfc: OK - VISA 476173******0010"))
        assert "4761730000000010" not in screen_text(app)
        agent.replies["test_reader"] = {"ok": False, "reader": "nfc", "reason": "nothing presented"}
        await pilot.press("f6")
        await until(pilot, lambda: _shows(app, "Reader nfc: failed - nothing presented"))


async def test_save_rewrites_the_config_keeping_comments_and_reloads(
    agent: ScriptedAgent, tmp_path: Path
) -> None:
    agent.replies["reload"] = {"ok": True, "reason": "reloaded"}
    config = write_config(tmp_path)
    before = config.read_text()
    app = make_app(agent.path, config)
    async with app.run_test(size=(80, 24)) as pilot:
        await _unlock(pilot, app)
        screen = app.screen
        screen.query_one("#broker_url", Input).value = "mqtts://tms2.example.com:8883"
        screen.query_one("#terminal_sn", Input).value = "T0042"
        screen.query_one("#cert_file", Input).value = "terminal.crt"
        screen.query_one("#key_file", Input).value = "terminal.key"
        screen.query_one("#readers", TextArea).text = 'nfc = "pn532:/dev/ttyUSB0"'
        await pilot.press("ctrl+s")
        await until(pilot, lambda: _shows(app, "Saved. The agent reloaded the configuration."))
        assert agent.names()[-1] == "save_setup"
    after = config.read_text()
    assert [ln for ln in before.splitlines() if ln.lstrip().startswith("#")] == [
        ln for ln in after.splitlines() if ln.lstrip().startswith("#")
    ]
    assert 'sn = "T0042"                          # terminal serial number' in after
    assert 'url = "mqtts://tms2.example.com:8883"  # mqtt://HOST[:PORT]' in after
    assert 'nfc = "pn532:/dev/ttyUSB0"          # the contactless reader' in after
    assert "qr =" not in after
    cfg = load_config(config)
    assert (cfg.terminal.sn, cfg.mqtt.cert_file) == ("T0042", tmp_path / "terminal.crt")


async def test_save_shows_problems_and_writes_nothing(agent: ScriptedAgent, tmp_path: Path) -> None:
    config = write_config(tmp_path)
    before = config.read_text()
    app = make_app(agent.path, config)
    async with app.run_test(size=(120, 40)) as pilot:
        await _unlock(pilot, app)
        app.screen.query_one("#broker_url", Input).value = "http://wrong"
        await pilot.click("#save")
        await until(pilot, lambda: _shows(app, "Not saved:", "agent.toml: mqtt.url: must be"))
        app.screen.query_one("#broker_url", Input).value = "mqtts://ok.example.com"
        app.screen.query_one("#readers", TextArea).text = "nfc pn532"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: _shows(app, "Not saved:", "readers line 1: write NAME"))
    assert config.read_text() == before


async def test_save_with_a_refused_reload_and_with_the_agent_down(
    agent: ScriptedAgent, tmp_path: Path
) -> None:
    agent.replies["reload"] = {"ok": False, "reason": "journal.path cannot change on reload"}
    config = write_config(tmp_path)
    app = make_app(agent.path, config)
    async with app.run_test(size=(80, 24)) as pilot:
        await _unlock(pilot, app)
        app.screen.query_one("#terminal_sn", Input).value = "T0005"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: _shows(app, "the agent did not reload: journal.path cannot"))
        await agent.server.close()
        await until(pilot, lambda: not app.client.connected, "the client")
        app.screen.query_one("#terminal_sn", Input).value = "T0006"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: _shows(app, "Not saved: Setup needs the agent"))
        await pilot.press("f5")
        await until(pilot, lambda: _shows(app, "Connection failed: agent: the agent is not"))
    assert load_config(config).terminal.sn == "T0005"  # only the agent writes it


async def test_setup_opens_while_the_agent_is_down(tmp_path: Path) -> None:
    app = make_app(tmp_path / "agent.sock", write_config(tmp_path))
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "Agent not running"))
        await pilot.press("f2")
        await until(pilot, lambda: _shows(app, "Enter the technician PIN"))
        assert isinstance(app.screen, SetupScreen)
        assert isinstance(app.client.state, bp.HelloEvent | None)


async def test_an_order_arriving_during_setup_is_announced(
    agent: ScriptedAgent, tmp_path: Path
) -> None:
    app = make_app(agent.path, write_config(tmp_path))
    async with app.run_test(size=(120, 40), notifications=True) as pilot:
        await _unlock(pilot, app)
        agent.show(Screen.WAITING_FOR_CARD, order=ORDER)
        await until(pilot, lambda: _shows(app, "Order A-1001 is waiting: press Esc"))
        await pilot.press("escape")
        await until(pilot, lambda: _shows(app, "Tap, swipe or scan"))


async def test_setup_in_ascii_mode_draws_with_ascii_only(
    agent: ScriptedAgent, tmp_path: Path
) -> None:
    app = make_app(agent.path, write_config(tmp_path), ascii_borders=True, ansi_colors=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await _unlock(pilot, app)
        text = screen_text(app)
        assert "(*) Cloud" in text
        assert all(ord(c) < 128 for c in text), {c for c in text if ord(c) >= 128}
        assert app.theme == "ansi-dark"


async def test_ctrl_q_does_nothing_unless_allowed(agent: ScriptedAgent) -> None:
    app = make_app(agent.path)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _shows(app, "Ready for the next order"))
        await pilot.press("ctrl+q", "ctrl+c")
        await pilot.pause(0.1)
        assert app.is_running


async def test_quitting_during_setup_leaves_setup(agent: ScriptedAgent, tmp_path: Path) -> None:
    app = make_app(agent.path, write_config(tmp_path), allow_quit=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await _open(pilot, app)
        await until(pilot, lambda: "enter_setup" in agent.names(), "the agent's intents")
        await pilot.press("ctrl+q")
    assert agent.names() == ["enter_setup", "leave_setup"]
