"""Standard-library modules the daemon's dependencies import but never use,
loaded on first use instead of at start-up.

paho-mqtt imports ``urllib.request`` at the top of ``paho.mqtt.client`` for
one thing: reading ``mqtt_proxy`` from the environment, and only when PySocks
is installed (``Client._get_proxy``). That import drags in ``http.client``,
``email.*``, ``tempfile``, ``shutil`` and ``calendar``: about 2.5 MiB of RSS
in every agent process (a quarter of what the daemon adds to a bare
interpreter), for code that never runs on a terminal without PySocks.

``defer(name)`` puts a placeholder module in ``sys.modules``; the first
attribute read on it (``urllib.request.getproxies``, ``from urllib.request
import x``) imports the real module, copies it into the placeholder and
answers. Code that imports the module and uses it works unchanged, only
later. Installed by ``agent/__init__.py``, so before paho is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

DEFERRED = ("urllib.request",)


class _Deferred(types.ModuleType):
    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr != "__all__":  # import machinery probing
            raise AttributeError(attr)
        return getattr(_load(self), attr)


def _load(placeholder: types.ModuleType) -> types.ModuleType:
    name = placeholder.__name__
    if sys.modules.get(name) is placeholder:
        del sys.modules[name]  # so that the import below runs the real module
    try:
        real = importlib.import_module(name)
    except BaseException:
        sys.modules.setdefault(name, placeholder)
        raise
    # Holders of the placeholder now read the real names straight from it.
    placeholder.__dict__.update(real.__dict__)
    return real


def defer(name: str) -> None:
    """Install a placeholder for ``name`` unless it is imported already."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)  # imports the parent package only
    if spec is None:
        return
    placeholder = _Deferred(name)
    placeholder.__spec__ = spec
    placeholder.__loader__ = spec.loader
    placeholder.__package__ = spec.parent
    sys.modules[name] = placeholder
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, placeholder)


def install() -> None:
    for name in DEFERRED:
        defer(name)
