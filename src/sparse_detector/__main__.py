"""``python -m sparse_detector`` (what ``torchrun -m sparse_detector`` runs): the ``sparse-detector`` command."""

import sys

from .cli import main

sys.exit(main())
