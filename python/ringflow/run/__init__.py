"""``ringflow run``: start a job of N local ranks (also ``python -m ringflow.run``)."""

from __future__ import annotations

from .cli import main
from .launcher import launch

__all__ = ["launch", "main"]
