"""``python -m tllib_jtln`` is the ``tllib-jtln`` command."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
