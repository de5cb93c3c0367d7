"""Applications served by Trickles: HTTP request-head parsing and static file serving."""
