"""Slurm's variables read by init(): node lists, tasks per node, the step rule, the store address."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringflow import _slurm
from ringflow._environment import detect


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("n1", ["n1"]),
        ("n[2-3,5]", ["n2", "n3", "n5"]),
        ("a[01-02]b", ["a01b", "a02b"]),
        ("node[08-10]", ["node08", "node09", "node10"]),
        ("x1,y[1-2],z", ["x1", "y1", "y2", "z"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("gpu-[7]", ["gpu-7"]),
        ("", []),
    ],
)
def test_nodelist(text, names):
    assert _slurm.parse_nodelist(text) == names


@pytest.mark.parametrize("text", ["n[1-2", "n1-2]", "n[a-b]", "n[[1]]"])
def test_bad_nodelist_names_the_variable(text):
    with pytest.raises(ValueError, match="SLURM_STEP_NODELIST"):
        _slurm.parse_nodelist(text)


@pytest.mark.parametrize(
    ("text", "counts"),
    [("2", [2]), ("2(x2),1", [2, 2, 1]), ("1,3(x3)", [1, 3, 3, 3]), ("4(x1)", [4])],
)
def test_tasks_per_node(text, counts):
    assert _slurm.parse_tasks_per_node(text) == counts


def test_bad_tasks_per_node():
    with pytest.raises(ValueError, match="SLURM_STEP_TASKS_PER_NODE"):
        _slurm.parse_tasks_per_node("2(x)")


def step_env(rank: int, node: str, local_id: int, **extra: str) -> dict[str, str]:
    """As srun -N3 -n5 with 2, 2, 1 tasks on nodes n[2-3,5] sets it for one task."""
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "3",
        "SLURM_PROCID": str(rank),
        "SLURM_NTASKS": "5",
        "SLURM_STEP_NUM_TASKS": "5",
        "SLURM_LOCALID": str(local_id),
        "SLURM_STEP_NODELIST": "n[2-3,5]",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
        "SLURMD_NODENAME": node,
        "RINGFLOW_SECRET": "batch-script-secret",
    }
    env.update(extra)
    return env


@pytest.mark.parametrize(
    ("rank", "node", "local_id", "local_size"),
    [(0, "n2", 0, 2), (1, "n2", 1, 2), (2, "n3", 0, 2), (3, "n3", 1, 2), (4, "n5", 0, 1)],
)
def test_step_maps_to_the_job(monkeypatch, rank, node, local_id, local_size):
    # The first node's address, as name resolution (or scontrol) gives it.
    monkeypatch.setattr(_slurm, "store_host", lambda task: f"addr-of-{task.nodes[0]}")
    cfg = detect(step_env(rank, node, local_id))
    assert (cfg.source, cfg.rank, cfg.size, cfg.local_rank, cfg.local_size) == (
        "slurm",
        rank,
        5,
        local_id,
        local_size,
    )
    assert cfg.store_addr == "addr-of-n2"
    assert cfg.store_port == 20000 + (31 * 4242 + 3) % 10000 == _slurm.store_port(4242, 3)
    assert cfg.secret == b"batch-script-secret"


def test_node_index_falls_back_to_slurm_nodeid(monkeypatch):
    monkeypatch.setattr(_slurm, "store_host", lambda task: "h")
    env = step_env(4, "n5", 0)
    del env["SLURMD_NODENAME"]
    env["SLURM_NODEID"] = "2"
    assert detect(env).local_size == 1


def test_next_step_gets_another_port():
    ports = {_slurm.store_port(4242, step) for step in range(50)}
    assert len(ports) == 50 and all(20000 <= port < 30000 for port in ports)


def test_user_address_and_port_win(monkeypatch):
    monkeypatch.setattr(_slurm, "store_host", lambda task: pytest.fail("must not resolve"))
    cfg = detect(step_env(1, "n2", 1, MASTER_ADDR="head", MASTER_PORT="7000"))
    assert (cfg.store_addr, cfg.store_port) == ("head", 7001)
    cfg = detect(step_env(1, "n2", 1, RINGFLOW_STORE_ADDR="s", RINGFLOW_STORE_PORT="9"))
    assert (cfg.store_addr, cfg.store_port) == ("s", 9)
    # Each on its own: the address the user's, the port derived (and the other way round).
    cfg = detect(step_env(1, "n2", 1, MASTER_ADDR="head"))
    assert (cfg.store_addr, cfg.store_port) == ("head", _slurm.store_port(4242, 3))
    monkeypatch.undo()
    monkeypatch.setattr(_slurm, "store_host", lambda task: "first-node")
    cfg = detect(step_env(1, "n2", 1, RINGFLOW_STORE_PORT="9"))
    assert (cfg.store_addr, cfg.store_port) == ("first-node", 9)


def test_one_node_step_uses_loopback_and_needs_no_secret():
    env = step_env(1, "n2", 1, SLURM_STEP_NODELIST="n2", SLURM_STEP_TASKS_PER_NODE="5")
    del env["RINGFLOW_SECRET"]
    cfg = detect(env)
    assert (cfg.store_addr, cfg.local_size, cfg.secret_is_default) == ("127.0.0.1", 5, True)


def test_several_nodes_need_the_secret(monkeypatch):
    monkeypatch.setattr(_slurm, "store_host", lambda task: "10.1.2.3")
    env = step_env(0, "n2", 0)
    del env["RINGFLOW_SECRET"]
    with pytest.raises(ValueError, match="RINGFLOW_SECRET"):
        detect(env)


def test_unresolvable_first_node_asks_scontrol(monkeypatch):
    calls = []

    def fake_scontrol(node):
        calls.append(node)
        return "198.18.0.9"

    def no_such_name(*args):
        raise OSError("Name or service not known")  # no DNS query leaves the test

    monkeypatch.setattr(_slurm.socket, "getaddrinfo", no_such_name)
    monkeypatch.setattr(_slurm, "_node_addr", fake_scontrol)
    task = _slurm.step(step_env(0, "n2", 0, SLURM_STEP_NODELIST="no-such-node.invalid,n3"))
    assert _slurm.store_host(task) == "198.18.0.9"
    assert calls == ["no-such-node.invalid"]


@pytest.mark.parametrize(
    "env",
    [
        # A batch script or salloc shell: the allocation's numbers, no running set of ranks.
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "7"},
        {"SLURM_NTASKS": "4"},
    ],
)
def test_outside_a_step_is_a_single_process(env):
    assert detect(env).source == "single"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"SLURM_PROCID": "5"}, ["SLURM_PROCID", "SLURM_STEP_NUM_TASKS"]),
        ({"SLURM_PROCID": ""}, ["SLURM_PROCID"]),
        ({"SLURM_LOCALID": "x"}, ["SLURM_LOCALID", "'x'"]),
        ({"SLURM_STEP_NUM_TASKS": "-1"}, ["SLURM_STEP_NUM_TASKS", "'-1'"]),
        ({"SLURM_STEP_TASKS_PER_NODE": "2(x"}, ["SLURM_STEP_TASKS_PER_NODE"]),
        ({"SLURM_STEP_NODELIST": ""}, ["SLURM_STEP_NODELIST", "RINGFLOW_STORE_ADDR"]),
    ],
)
def test_bad_step_variables_are_named(changes, words):
    with pytest.raises(ValueError) as excinfo:
        detect(step_env(0, "n2", 0, **changes))
    for word in words:
        assert word in str(excinfo.value)


@settings(max_examples=40, deadline=None)
@given(
    prefix=st.from_regex(r"[a-z][a-z-]{0,5}", fullmatch=True),
    low=st.integers(0, 120),
    extra=st.integers(0, 30),
    width=st.integers(1, 4),
)
def test_ranges_keep_their_padding(prefix, low, extra, width):
    high = low + extra
    text = f"{prefix}[{low:0{width}d}-{high:0{width}d}]"
    assert _slurm.parse_nodelist(text) == [f"{prefix}{n:0{width}d}" for n in range(low, high + 1)]
