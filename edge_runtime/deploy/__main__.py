"""``python -m edge_runtime.deploy`` is ``edge-deploy``."""

import sys

from .cli import main

sys.exit(main())
