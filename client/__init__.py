"""Trickles HTTP client: the ``tcurl`` command and its pluggable transports."""
