"""``python -m maestro`` is the ``maestro`` command."""

import sys

from .cli import main

sys.exit(main())
