"""``python -m xensf``: the ``xensf`` command."""

import sys

from .cli import main

sys.exit(main())
