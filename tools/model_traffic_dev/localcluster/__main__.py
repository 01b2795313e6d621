"""`python -m model_traffic_dev.localcluster`: see cli.py."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
