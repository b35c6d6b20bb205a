"""The ``ringflow`` command line: ``ringflow run -np N [--] CMD…`` and ``ringflow bench …``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from .. import bench
from .._argtypes import int_at_least, positive_seconds
from .hosts import parse_hostfile, parse_hosts
from .launcher import TIMEOUT_EXIT_CODE, launch
from .multihost import launch_hosts

__all__ = ["build_parser", "build_run_parser", "main", "run_main"]


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-np",
        "--num-proc",
        dest="num_proc",
        type=int_at_least(1),
        required=True,
        metavar="N",
        help="number of ranks to start (on this host, or spread over -H / --hostfile)",
    )
    hosts = parser.add_mutually_exclusive_group()
    hosts.add_argument(
        "-H",
        "--hosts",
        metavar="HOST:SLOTS,...",
        help="run on these hosts (ssh, except localhost), filling each one's slots in order",
    )
    hosts.add_argument(
        "--hostfile", metavar="FILE", help="like -H, from lines 'host slots=N' ('#': comment)"
    )
    parser.add_argument("--ssh-port", type=int_at_least(1), metavar="PORT", help="ssh port")
    parser.add_argument("-i", "--ssh-identity-file", metavar="KEY", help="ssh private key (ssh -i)")
    parser.add_argument(
        "--network-interface",
        metavar="IFACE",
        help="host the store on, and send data over, this interface (e.g. eth1); default: "
        "the one that reaches the hosts",
    )
    parser.add_argument(
        "--start-timeout",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="fail when some rank has not started this long after launch (default 30)",
    )
    parser.add_argument(
        "-x",
        dest="exports",
        action="append",
        default=[],
        metavar="VAR[=VALUE]",
        help="pass this variable (this shell's value, or VALUE) to every rank; RINGFLOW_* "
        "variables always pass",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help=f"stop the whole job after this wall-clock time and exit {TIMEOUT_EXIT_CODE}",
    )
    parser.add_argument(
        "--grace-period",
        type=positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="after SIGTERM, wait this long before SIGKILL when stopping ranks (default 5)",
    )
    parser.add_argument(
        "--bind-to",
        choices=("none", "core"),
        default="none",
        help="core: pin rank r to the r-th available CPU, round robin (default none)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="report the store, each rank's pid and exit"
    )
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="CMD",
        help="the program each rank runs, with its arguments (after an optional --)",
    )


_RUN_DESCRIPTION = """\
Start N ranks of CMD on this host. Each output line is prefixed with "[rank] " (a rank's stdout
goes to stdout, its stderr to stderr). When a rank fails, the others are stopped (SIGTERM, then
SIGKILL after the grace period) and ringflow exits with the first failing rank's code (128+N if
it was killed by signal N). SIGINT and SIGTERM are forwarded to the ranks.

With -H or --hostfile the ranks are spread over hosts: one `ssh -o BatchMode=yes HOST python -m
ringflow.agent` per host (localhost runs without ssh; RINGFLOW_SSH_COMMAND replaces `ssh`). The
first failure stops the job on every host and names the rank and host; SIGINT stops it
everywhere."""


def build_parser(prog: str = "ringflow") -> argparse.ArgumentParser:
    """The ``ringflow`` parser, one subparser per subcommand."""
    parser = argparse.ArgumentParser(
        prog=prog, description="ringflow: collective communication for Python", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        help="start a job of N local ranks",
        description=_RUN_DESCRIPTION,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(run)
    bench.add_parser(commands)
    return parser


def build_run_parser(prog: str = "python -m ringflow.run") -> argparse.ArgumentParser:
    """The parser of ``python -m ringflow.run``: ``ringflow run`` without the subcommand word."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_RUN_DESCRIPTION,
        allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ringflow`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.subcommand == "bench":
        return bench.main(args)
    return _dispatch(parser, args)


def run_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ringflow.run``; returns the exit code."""
    parser = build_run_parser()
    return _dispatch(parser, parser.parse_args(argv))


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no command given: ringflow run -np N [--] CMD [ARG...]")
    if args.hosts is not None or args.hostfile is not None:
        try:
            hosts = (
                parse_hosts(args.hosts) if args.hosts is not None else parse_hostfile(args.hostfile)
            )
            return launch_hosts(
                command,
                args.num_proc,
                hosts,
                ssh_port=args.ssh_port,
                ssh_identity=args.ssh_identity_file,
                network_interface=args.network_interface,
                exports=args.exports,
                start_timeout=args.start_timeout,
                timeout=args.timeout,
                grace_period=args.grace_period,
                verbose=args.verbose,
                bind_to=args.bind_to,
            )
        except (OSError, ValueError) as e:
            parser.error(str(e))
    if args.network_interface is not None:
        os.environ["RINGFLOW_NETWORK_INTERFACE"] = args.network_interface
    for item in args.exports:  # one host: ranks inherit everything; -x VAR=VALUE still sets
        name, sep, value = item.partition("=")
        if sep:
            os.environ[name] = value
    return launch(
        command,
        args.num_proc,
        timeout=args.timeout,
        grace_period=args.grace_period,
        verbose=args.verbose,
        bind_to=args.bind_to,
    )
