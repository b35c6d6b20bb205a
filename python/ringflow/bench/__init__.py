"""``ringflow bench``: nccl-tests-style sweeps of ringflow beside torch gloo and Open MPI.

Modules, one job each: spec (sizes and nccl-tests conventions), data (inputs with exact
results), sweep (the per-rank loop and ringflow's worker), peers (gloo and MPI workers), launch
(the parent starts each system's ranks), report (table, CSV, JSON, plot), cli (the command).
This file imports none of them up front: rank processes run ``python -m ringflow.bench.sweep``.
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "main"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``bench`` subcommand on an argparse subparsers object."""
    from ringflow.bench import cli

    return cli.add_parser(subparsers)


def main(args: argparse.Namespace) -> int:
    """Run ``ringflow bench`` with the arguments that `add_parser`'s parser produced."""
    from ringflow.bench import cli

    return cli.main(args)
