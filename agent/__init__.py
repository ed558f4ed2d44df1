"""agent package."""

from agent import deferred_imports

deferred_imports.install()  # before anything imports paho
