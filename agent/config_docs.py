"""docs/configuration.md and systemd/agent.toml.example, made from the schemas.

Both files are generated from the declarations in ``agent.config`` (agent.toml)
and ``cloud.config`` (pos.toml), so that neither can say something the
loaders do not check; tests fail when a checked-in copy drifts. After an
edit to a ``Setting``, regenerate them from the repository's root::

    python -m agent.config_docs --write     # rewrite both files
    python -m agent.config_docs             # print docs/configuration.md
    python -m agent.config_docs --example   # print the example agent.toml

Not imported by the daemon: it pulls in the POS module's config, which a
terminal does not need.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import paths
from agent.config import SCHEMA as AGENT_SCHEMA
from agent.config import dump_example
from cloud.config import DEFAULT_PATH as POS_DEFAULT_PATH
from cloud.config import ENV_VAR
from cloud.config import SCHEMA as POS_SCHEMA
from cloud.config_render import example_toml, markdown
from cloud.config_schema import EX_CONFIG

__all__ = ["DOC", "EXAMPLE", "REGENERATE", "document", "main"]

REPO = Path(__file__).resolve().parent.parent
DOC = Path("docs/configuration.md")
EXAMPLE = Path("systemd/agent.toml.example")
REGENERATE = "python -m agent.config_docs --write"

_PLACES = (
    (paths.CONFIG_FILE, "the config (`--config` names another)"),
    (paths.CONFIG_DIR / paths.TERMINAL_KEY, "the terminal's private key (root's, 0600)"),
    (paths.CONFIG_DIR / paths.GATEWAY_KEY, "the gateway's public key"),
    (paths.CONFIG_DIR / paths.TECHNICIAN_PIN, "the technician PIN's hash"),
    (paths.JOURNAL, "the journal (keep it across updates)"),
    (paths.SOCKET, "the checkout screen's socket"),
)

_INTRO = f"""\
# Configuration

<!-- Made by `{REGENERATE}` from the declarations in
agent/config.py and cloud/config.py (a test fails when this file drifts from
them): edit those, then run the command. -->

Two TOML files: `agent.toml`, the terminal agent's, and `pos.toml`, the POS
module's. Each is checked as a whole when it is read. Unknown keys are errors
(a typo must not pass silently); every problem is reported at once, one line
each, naming the file and the key and saying what is allowed, e.g.

    agent.toml: mqtt.keepalive: must be an integer 5..3600, got "abc"

and every command (`sadad-agent`, `sadad-pos`) exits with {EX_CONFIG} (`EX_CONFIG`)
on a config error; the agent's systemd unit does not restart a daemon that
stopped so (`RestartPreventExitStatus={EX_CONFIG}`) until a person fixes the file.
A value that may hold a secret is never echoed.
"""

_AGENT = """\
## agent.toml

`sadad-agent` reads `{config}`; `sadad-agent config check` checks it
and the files it names (the keys load, the PIN file holds a hash, no one else can
replace a key the agent trusts). `sadad-sandbox provision` writes one per
sandbox terminal. The commented example, `{example}`, which
`systemd/install.sh` installs, is made from the same declarations.

Paths that are not absolute are relative to the directory of the config
file. Secrets are never written in it: the keys, the MQTT password and the
technician PIN's hash live in files of their own (mode 0600) that the config
names. The default places (`agent/paths.py`):

| Path | What it is |
|---|---|
{places}
"""

_POS = f"""\
## pos.toml

`sadad-pos` and `cloud.config.load_config()` read the file `--config` names,
else `${ENV_VAR}`, else `./{POS_DEFAULT_PATH}`; `sadad-sandbox serve` writes
one. A flat file, no sections. Key files may hold PEM or the bare base64 DER
text of the gateway portal; relative paths are relative to the file.

"""


def document() -> str:
    """The text of docs/configuration.md."""
    places = "\n".join(f"| `{path}` | {what} |" for path, what in _PLACES)
    agent = _AGENT.format(config=paths.CONFIG_FILE, example=EXAMPLE, places=places)
    pos_example = example_toml(POS_SCHEMA, "pos.toml for the local sandbox (example)")
    return "\n".join(
        [
            _INTRO,
            agent,
            markdown(AGENT_SCHEMA),
            _POS + markdown(POS_SCHEMA),
            "An example:",
            "",
            "```toml",
            pos_example.rstrip("\n"),
            "```",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agent.config_docs",
        description=f"Print or rewrite {DOC} and {EXAMPLE} from the config schemas.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"rewrite {DOC} and {EXAMPLE}")
    group.add_argument("--example", action="store_true", help="print the example agent.toml")
    args = parser.parse_args(argv)
    if args.example:
        sys.stdout.write(dump_example())
    elif args.write:
        for path, text in ((DOC, document()), (EXAMPLE, dump_example())):
            (REPO / path).write_text(text, "utf-8")
            print(f"wrote {REPO / path}")
    else:
        sys.stdout.write(document())
    return 0


if __name__ == "__main__":
    sys.exit(main())
