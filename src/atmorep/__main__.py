"""``python -m atmorep`` (and ``torchrun -m atmorep``) runs the CLI."""

import sys

from atmorep.cli import main

sys.exit(main())
