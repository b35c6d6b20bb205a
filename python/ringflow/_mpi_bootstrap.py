"""Under ``mpirun`` with no store address: agree on one through MPI itself.

Horovod users start jobs with a plain ``mpirun -np N python train.py`` and set nothing else. As
NCCL's MPI examples broadcast their unique id, rank 0 picks its store address and a free port, makes
a random job secret and job id, and broadcasts them over ``MPI.COMM_WORLD``; every rank then joins
that store. mpi4py is imported only here, so ``import ringflow`` never starts MPI. Importing
``mpi4py.MPI`` initialises MPI as mpi4py always does (and finalises it at exit), so a script that
uses mpi4py itself afterwards gets the same, already initialised, MPI.
"""

from __future__ import annotations

import fcntl
import ipaddress
import secrets
import socket
import struct

__all__ = ["shared_settings"]

_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def shared_settings(rank: int, size: int, one_host: bool, secret_set: bool) -> dict[str, str]:
    """RINGFLOW_* settings alike on every rank (rank 0 chooses; every rank must call this)."""
    try:
        from mpi4py import MPI
    except ImportError:
        raise ValueError(
            f"a job of {size} processes started by mpirun needs the store address: install "
            "mpi4py (pip install mpi4py; ringflow then shares the address through MPI), or set "
            "RINGFLOW_STORE_ADDR (or MASTER_ADDR and MASTER_PORT) and RINGFLOW_SECRET on every rank"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size or comm.Get_rank() != rank:
        raise ValueError(
            f"MPI.COMM_WORLD (rank {comm.Get_rank()} of {comm.Get_size()}) does not match "
            f"OMPI_COMM_WORLD_RANK={rank} of OMPI_COMM_WORLD_SIZE={size}"
        )
    settings: dict[str, str] | None = None
    if rank == 0:
        host = "127.0.0.1" if one_host else _own_address()
        settings = {
            "RINGFLOW_STORE_ADDR": host,
            "RINGFLOW_STORE_PORT": str(_free_port(host)),
            "RINGFLOW_JOB_ID": f"mpi-{secrets.token_hex(8)}",
        }
        if not secret_set:
            # MPI's own channel carries it: only the job's ranks learn it.
            settings["RINGFLOW_SECRET"] = secrets.token_hex(32)
    return comm.bcast(settings, root=0)


def _free_port(host: str) -> int:
    # Closed before the store binds it: a short race with other programs, as torchrun's is.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _own_address() -> str:
    """A non-loopback IPv4 address of this host: its name's, else its first interface's.

    Only addresses this process can bind count: in a network namespace (or a container) the
    host name may resolve to an address that lives elsewhere.
    """
    candidates = []
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        candidates += [str(info[4][0]) for info in infos]
    except OSError:
        pass
    candidates += [_interface_address(name) for _, name in socket.if_nameindex()]
    for address in candidates:
        if address and not ipaddress.ip_address(address).is_loopback and _bindable(address):
            return address
    raise ValueError(
        "mpirun across hosts: rank 0 found no non-loopback IPv4 address to host the store on; "
        "set RINGFLOW_STORE_ADDR and RINGFLOW_SECRET on every rank"
    )


def _bindable(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
        return True


def _interface_address(name: str) -> str | None:
    # Linux: SIOCGIFADDR fills a struct ifreq whose sockaddr_in address sits at bytes 20..23.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            request = struct.pack("256s", name.encode()[:15])
            reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
        except OSError:
            return None  # no IPv4 address on this interface
        return socket.inet_ntoa(reply[20:24])
