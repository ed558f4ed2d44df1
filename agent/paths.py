"""Where the agent's files are on a terminal by default: every such path, once.

The config file names most of them and may move them; these are its
defaults and the values of the example file. firmware-notes.md ("Users and
files") says who owns each and why. systemd/sadad-agent.service
(``StateDirectory=``, ``RuntimeDirectory=``, ``LoadCredential=``) and
systemd/install.sh, which are not Python, name the same directories: change
them together.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CONFIG_DIR",
    "CONFIG_FILE",
    "GATEWAY_KEY",
    "JOURNAL",
    "MQTT_PASSWORD",
    "RUNTIME_DIR",
    "SOCKET",
    "STATE_DIR",
    "TECHNICIAN_PIN",
    "TERMINAL_KEY",
]

# The config and, in keys/, what the agent trusts (ConfigurationDirectory=,
# root:sadad: the agent replaces agent.toml when setup saves).
CONFIG_DIR = Path("/etc/sadad-agent")
CONFIG_FILE = CONFIG_DIR / "agent.toml"

# The agent's state, kept across updates (StateDirectory=): the journal.
STATE_DIR = Path("/var/lib/sadad-agent")
JOURNAL = STATE_DIR / "journal.db"

# Made at each boot (RuntimeDirectory=): the checkout screen's socket.
RUNTIME_DIR = Path("/run/sadad-agent")
SOCKET = RUNTIME_DIR / "agent.sock"

# Secrets and keys, as the example config names them: relative to the config
# file's directory (CONFIG_DIR), where systemd/install.sh makes keys/.
TERMINAL_KEY = Path("keys/terminal_private.pem")
GATEWAY_KEY = Path("keys/gateway_public.pem")
TECHNICIAN_PIN = Path("keys/technician.pin")
MQTT_PASSWORD = Path("mqtt.password")
