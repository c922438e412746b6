"""`python -m tradebeat_pipeline.cli` is `tradebeat`."""

import sys

from tradebeat_pipeline.cli import main

sys.exit(main())
