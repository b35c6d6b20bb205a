"""``python -m ringflow.run -np N CMD…`` is ``ringflow run -np N CMD…``."""

from __future__ import annotations

import sys

from .cli import run_main

if __name__ == "__main__":
    sys.exit(run_main())
