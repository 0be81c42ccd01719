"""``python -m labelcast``: the same as the ``labelcast`` command."""

import sys

from labelcast.cli import main

sys.exit(main())
