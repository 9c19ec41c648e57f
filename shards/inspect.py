#!/usr/bin/env python
"""Same as ``emodifftalk inspect SHARDS [--validate] [--json]``."""

import os
import sys

# This file is named like the stdlib module `inspect`: drop its folder from the import path first.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from emodifftalk.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
