"""agent.deferred_imports: what paho imports and never uses is loaded on first use.

Each case runs in a fresh interpreter: this test process has long imported
``urllib.request`` for real.
"""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_daemon_starts_without_urllib_request_and_its_imports() -> None:
    _run(
        "import sys, agent.cli, agent.service, paho.mqtt.client\n"
        "heavy = ('email', 'http.client', 'tempfile', 'shutil')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "assert not loaded, loaded\n"
        "assert type(sys.modules['urllib.request']).__name__ == '_Deferred'\n"
    )


@pytest.mark.parametrize(
    "use",
    [
        "import urllib.request\nassert isinstance(urllib.request.getproxies(), dict)",
        "from urllib.request import parse_http_list\nassert parse_http_list('a, b') == ['a', 'b']",
        # paho's own use: the name bound at paho's import, read later
        "import paho.mqtt.client as c\nassert callable(c.urllib.request.proxy_bypass)",
    ],
)
def test_first_use_loads_the_real_module(use: str) -> None:
    _run(
        "import sys, agent.service, types\n"
        "held = sys.modules['urllib.request']\n"
        f"{use}\n"
        "real = sys.modules['urllib.request']\n"
        "assert type(real) is types.ModuleType and real is not held\n"
        "import urllib\n"
        "assert urllib.request is real\n"
        "assert held.Request is real.Request  # holders of the placeholder see it too\n"
        "assert 'http.client' in sys.modules\n"
    )


def test_a_module_imported_already_is_left_alone() -> None:
    _run(
        "import urllib.request, sys\n"
        "real = sys.modules['urllib.request']\n"
        "import agent\n"
        "assert sys.modules['urllib.request'] is real\n"
    )
