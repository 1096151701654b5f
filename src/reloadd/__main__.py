"""``python -m reloadd`` runs the daemon's command line."""

import sys

from reloadd.cli import main

sys.exit(main())
