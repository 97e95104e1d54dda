"""``python -m descartes_fast``: the ``descartes-fast`` command."""

import sys

from descartes_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
