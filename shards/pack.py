#!/usr/bin/env python
"""Same as ``emodifftalk pack RAW_DIR OUT_DIR [--config tiny] [--overwrite] [overrides]``."""

import sys

from emodifftalk.cli import main

if __name__ == "__main__":
    sys.exit(main(["pack", *sys.argv[1:]]))
