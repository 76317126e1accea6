"""``python -m abmil``: the ``abmil`` command."""
import sys

from abmil.cli import main

if __name__ == "__main__":
    sys.exit(main())
