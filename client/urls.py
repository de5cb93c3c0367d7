"""``tcurl``'s URL handling: an ``http://`` URL, parsed as curl parses it, into the request head.

:func:`parse_url` splits and normalises the URL (dot segments, IDNA host, percent-encoding);
:func:`build_request_headers` adds curl's default headers and applies ``-H``.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from .exit_codes import EXIT_MALFORMED_URL, EXIT_UNSUPPORTED_PROTOCOL
from .options import Options

__all__ = ["ParsedUrl", "UrlError", "build_request_headers", "parse_url"]

# curl >= 8.10 saves "-O" downloads whose URL has no file name under this name.
DEFAULT_REMOTE_NAME = "curl_response"


class UrlError(Exception):
    """A URL tcurl cannot use: exit code 1 (unsupported protocol) or 3 (malformed)."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.message = message


@dataclass(frozen=True)
class ParsedUrl:
    """An ``http://`` URL split for the transport and the request line."""

    text: str
    host: str  # as passed to the transport (IPv6 without brackets)
    port: int
    target: str  # path and query, percent-encoded where needed
    host_header: str
    userinfo: str | None = None

    @property
    def file_name(self) -> str:
        """The name ``-O`` saves to: the last path segment, or curl's fallback name."""
        name = self.target.split("?", 1)[0].rsplit("/", 1)[-1]
        return DEFAULT_REMOTE_NAME if name in ("", ".", "..") else name


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9._~\-%]+$")
_BAD_URL = "URL rejected: Malformed input to a URL function"


def parse_url(text: str, *, path_as_is: bool = False) -> ParsedUrl:
    """Parse ``[http://]HOST[:PORT][/PATH][?QUERY]`` like curl (no scheme means http)."""
    if not text or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise UrlError(EXIT_MALFORMED_URL, _BAD_URL)
    rest = text
    scheme_match = _SCHEME_RE.match(text)
    if scheme_match is not None:
        scheme = scheme_match.group(1).lower()
        if scheme != "http":
            raise UrlError(EXIT_UNSUPPORTED_PROTOCOL, f'Protocol "{scheme}" not supported')
        rest = text[scheme_match.end() :]
    end = len(rest)
    for separator in "/?#":
        found = rest.find(separator)
        if found >= 0:
            end = min(end, found)
    authority, target = rest[:end], rest[end:].split("#", 1)[0]
    userinfo, _, hostport = authority.rpartition("@")
    host, port = _split_host_port(hostport)
    if not target.startswith("/"):
        target = "/" + target
    path, question, query = target.partition("?")
    if not path_as_is:
        path = _remove_dot_segments(path)
    target = _percent_encode_non_ascii(path + question + query)
    bracketed = f"[{host}]" if ":" in host else host
    return ParsedUrl(
        text=text,
        host=host,
        port=port,
        target=target,
        host_header=bracketed if port == 80 else f"{bracketed}:{port}",
        userinfo=userinfo or None,
    )


def _split_host_port(hostport: str) -> tuple[str, int]:
    """``host[:port]`` or ``[v6][:port]`` -> (host, port): IDNA-encoded names, port 80 by default."""
    if hostport.startswith("["):
        close = hostport.find("]")
        if close < 0:
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad IPv6 address")
        host, after = hostport[1:close], hostport[close + 1 :]
        if after and not after.startswith(":"):
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad IPv6 address")
        port_text = after[1:]
        if not host or not re.fullmatch(r"[0-9A-Fa-f:.]+", host):
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad IPv6 address")
    else:
        host, _, port_text = hostport.partition(":")
        if not host:
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: No host part in the URL")
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad hostname")
        if not _HOSTNAME_RE.match(host):
            raise UrlError(EXIT_MALFORMED_URL, "URL rejected: Bad hostname")
    if not port_text:
        return host, 80
    if not port_text.isdigit() or int(port_text) > 65535:
        raise UrlError(
            EXIT_MALFORMED_URL,
            "URL rejected: Port number was not a decimal number between 0 and 65535",
        )
    return host, int(port_text)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, which curl applies unless --path-as-is."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    result = "/" + "/".join(kept)
    if segments and segments[-1] in (".", "..") and not result.endswith("/"):
        result += "/"
    return result


def _percent_encode_non_ascii(target: str) -> str:
    return "".join(
        ch if ch.isascii() else "".join(f"%{byte:02X}" for byte in ch.encode("utf-8")) for ch in target
    )


def build_request_headers(url: ParsedUrl, opts: Options) -> list[tuple[str, str]]:
    """curl's default request headers; a -H of the same name replaces or removes one."""
    defaults: list[tuple[str, str]] = [("Host", url.host_header)]
    if url.userinfo is not None:
        token = base64.b64encode(url.userinfo.encode("utf-8")).decode("ascii")
        defaults.append(("Authorization", f"Basic {token}"))
    if opts.byte_range is not None:
        defaults.append(("Range", f"bytes={opts.byte_range}"))
    if opts.user_agent:
        defaults.append(("User-Agent", opts.user_agent))
    defaults.append(("Accept", "*/*"))
    # h11 cannot send a request without Host, so "-H Host:" keeps the default one.
    overridden = {name.lower() for name, value in opts.headers if value is not None or name.lower() != "host"}
    headers = [(name, value) for name, value in defaults if name.lower() not in overridden]
    headers += [(name, value) for name, value in opts.headers if value is not None]
    return headers
