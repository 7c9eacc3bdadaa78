"""``python -m jaxdigits`` runs the command line."""

import sys

from jaxdigits.cli import main

sys.exit(main())
