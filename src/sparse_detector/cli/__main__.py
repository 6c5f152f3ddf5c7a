"""``python -m sparse_detector.cli``: the ``sparse-detector`` command."""

import sys

from .entry import main

sys.exit(main())
