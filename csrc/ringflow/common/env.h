// Tunables read from RINGFLOW_* environment variables, once per process, in one place.
// (Rendezvous variables — rank, size, store address — are read by the Python layer, which
// also understands torchrun / Open MPI / Slurm, and passed in explicitly.)
#pragma once

#include <cstddef>
#include <string>

#include "ringflow/common/log.h"

namespace rf {

enum class TransportKind { kAuto, kTcp, kShm };

struct EnvConfig {
  LogLevel log_level = LogLevel::kWarning;         // RINGFLOW_LOG_LEVEL
  TransportKind transport = TransportKind::kAuto;  // RINGFLOW_TRANSPORT=auto|tcp|shm
  size_t shm_ring_bytes = 1 << 20;                 // RINGFLOW_SHM_RING_BYTES (per peer pair)
  size_t shm_area_bytes = 3 << 20;  // RINGFLOW_SHM_AREA_BYTES: collective area per rank (0: none)
  size_t socket_buffer_bytes = 4 << 20;  // RINGFLOW_SOCKET_BUFFER (bytes, 0 = OS default)
  int tcp_streams = 2;  // RINGFLOW_TCP_STREAMS: connections per TCP peer pair (1 .. 8)
  // RINGFLOW_NETWORK_INTERFACE: the interface (e.g. eth1) whose IPv4 address this rank listens on
  // and advertises to its peers; empty: the address of the interface that reaches the store.
  std::string network_interface;
  // Algorithm choice (collectives/select.cc) and pipelining.
  std::string allreduce_algorithm = "auto";  // RINGFLOW_ALLREDUCE_ALGORITHM=auto|ring|bruck|direct
  // RINGFLOW_DIRECT_MIN_BYTES: allreduces from this size read same-host peers' memory directly
  // (collectives/select.cc); "auto" (-1): the measured crossover for the set's size.
  long long direct_min_bytes = -1;
  size_t bruck_max_bytes = 64 << 10;  // RINGFLOW_BRUCK_MAX_BYTES
  // The same for a set whose ranks share memory (collectives/select.cc); RINGFLOW_BRUCK_MAX_BYTES
  // sets both.
  size_t bruck_max_bytes_shm = 8 << 10;
  std::string broadcast_algorithm =
      "auto";  // RINGFLOW_BROADCAST_ALGORITHM=auto|binomial|chain|direct
  std::string allgather_algorithm = "auto";  // RINGFLOW_ALLGATHER_ALGORITHM=auto|ring|direct
  size_t chain_min_bytes = 1 << 20;          // RINGFLOW_CHAIN_MIN_BYTES
  size_t segment_bytes = 512 << 10;          // RINGFLOW_SEGMENT_BYTES
  std::string hierarchical = "auto";         // RINGFLOW_HIERARCHICAL=auto|on|off
  // RINGFLOW_REDUCESCATTER_ALGORITHM=auto|ring|direct, RINGFLOW_ALLTOALL_ALGORITHM=auto|pairwise|
  // direct (collectives/select.cc).
  std::string reducescatter_algorithm = "auto";
  std::string alltoall_algorithm = "auto";
  // RINGFLOW_SPIN_US: the most microseconds a wait polls before sleeping (adaptive, see
  // transport/tcp/spin_policy.h); 0 never polls; "auto" (-1) is 50.
  long long spin_us = -1;
  std::string kernel_isa = "auto";  // RINGFLOW_KERNEL_ISA=auto|generic (generic: no AVX2/F16C)
  // The engine (engine/engine.cc).
  size_t fusion_threshold = 64 << 20;  // RINGFLOW_FUSION_THRESHOLD (bytes; 0: no fusion)
  double cycle_time_ms = 1.0;          // RINGFLOW_CYCLE_TIME: how long async submissions gather
  double stall_check_s = 60.0;         // RINGFLOW_STALL_CHECK_TIME (0: no warnings)
  double stall_shutdown_s = -1.0;      // RINGFLOW_STALL_SHUTDOWN_TIME (-1: RINGFLOW_TIMEOUT)
  size_t cache_capacity = 1024;        // RINGFLOW_CACHE_CAPACITY (entries; 0: no response cache)
  std::string timeline;                // RINGFLOW_TIMELINE: Chrome trace written from init
  // RINGFLOW_JOIN_AVERAGE=size|contributors: what Average divides by while ranks have joined:
  // the set's size (Horovod: joined ranks count as zeros) or the ranks that brought data.
  bool join_average_contributors = false;
  // Failure reporting (engine/heartbeat.h, engine/flight_recorder.h).
  double heartbeat_interval_s = 1.0;     // RINGFLOW_HEARTBEAT_INTERVAL (seconds; 0: no heartbeat)
  std::string flight_recorder_dir;       // RINGFLOW_FLIGHT_RECORDER: write rank<r>.json there
  size_t flight_recorder_entries = 256;  // RINGFLOW_FLIGHT_RECORDER_ENTRIES (0: keep none)
  // CUDA tensors (collectives/cuda_ipc_allreduce.h): the most device memory each rank maps to
  // its same-host peers for allreduce; 0 sends device tensors through host memory instead.
  size_t cuda_ipc_bytes = 256 << 20;  // RINGFLOW_CUDA_IPC_BYTES
  // engine/deadlock.h: raise at once when every waiting rank's calls can never match; 0 turns
  // it off for programs that submit from one thread while another waits (then a stall times out).
  bool deadlock_check = true;  // RINGFLOW_DEADLOCK_CHECK=1|0
  // engine/set_channels.h: a process set disjoint from every other runs its own rounds; 0 runs
  // every set's rounds job-wide (a job-wide op then costs its members no channel round).
  bool set_channels = true;  // RINGFLOW_SET_CHANNELS=1|0
};

// Parsed on first use; a malformed value throws rf::Error naming the variable.
const EnvConfig& env_config();

// Helpers for parsing one variable; exposed for the few values read elsewhere.
std::string env_string(const char* name, const std::string& fallback);
long long env_int(const char* name, long long fallback);
double env_number(const char* name, double fallback);  // a non-negative number

}  // namespace rf
