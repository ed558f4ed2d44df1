"""The checkout and setup widgets, one per module."""
