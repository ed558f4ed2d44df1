"""Local stand-in for SadadSystem (payment gateway) and SadadTMS (MQTT pushes).

See ``sandbox/README.md``; the command is ``sadad-sandbox`` (``sandbox.cli``).
"""
