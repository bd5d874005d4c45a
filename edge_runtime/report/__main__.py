"""``python -m edge_runtime.report RUN_DIR``: what ``edge-run --report`` calls, in a subprocess,
because the runtime may not import this package (layer contract)."""

import sys

from .cli import main

sys.exit(main())
