"""``python -m cagul`` = the ``cagul`` command."""

import sys

from .cli import main

sys.exit(main())
