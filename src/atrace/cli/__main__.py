"""``python -m atrace.cli``: the ``atrace`` command without its console script."""

import sys

from . import main

sys.exit(main())
