"""The real-server fixtures of the integration suite (a served site and a key file)."""

from ..integration.conftest import key_file, site

__all__ = ["key_file", "site"]
