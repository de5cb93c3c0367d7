"""``tcurl``'s exit codes, which are curl's:

====  ==========================================================================
code  meaning
====  ==========================================================================
0     success
1     unsupported protocol (``https://``, ``ftp://``...)
2     command-line usage error (unknown option, missing or bad argument, no URL)
3     malformed URL
6/7   could not resolve host / could not connect
8     weird server reply
18    partial transfer
22    HTTP status >= 400 with ``-f``
23    write error (``-o`` file cannot be created or written, stdout closed)
28    timeout (``-m``, ``--connect-timeout``)
43    internal error: a tcurl bug.  curl's code for "bad function argument"; used
      instead of 2 so that scripts can tell a tcurl bug from a usage mistake.
52    empty reply from server;  55 send failure;  56 receive failure
====  ==========================================================================

With several URLs the exit code is that of the last failed transfer, like curl.  The transport
failures (6, 7, 8, 18, 52, 55, 56) are carried by the exceptions of :mod:`trickles.client.api`.
"""

from typing import Final

EXIT_UNSUPPORTED_PROTOCOL: Final = 1
EXIT_USAGE: Final = 2
EXIT_MALFORMED_URL: Final = 3
EXIT_RESOLVE: Final = 6
EXIT_CONNECT: Final = 7
EXIT_HTTP_ERROR: Final = 22
EXIT_WRITE_ERROR: Final = 23
EXIT_TIMEOUT: Final = 28
EXIT_INTERNAL: Final = 43
