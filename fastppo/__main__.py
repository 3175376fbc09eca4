"""``python -m fastppo``: the command line (see ``fastppo.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
