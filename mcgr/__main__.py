"""``python -m mcgr``: the ``mcgr`` command."""
import sys

from mcgr.cli import main

sys.exit(main())
