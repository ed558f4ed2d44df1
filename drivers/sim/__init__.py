"""Simulated readers: real byte protocols spoken over a pty, for tests, the demo and
technicians (``sadad-reader-sim``). A driver opens the pty's link exactly as it would
open ``/dev/ttyUSB0``; nothing in the driver knows it is talking to a simulator."""
