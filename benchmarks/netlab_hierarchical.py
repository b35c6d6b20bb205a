"""Hierarchical against flat allreduce across shaped links: H netlab "hosts", L ranks on each.

    python benchmarks/netlab_hierarchical.py --hosts 2 --per-host 2 --rate 1gbit -b 1M -e 64M

Builds a lab with tools/netlab (root and iproute2 needed; addresses 198.18.0.0/24 only), runs the
`ringflow bench` allreduce sweep once with RINGFLOW_HIERARCHICAL=on and once with off (ranks placed
host by host, as `ringflow run -H` places them; `--placement round-robin` deals them out), and
prints busbw for both against the link rate. Every pair uses TCP (RINGFLOW_TRANSPORT=tcp): the
namespaces share this machine's memory, so auto would carry cross-"host" pairs over shared memory
and never touch the shaped link; same-host pairs stay inside their namespace. The lab is taken
down however the run ends.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from ringflow.bench.cli import _size
from ringflow.bench.launch import _environment, _read_rows
from ringflow.bench.spec import SweepSpec, size_range

NETLAB = Path(__file__).resolve().parents[1] / "tools" / "netlab"
PREFIX = f"rh{os.getpid() % 10000:04d}"
STORE_PORT = 29820
RATES = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


def netlab(*args: str) -> str:
    env = dict(os.environ, NETLAB_PREFIX=PREFIX)
    done = subprocess.run(["bash", str(NETLAB), *args], check=True, capture_output=True, text=True,
                          env=env)  # fmt: skip
    return done.stdout.strip()


def link_gbps(rate: str) -> float:
    """tc's rate (e.g. 1gbit) in GB/s."""
    for unit, scale in RATES.items():
        if rate.endswith(unit):
            return float(rate[: -len(unit)]) * scale / 8 / 1e9
    raise ValueError(f"rate {rate!r}: expected a number and kbit, mbit or gbit")


def run(spec: SweepSpec, host_of: list[int], mode: str, timeout: float) -> list[dict]:
    """One sweep with RINGFLOW_HIERARCHICAL=mode; rank 0's rows."""
    n = len(host_of)
    with tempfile.TemporaryDirectory(prefix="ringflow-hier-") as tmp:
        result = Path(tmp) / "rows.jsonl"
        secret = secrets.token_hex(16)
        procs = []
        for rank in range(n):
            env = _environment({
                "RINGFLOW_RANK": str(rank),
                "RINGFLOW_SIZE": str(n),
                "RINGFLOW_LOCAL_RANK": str(host_of[:rank].count(host_of[rank])),
                "RINGFLOW_LOCAL_SIZE": str(host_of.count(host_of[rank])),
                "RINGFLOW_STORE_ADDR": "198.18.0.1",
                "RINGFLOW_STORE_PORT": str(STORE_PORT),
                "RINGFLOW_SECRET": secret,
                "RINGFLOW_JOB_ID": f"netlab-hier-{mode}",
                "RINGFLOW_TRANSPORT": "tcp",
                "RINGFLOW_HIERARCHICAL": mode,
            })  # fmt: skip
            worker = [sys.executable, "-m", "ringflow.bench.sweep", "--spec", spec.to_json(),
                      "--result", str(result)]  # fmt: skip
            command = ["ip", "netns", "exec", f"{PREFIX}h{host_of[rank]}", *worker]
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        try:
            codes = [proc.wait(timeout) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        if any(codes):
            raise RuntimeError(f"RINGFLOW_HIERARCHICAL={mode}: exit codes {codes}")
        return _read_rows(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--per-host", type=int, default=2)
    parser.add_argument("--placement", choices=("blocks", "round-robin"), default="blocks")
    parser.add_argument("--rate", default="1gbit", help="tc rate of every link, e.g. 1gbit")
    parser.add_argument("-b", "--minbytes", type=_size, default=_size("1M"))
    parser.add_argument("-e", "--maxbytes", type=_size, default=_size("64M"))
    parser.add_argument("-f", "--stepfactor", type=int, default=4)
    parser.add_argument("-w", "--warmup", type=int, default=1)
    parser.add_argument("-n", "--iters", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("netlab_hierarchical: needs root (network namespaces)", file=sys.stderr)
        return 2
    n = args.hosts * args.per_host
    host_of = [r // args.per_host if args.placement == "blocks" else r % args.hosts
               for r in range(n)]  # fmt: skip
    spec = SweepSpec(
        collective="allreduce",
        sizes=tuple(size_range(args.minbytes, args.maxbytes, args.stepfactor)),
        dtype="float32",
        op="sum",
        warmup=args.warmup,
        iters=args.iters,
    )
    print(netlab("up", str(args.hosts), args.rate))
    try:
        rows = {mode: run(spec, host_of, mode, args.timeout) for mode in ("on", "off")}
    finally:
        print(netlab("down"))
    link = link_gbps(args.rate)
    print(f"# {args.hosts} hosts x {args.per_host} ranks ({args.placement}), links {args.rate} "
          f"= {link:.4f} GB/s, float32 sum, median of {args.iters}; command: {' '.join(sys.argv)}")  # fmt: skip
    print(f"{'bytes':>10} {'flat busbw':>11} {'hier busbw':>11} {'flat/link':>9} {'hier/link':>9}"
          f" {'wrong':>5}")  # fmt: skip
    for hier, flat in zip(rows["on"], rows["off"]):
        wrong = (hier["wrong"] or 0) + (flat["wrong"] or 0)
        print(f"{hier['bytes']:>10} {flat['busbw_gbps']:>11.4f} {hier['busbw_gbps']:>11.4f} "
              f"{flat['busbw_gbps'] / link:>9.2f} {hier['busbw_gbps'] / link:>9.2f} {wrong:>5}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
