"""Trickles servers: the UDP transport and the plain-TCP HTTP fallback."""
