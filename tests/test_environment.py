"""Unit tests for ringflow._environment.detect() on dict environments (no processes)."""

from __future__ import annotations

import dataclasses
import logging
import sys

import pytest

from ringflow._environment import DEFAULT_TIMEOUT_S, RendezvousConfig, detect

LAUNCHER = {
    "RINGFLOW_RANK": "2",
    "RINGFLOW_SIZE": "4",
    "RINGFLOW_LOCAL_RANK": "0",
    "RINGFLOW_LOCAL_SIZE": "2",
    "RINGFLOW_STORE_ADDR": "10.0.0.1",
    "RINGFLOW_STORE_PORT": "4321",
    "RINGFLOW_STORE_EXTERNAL": "1",
    "RINGFLOW_SECRET": "s3cr\u00e9t",
    "RINGFLOW_JOB_ID": "job-7",
    "RINGFLOW_TIMEOUT": "12.5",
}

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
    "MASTER_ADDR": "node0",
    "MASTER_PORT": "29400",
    "RINGFLOW_SECRET": "torchrun-job-secret",
}

OPENMPI = {
    "OMPI_COMM_WORLD_RANK": "5",
    "OMPI_COMM_WORLD_SIZE": "6",
    "OMPI_COMM_WORLD_LOCAL_RANK": "2",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "3",
    "MASTER_ADDR": "mpihead",
    "RINGFLOW_SECRET": "mpi-job-secret",
}

SLURM = {
    "SLURM_PROCID": "1",
    "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2",
    "SLURM_LOCALID": "1",
    "MASTER_ADDR": "n1",
    "RINGFLOW_SECRET": "slurm-job-secret",
}

PMI = {"PMI_RANK": "0", "PMI_SIZE": "3", "MASTER_ADDR": "h", "RINGFLOW_SECRET": "pmi-job-secret"}


def test_no_launcher_is_a_single_process():
    cfg = detect({})
    assert (cfg.source, cfg.rank, cfg.size, cfg.local_rank, cfg.local_size) == (
        "single",
        0,
        1,
        0,
        1,
    )
    assert (cfg.store_addr, cfg.store_port, cfg.store_external) == ("127.0.0.1", 0, False)
    assert cfg.job_id == "127.0.0.1:0"
    assert cfg.timeout_s == DEFAULT_TIMEOUT_S == 300.0
    assert cfg.hosts_store


def test_default_argument_reads_os_environ(monkeypatch):
    for name in [*LAUNCHER, *TORCHRUN, *OPENMPI, *SLURM, *PMI]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RINGFLOW_TIMEOUT", "7")
    assert detect().timeout_s == 7.0


def test_ringflow_variables_are_read_completely():
    cfg = detect(LAUNCHER)
    assert cfg == RendezvousConfig(
        rank=2,
        size=4,
        local_rank=0,
        local_size=2,
        store_addr="10.0.0.1",
        store_port=4321,
        store_external=True,
        secret="s3cr\u00e9t".encode(),
        job_id="job-7",
        timeout_s=12.5,
        source="ringflow",
    )
    assert not cfg.hosts_store
    assert not cfg.secret_is_default


def test_config_is_frozen_and_hides_the_secret():
    cfg = detect(LAUNCHER)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rank = 0  # type: ignore[misc]
    assert "s3cr" not in repr(cfg)


def test_ringflow_local_fields_are_optional_together():
    env = {k: v for k, v in LAUNCHER.items() if "LOCAL" not in k}
    cfg = detect(env)
    assert (cfg.local_rank, cfg.local_size) == (None, None)


def test_torchrun():
    cfg = detect(TORCHRUN)
    assert (cfg.source, cfg.rank, cfg.size, cfg.local_rank, cfg.local_size) == (
        "torchrun",
        3,
        8,
        1,
        4,
    )
    # torchrun's own TCPStore sits on MASTER_PORT, ours goes one above.
    assert (cfg.store_addr, cfg.store_port, cfg.store_external) == ("node0", 29401, False)
    assert cfg.job_id == "node0:29401"
    assert not cfg.hosts_store


def test_torchrun_rank0_hosts_the_store():
    cfg = detect({**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0"})
    assert cfg.hosts_store


def test_torchrun_without_local_variables_leaves_them_to_the_core():
    env = {k: v for k, v in TORCHRUN.items() if not k.startswith("LOCAL")}
    cfg = detect(env)
    assert (cfg.local_rank, cfg.local_size) == (None, None)


def test_openmpi():
    cfg = detect(OPENMPI)
    assert (cfg.source, cfg.rank, cfg.size, cfg.local_rank, cfg.local_size) == (
        "openmpi",
        5,
        6,
        2,
        3,
    )
    assert (cfg.store_addr, cfg.store_port) == ("mpihead", 29501)


def test_slurm_has_no_local_size():
    cfg = detect(SLURM)
    assert (cfg.source, cfg.rank, cfg.size, cfg.local_rank, cfg.local_size) == (
        "slurm",
        1,
        2,
        1,
        None,
    )


def test_pmi():
    cfg = detect(PMI)
    assert (cfg.source, cfg.rank, cfg.size, cfg.local_rank, cfg.local_size) == (
        "pmi",
        0,
        3,
        None,
        None,
    )
    cfg = detect({**PMI, "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "3"})
    assert (cfg.local_rank, cfg.local_size) == (0, 3)


@pytest.mark.parametrize(
    ("envs", "expected"),
    [
        ((LAUNCHER, TORCHRUN, OPENMPI, SLURM, PMI), "ringflow"),
        ((TORCHRUN, OPENMPI, SLURM, PMI), "torchrun"),
        ((OPENMPI, SLURM, PMI), "openmpi"),
        ((SLURM, PMI), "slurm"),
        ((PMI,), "pmi"),
    ],
)
def test_precedence(envs, expected):
    merged: dict[str, str] = {}
    for env in reversed(envs):  # the first (highest precedence) wins any shared key
        merged.update(env)
    assert detect(merged).source == expected


def test_ringflow_store_variables_override_master_for_any_launcher():
    env = {
        **TORCHRUN,
        "RINGFLOW_STORE_ADDR": "store",
        "RINGFLOW_STORE_PORT": "5000",
        "RINGFLOW_STORE_EXTERNAL": "1",
        "RINGFLOW_SECRET": "x",
        "RINGFLOW_JOB_ID": "j",
        "RINGFLOW_TIMEOUT": "1",
    }
    cfg = detect(env)
    assert cfg.source == "torchrun"
    assert (cfg.store_addr, cfg.store_port, cfg.store_external) == ("store", 5000, True)
    assert (cfg.secret, cfg.job_id, cfg.timeout_s) == (b"x", "j", 1.0)


def test_default_port_without_master_port():
    env = {k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}
    assert detect(env).store_port == 29501


def test_store_external_zero_means_rank0_hosts():
    cfg = detect({**TORCHRUN, "RANK": "0", "RINGFLOW_STORE_EXTERNAL": "0"})
    assert not cfg.store_external
    assert cfg.hosts_store


@pytest.mark.parametrize("address", ["127.0.0.1", "127.3.2.1", "localhost", "::1"])
def test_default_secret_on_loopback_is_deterministic_per_job_and_flagged(caplog, address):
    local = {**TORCHRUN, "RINGFLOW_SECRET": None, "MASTER_ADDR": address}
    local = {key: value for key, value in local.items() if value is not None}
    with caplog.at_level(logging.WARNING, logger="ringflow"):
        a = detect(local)
    b = detect({**local, "RANK": "0"})
    c = detect({**local, "MASTER_PORT": "29600"})
    assert a.secret == b.secret != c.secret
    assert a.secret_is_default
    assert "RINGFLOW_SECRET" in caplog.text
    assert "not secure" in caplog.text


@pytest.mark.parametrize("address", ["node0", "10.0.0.1", "198.18.0.1", "::ffff:10.0.0.1"])
def test_multi_rank_job_off_loopback_needs_a_secret(address):
    remote = {key: value for key, value in TORCHRUN.items() if key != "RINGFLOW_SECRET"}
    with pytest.raises(ValueError, match=r"RINGFLOW_SECRET is not set and the store address"):
        detect({**remote, "MASTER_ADDR": address})
    single = {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": address, "MASTER_PORT": "29400"}
    assert detect(single).secret_is_default  # nobody else joins a one-rank job


def test_single_process_does_not_warn_about_the_secret(caplog):
    with caplog.at_level(logging.WARNING, logger="ringflow"):
        detect({})
    assert caplog.text == ""


def test_empty_values_count_as_unset():
    env = {**TORCHRUN, "RINGFLOW_STORE_ADDR": "", "RINGFLOW_RANK": "", "RINGFLOW_TIMEOUT": ""}
    cfg = detect(env)
    assert (cfg.source, cfg.store_addr, cfg.timeout_s) == ("torchrun", "node0", 300.0)


def test_whitespace_around_integers_is_accepted():
    cfg = detect({**TORCHRUN, "RANK": " 3 ", "WORLD_SIZE": "8\n"})
    assert (cfg.rank, cfg.size) == (3, 8)


def test_single_process_may_name_a_store():
    cfg = detect({"RINGFLOW_RANK": "0", "RINGFLOW_SIZE": "1"})
    assert (cfg.source, cfg.store_addr, cfg.store_port) == ("ringflow", "127.0.0.1", 0)
    cfg = detect({"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "a", "MASTER_PORT": "100"})
    assert (cfg.store_addr, cfg.store_port) == ("a", 101)


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({**TORCHRUN, "RANK": "three"}, ["RANK", "'three'"]),
        ({**TORCHRUN, "RANK": "1.0"}, ["RANK", "'1.0'"]),
        ({**TORCHRUN, "RANK": "1_0"}, ["RANK", "'1_0'"]),
        ({**TORCHRUN, "RANK": "-1"}, ["RANK", "'-1'"]),
        ({**TORCHRUN, "RANK": "8"}, ["RANK", "'8'", "WORLD_SIZE"]),
        ({**TORCHRUN, "WORLD_SIZE": "0", "RANK": "0"}, ["WORLD_SIZE", "'0'"]),
        ({**TORCHRUN, "LOCAL_RANK": "x"}, ["LOCAL_RANK", "'x'"]),
        ({**TORCHRUN, "LOCAL_RANK": "4"}, ["LOCAL_RANK", "'4'", "LOCAL_WORLD_SIZE"]),
        ({**TORCHRUN, "LOCAL_WORLD_SIZE": "9"}, ["LOCAL_WORLD_SIZE", "'9'"]),
        ({**TORCHRUN, "MASTER_PORT": "http"}, ["MASTER_PORT", "'http'"]),
        ({**TORCHRUN, "MASTER_PORT": "65535"}, ["MASTER_PORT", "'65535'"]),
        ({**TORCHRUN, "MASTER_PORT": "0"}, ["MASTER_PORT", "'0'"]),
        ({**TORCHRUN, "RINGFLOW_STORE_PORT": "70000"}, ["RINGFLOW_STORE_PORT", "'70000'"]),
        ({**TORCHRUN, "RINGFLOW_STORE_EXTERNAL": "yes"}, ["RINGFLOW_STORE_EXTERNAL", "'yes'"]),
        ({**TORCHRUN, "RINGFLOW_SECRET": ""}, ["RINGFLOW_SECRET"]),
        ({**TORCHRUN, "RINGFLOW_TIMEOUT": "soon"}, ["RINGFLOW_TIMEOUT", "'soon'"]),
        ({**TORCHRUN, "RINGFLOW_TIMEOUT": "0"}, ["RINGFLOW_TIMEOUT", "'0'"]),
        ({**TORCHRUN, "RINGFLOW_TIMEOUT": "-5"}, ["RINGFLOW_TIMEOUT", "'-5'"]),
        ({**TORCHRUN, "RINGFLOW_TIMEOUT": "nan"}, ["RINGFLOW_TIMEOUT", "'nan'"]),
        ({**TORCHRUN, "RINGFLOW_TIMEOUT": "inf"}, ["RINGFLOW_TIMEOUT", "'inf'"]),
        ({**OPENMPI, "OMPI_COMM_WORLD_SIZE": "2"}, ["OMPI_COMM_WORLD_RANK", "'5'"]),
        ({**SLURM, "SLURM_LOCALID": "2"}, ["SLURM_LOCALID", "'2'"]),
        ({**LAUNCHER, "RINGFLOW_RANK": "4"}, ["RINGFLOW_RANK", "'4'", "RINGFLOW_SIZE"]),
    ],
)
def test_bad_values_name_the_variable_and_value(env, names):
    with pytest.raises(ValueError) as excinfo:
        detect(env)
    for name in names:
        assert name in str(excinfo.value)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"RINGFLOW_RANK": "0"}, ["RINGFLOW_RANK", "RINGFLOW_SIZE"]),
        ({"RINGFLOW_SIZE": "2"}, ["RINGFLOW_RANK", "RINGFLOW_SIZE"]),
        (
            {"RINGFLOW_RANK": "0", "RINGFLOW_SIZE": "1", "RINGFLOW_LOCAL_RANK": "0"},
            ["RINGFLOW_LOCAL_RANK", "RINGFLOW_LOCAL_SIZE"],
        ),
        (
            {"RINGFLOW_RANK": "0", "RINGFLOW_SIZE": "1", "RINGFLOW_LOCAL_SIZE": "1"},
            ["RINGFLOW_LOCAL_RANK", "RINGFLOW_LOCAL_SIZE"],
        ),
        ({**TORCHRUN, "RINGFLOW_LOCAL_RANK": "0"}, ["RINGFLOW_LOCAL_RANK", "RINGFLOW_RANK"]),
        ({"RANK": "1"}, ["RANK", "WORLD_SIZE"]),
        ({"WORLD_SIZE": "2"}, ["RANK", "WORLD_SIZE"]),
        ({"SLURM_STEP_NUM_TASKS": "2"}, ["SLURM_PROCID", "SLURM_STEP_NUM_TASKS"]),
    ],
)
def test_partial_launcher_variables_are_an_error(env, names):
    with pytest.raises(ValueError) as excinfo:
        detect(env)
    for name in names:
        assert name in str(excinfo.value)


@pytest.mark.parametrize("source", [LAUNCHER, TORCHRUN, SLURM, PMI])
def test_several_processes_need_a_store_address(source):
    env = {k: v for k, v in source.items() if k not in ("MASTER_ADDR", "RINGFLOW_STORE_ADDR")}
    with pytest.raises(ValueError) as excinfo:
        detect(env)
    assert "RINGFLOW_STORE_ADDR" in str(excinfo.value)
    assert "MASTER_ADDR" in str(excinfo.value)


def test_slurm_outside_a_step_is_a_single_process():
    # A batch script carries SLURM_PROCID and SLURM_NTASKS of the allocation, but no step.
    env = {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NUM_TASKS"}
    assert detect(env).source == "single"


def test_openmpi_without_mpi4py_says_what_to_do(monkeypatch):
    # mpirun's own tests run the real bootstrap (tests/test_mpirun_torchrun.py); here it is absent.
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    env = {k: v for k, v in OPENMPI.items() if k != "MASTER_ADDR"}
    with pytest.raises(ValueError) as excinfo:
        detect(env)
    for words in ("mpi4py", "RINGFLOW_STORE_ADDR", "MASTER_ADDR", "MASTER_PORT"):
        assert words in str(excinfo.value)


def test_openmpi_uses_what_rank_0_shares_and_the_users_values_win(monkeypatch):
    from ringflow import _mpi_bootstrap

    shared = {
        "RINGFLOW_STORE_ADDR": "10.0.0.1",
        "RINGFLOW_STORE_PORT": "4321",
        "RINGFLOW_JOB_ID": "mpi-j",
        "RINGFLOW_SECRET": "s3",
    }
    monkeypatch.setattr(_mpi_bootstrap, "shared_settings", lambda *a, **k: dict(shared))
    env = {k: v for k, v in OPENMPI.items() if k not in ("MASTER_ADDR", "RINGFLOW_SECRET")}
    cfg = detect(env)
    assert (cfg.store_addr, cfg.store_port, cfg.job_id, cfg.secret) == (
        "10.0.0.1",
        4321,
        "mpi-j",
        b"s3",
    )
    cfg = detect({**env, "RINGFLOW_SECRET": "mine", "MASTER_PORT": "6000"})
    assert (cfg.store_addr, cfg.store_port, cfg.secret) == ("10.0.0.1", 6001, b"mine")
