"""ringflow against torch gloo across shaped links: K network-namespace "hosts", one rank each.

    python benchmarks/netlab_compare.py --hosts 4 --rate 1gbit -b 64K -e 64M -f 4

Builds the lab with ../shared/tools/netlab (root and iproute2 needed; addresses 198.18.0.0/24
only), runs the same sweep as `ringflow bench` with each rank inside its own namespace — rank 0
on host 0 hosts the rendezvous, the others reach it over their shaped links — and prints the
same tables, with the link rate for reference. The lab is taken down however the run ends.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

from ringflow.bench import report
from ringflow.bench.cli import _size
from ringflow.bench.launch import SystemRun, _environment, _read_rows
from ringflow.bench.spec import SweepSpec, size_range

NETLAB = Path(__file__).resolve().parents[2] / "shared" / "tools" / "netlab"
STORE_PORT = 29800
GLOO_PORT = 29810


def netlab(*args: str) -> str:
    """Run the netlab tool; its output."""
    done = subprocess.run(["bash", str(NETLAB), *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def rank_command(system: str, spec: SweepSpec, result: Path) -> list[str]:
    worker = ["--spec", spec.to_json(), "--result", str(result)]
    if system == "ringflow":
        return [sys.executable, "-m", "ringflow.bench.sweep", *worker]
    return [sys.executable, "-m", "ringflow.bench.peers", system, *worker]


def run_in_lab(system: str, spec: SweepSpec, hosts: int, timeout: float) -> SystemRun:
    """One system's sweep with rank i in namespace i; rank 0 writes the rows."""
    head = netlab("addr", "0")
    with tempfile.TemporaryDirectory(prefix="ringflow-netlab-") as tmp:
        result = Path(tmp) / f"{system}.jsonl"
        procs = []
        secret = secrets.token_hex(16)
        for rank in range(hosts):
            env = _environment(
                {
                    "RINGFLOW_RANK": str(rank),
                    "RINGFLOW_SIZE": str(hosts),
                    "RINGFLOW_STORE_ADDR": head,
                    "RINGFLOW_STORE_PORT": str(STORE_PORT),
                    "RINGFLOW_SECRET": secret,
                    "RINGFLOW_JOB_ID": f"netlab-{system}",
                    # The namespaces share this machine's memory: auto would pick shm.
                    "RINGFLOW_TRANSPORT": "tcp",
                    "MASTER_ADDR": head,
                    "MASTER_PORT": str(GLOO_PORT),
                    "GLOO_SOCKET_IFNAME": "eth0",
                }
            )
            command = ["bash", str(NETLAB), "exec", str(rank), *rank_command(system, spec, result)]
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, text=True))
        codes = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                for other in procs:
                    other.kill()
                codes.append(-9)
        run = SystemRun(system, _read_rows(result))
    if any(codes):
        run.status, run.reason = "failed", f"exit codes {codes}"
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--rate", default="1gbit", help="tc rate of every link, e.g. 1gbit")
    parser.add_argument("-b", "--minbytes", type=_size, default=_size("64K"))
    parser.add_argument("-e", "--maxbytes", type=_size, default=_size("64M"))
    parser.add_argument("-f", "--stepfactor", type=int, default=4)
    parser.add_argument("-w", "--warmup", type=int, default=2)
    parser.add_argument("-n", "--iters", type=int, default=5)
    parser.add_argument("--peers", default="gloo")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("netlab_compare: needs root (network namespaces)", file=sys.stderr)
        return 2
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
        runs = [run_in_lab("ringflow", spec, args.hosts, args.timeout)]
        for peer in filter(None, args.peers.split(",")):
            runs.append(run_in_lab(peer, spec, args.hosts, args.timeout))
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            print(netlab("down"))
    report.attach_ratios(runs)
    config = {
        "collective": "allreduce",
        "nranks": args.hosts,
        "dtype": "float32",
        "op": "sum",
        "root": 0,
        "warmup": args.warmup,
        "iters": args.iters,
        "check": True,
        "transport": f"tcp across netlab, {args.hosts} hosts, links {args.rate}",
        "sizes": list(spec.sizes),
        "command": " ".join(sys.argv),
        "cpus": os.cpu_count(),
        "loadavg_1min": [round(os.getloadavg()[0], 2)] * 2,
    }
    sys.stdout.write(report.table(runs, config))
    return 0 if all(run.status == "ok" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
