"""``python -m pclab``: the command line, also what ``torchrun ... -m pclab train`` runs."""

import sys

from .cli import main

sys.exit(main())
