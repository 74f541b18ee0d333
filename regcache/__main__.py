"""`python -m regcache`."""

import sys

from regcache.cli import main

if __name__ == "__main__":
    sys.exit(main())
