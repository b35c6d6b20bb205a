"""Writes a small seed corpus for each fuzz target, so the fuzzer starts past the magic checks.

Usage: python fuzz/seeds.py OUTDIR  (writes OUTDIR/frame_fuzzer/, handshake_fuzzer/, store_fuzzer/)
The layouts mirror csrc/ringflow/transport/frame.h, net/handshake.cc and store/store_protocol.h.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from pathlib import Path

FRAME_MAGIC = 0x52464652
P2P_FLAG = 1  # frame_fuzzer spec flag: point-to-point tag
VARIABLE_FLAG = 2  # frame_fuzzer spec flag: variable length
HELLO_MAGIC = 0x52464C57
PROTOCOL_VERSION = 1
ROLE_PEER = 3
SET, GET, ADD, WAIT = 1, 2, 3, 4


def frame(tag: int, payload: bytes, kind: int = 1, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("<IIQQ", FRAME_MAGIC, kind, tag, size) + payload


def recv_specs(*specs: tuple[int, int, int]) -> bytes:
    """frame_fuzzer's prefix: the receive count, then (length, tag, flags) per receive."""
    out = bytes([len(specs) - 1])
    for length, tag, flags in specs:
        out += struct.pack("<HBB", length, tag, flags)
    return out


def frame_seeds() -> dict[str, bytes]:
    p2p = 1 << 63
    return {
        "one": recv_specs((16, 1, 0)) + frame(1, bytes(range(16))),
        "two": recv_specs((8, 2, 0), (4, 3, 0)) + frame(2, b"a" * 8) + frame(3, b"b" * 4),
        "empty": recv_specs((0, 5, 0)) + frame(5, b""),
        "p2p_shorter": recv_specs((32, 1, P2P_FLAG | VARIABLE_FLAG)) + frame(p2p | 1, b"x" * 8),
        "p2p_longer": recv_specs((4, 1, P2P_FLAG | VARIABLE_FLAG)) + frame(p2p | 1, b"y" * 40),
        "abort": recv_specs((8, 1, 0)) + frame(0, b"rank 1 gave up", kind=2),
        "wrong_tag": recv_specs((8, 1, 0)) + frame(9, b"z" * 8),
        "too_long": recv_specs((8, 1, 0)) + frame(1, b"z" * 8, length=2**63),
        "big": recv_specs((4000, 7, 0)) + frame(7, bytes(4000)),
    }


def hello(rank: int = 1, job: bytes = b"fuzz-job", version: int = PROTOCOL_VERSION) -> bytes:
    nonce = hashlib.sha256(b"nonce%d" % rank).digest()
    header = struct.pack(
        "<IHBBiIH32s", HELLO_MAGIC, version, ROLE_PEER, 0, rank, 0, len(job), nonce
    )
    return header + job


def handshake_seeds() -> dict[str, bytes]:
    proof = hashlib.sha256(b"not a real proof").digest()
    return {
        "full": hello() + proof + b"\x00",
        "refused_rank": hello(rank=7) + proof + b"\x00",
        "wrong_job": hello(job=b"other-job") + proof + b"\x00",
        "wrong_version": hello(version=2) + proof + b"\x00",
        "truncated": hello()[:20],
        "hello_only": hello(),
    }


def string(data: bytes) -> bytes:
    return struct.pack("<I", len(data)) + data


def store_seeds() -> dict[str, bytes]:
    set_a = bytes([SET]) + string(b"a") + string(b"1")
    get_a = bytes([GET]) + string(b"a") + struct.pack("<I", 0)
    add_n = bytes([ADD]) + string(b"n") + struct.pack("<q", 5)
    wait_ab = bytes([WAIT]) + struct.pack("<I", 2) + string(b"a") + string(b"b")
    wait_ab += struct.pack("<I", 0)
    return {
        "set_get": set_a + get_a,
        "add_add": add_n + add_n,
        "add_on_text": set_a + bytes([SET]) + string(b"n") + string(b"x") + add_n,
        "wait": set_a + wait_ab,
        "missing": get_a,
        "huge_length": bytes([SET]) + struct.pack("<I", 0xFFFFFFFF),
        "all": set_a + add_n + get_a + wait_ab,
    }


def main() -> None:
    out = Path(sys.argv[1])
    for target, seeds in (
        ("frame_fuzzer", frame_seeds()),
        ("handshake_fuzzer", handshake_seeds()),
        ("store_fuzzer", store_seeds()),
    ):
        directory = out / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / name).write_bytes(data)


if __name__ == "__main__":
    main()
