"""``python -m model_traffic``: the operator's command line."""

import sys

from model_traffic.cli import main

sys.exit(main())
