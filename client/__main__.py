"""Allow ``python -m trickles.client`` as an equivalent of ``tcurl``."""

import sys

from trickles.client.cli import main

sys.exit(main())
