"""``python -m ringflow.agent``: read a job spec on stdin and run this host's ranks."""

from __future__ import annotations

import sys

from .node import main

if __name__ == "__main__":
    sys.exit(main())
