"""``python -m ringflow.bench COLLECTIVE …`` is ``ringflow bench COLLECTIVE …``."""

from __future__ import annotations

import sys

from ringflow.bench.cli import standalone

if __name__ == "__main__":
    sys.exit(standalone())
