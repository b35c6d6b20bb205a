#include "ringflow/common/env.h"

#include <cstdlib>
#include <initializer_list>

#include "ringflow/common/check.h"

namespace rf {

std::string env_string(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value && *value ? std::string(value) : fallback;
}

long long env_int(const char* name, long long fallback) {
  const char* value = std::getenv(name);
  if (!value || !*value) return fallback;
  char* end = nullptr;
  long long parsed = std::strtoll(value, &end, 10);
  RF_CHECK(end && *end == '\0' && parsed >= 0, kInvalidArgument)
      << name << "=" << value << " is not a non-negative integer";
  return parsed;
}

double env_number(const char* name, double fallback) {
  const char* value = std::getenv(name);
  if (!value || !*value) return fallback;
  char* end = nullptr;
  double parsed = std::strtod(value, &end);
  RF_CHECK(end && *end == '\0' && parsed >= 0, kInvalidArgument)
      << name << "=" << value << " is not a non-negative number";
  return parsed;
}

namespace {

LogLevel parse_log_level(const std::string& text) {
  if (text == "debug") return LogLevel::kDebug;
  if (text == "info") return LogLevel::kInfo;
  if (text == "warning") return LogLevel::kWarning;
  if (text == "error") return LogLevel::kError;
  RF_THROW(kInvalidArgument) << "RINGFLOW_LOG_LEVEL=" << text
                             << " is not one of debug, info, warning, error";
  return LogLevel::kWarning;  // not reached
}

TransportKind parse_transport(const std::string& text) {
  if (text == "auto") return TransportKind::kAuto;
  if (text == "tcp") return TransportKind::kTcp;
  if (text == "shm") return TransportKind::kShm;
  RF_THROW(kInvalidArgument) << "RINGFLOW_TRANSPORT=" << text << " is not one of auto, tcp, shm";
  return TransportKind::kAuto;  // not reached
}

std::string parse_choice(const char* name, const std::string& value,
                         std::initializer_list<const char*> allowed) {
  std::string listed;
  for (const char* option : allowed) {
    if (value == option) return value;
    listed += listed.empty() ? option : std::string(", ") + option;
  }
  RF_THROW(kInvalidArgument) << name << "=" << value << " is not one of " << listed;
  return value;  // not reached
}

size_t positive_bytes(const char* name, size_t fallback) {
  long long value = env_int(name, static_cast<long long>(fallback));
  RF_CHECK(value > 0, kInvalidArgument) << name << " must be at least 1 byte";
  return static_cast<size_t>(value);
}

EnvConfig read_env() {
  EnvConfig config;
  config.log_level = parse_log_level(env_string("RINGFLOW_LOG_LEVEL", "warning"));
  config.transport = parse_transport(env_string("RINGFLOW_TRANSPORT", "auto"));
  config.shm_ring_bytes = static_cast<size_t>(
      env_int("RINGFLOW_SHM_RING_BYTES", static_cast<long long>(config.shm_ring_bytes)));
  RF_CHECK(config.shm_ring_bytes >= 4096 && config.shm_ring_bytes <= (size_t{1} << 40),
           kInvalidArgument)
      << "RINGFLOW_SHM_RING_BYTES=" << config.shm_ring_bytes << " is not within 4096 .. 2^40";
  config.shm_area_bytes = static_cast<size_t>(
      env_int("RINGFLOW_SHM_AREA_BYTES", static_cast<long long>(config.shm_area_bytes)));
  RF_CHECK(config.shm_area_bytes <= (size_t{1} << 40), kInvalidArgument)
      << "RINGFLOW_SHM_AREA_BYTES=" << config.shm_area_bytes << " is above 2^40";
  config.socket_buffer_bytes =
      static_cast<size_t>(env_int("RINGFLOW_SOCKET_BUFFER", config.socket_buffer_bytes));
  config.tcp_streams = static_cast<int>(env_int("RINGFLOW_TCP_STREAMS", config.tcp_streams));
  RF_CHECK(config.tcp_streams >= 1 && config.tcp_streams <= 8, kInvalidArgument)
      << "RINGFLOW_TCP_STREAMS=" << config.tcp_streams << " is not within 1 .. 8";
  config.network_interface = env_string("RINGFLOW_NETWORK_INTERFACE", "");
  config.allreduce_algorithm = parse_choice("RINGFLOW_ALLREDUCE_ALGORITHM",
                                            env_string("RINGFLOW_ALLREDUCE_ALGORITHM", "auto"),
                                            {"auto", "ring", "bruck", "direct"});
  const std::string direct_min = env_string("RINGFLOW_DIRECT_MIN_BYTES", "auto");
  if (direct_min != "auto") config.direct_min_bytes = env_int("RINGFLOW_DIRECT_MIN_BYTES", 0);
  config.bruck_max_bytes = static_cast<size_t>(
      env_int("RINGFLOW_BRUCK_MAX_BYTES", static_cast<long long>(config.bruck_max_bytes)));
  if (std::getenv("RINGFLOW_BRUCK_MAX_BYTES")) config.bruck_max_bytes_shm = config.bruck_max_bytes;
  config.broadcast_algorithm = parse_choice("RINGFLOW_BROADCAST_ALGORITHM",
                                            env_string("RINGFLOW_BROADCAST_ALGORITHM", "auto"),
                                            {"auto", "binomial", "chain", "direct"});
  config.allgather_algorithm =
      parse_choice("RINGFLOW_ALLGATHER_ALGORITHM",
                   env_string("RINGFLOW_ALLGATHER_ALGORITHM", "auto"), {"auto", "ring", "direct"});
  config.reducescatter_algorithm = parse_choice(
      "RINGFLOW_REDUCESCATTER_ALGORITHM", env_string("RINGFLOW_REDUCESCATTER_ALGORITHM", "auto"),
      {"auto", "ring", "direct"});
  config.alltoall_algorithm =
      parse_choice("RINGFLOW_ALLTOALL_ALGORITHM", env_string("RINGFLOW_ALLTOALL_ALGORITHM", "auto"),
                   {"auto", "pairwise", "direct"});
  config.chain_min_bytes = static_cast<size_t>(
      env_int("RINGFLOW_CHAIN_MIN_BYTES", static_cast<long long>(config.chain_min_bytes)));
  config.segment_bytes = positive_bytes("RINGFLOW_SEGMENT_BYTES", config.segment_bytes);
  config.hierarchical = parse_choice(
      "RINGFLOW_HIERARCHICAL", env_string("RINGFLOW_HIERARCHICAL", "auto"), {"auto", "on", "off"});
  config.kernel_isa = parse_choice("RINGFLOW_KERNEL_ISA", env_string("RINGFLOW_KERNEL_ISA", "auto"),
                                   {"auto", "generic"});
  config.deadlock_check = env_int("RINGFLOW_DEADLOCK_CHECK", 1) != 0;
  config.set_channels = env_int("RINGFLOW_SET_CHANNELS", 1) != 0;
  config.cuda_ipc_bytes = static_cast<size_t>(
      env_int("RINGFLOW_CUDA_IPC_BYTES", static_cast<long long>(config.cuda_ipc_bytes)));
  config.fusion_threshold = static_cast<size_t>(
      env_int("RINGFLOW_FUSION_THRESHOLD", static_cast<long long>(config.fusion_threshold)));
  config.cycle_time_ms = env_number("RINGFLOW_CYCLE_TIME", config.cycle_time_ms);
  config.stall_check_s = env_number("RINGFLOW_STALL_CHECK_TIME", config.stall_check_s);
  config.stall_shutdown_s = env_number("RINGFLOW_STALL_SHUTDOWN_TIME", config.stall_shutdown_s);
  config.cache_capacity = static_cast<size_t>(
      env_int("RINGFLOW_CACHE_CAPACITY", static_cast<long long>(config.cache_capacity)));
  config.timeline = env_string("RINGFLOW_TIMELINE", "");
  config.join_average_contributors =
      parse_choice("RINGFLOW_JOIN_AVERAGE", env_string("RINGFLOW_JOIN_AVERAGE", "size"),
                   {"size", "contributors"}) == "contributors";
  config.heartbeat_interval_s =
      env_number("RINGFLOW_HEARTBEAT_INTERVAL", config.heartbeat_interval_s);
  config.flight_recorder_dir = env_string("RINGFLOW_FLIGHT_RECORDER", "");
  config.flight_recorder_entries = static_cast<size_t>(env_int(
      "RINGFLOW_FLIGHT_RECORDER_ENTRIES", static_cast<long long>(config.flight_recorder_entries)));
  const char* spin = std::getenv("RINGFLOW_SPIN_US");
  if (spin && *spin)
    config.spin_us = std::string(spin) == "auto" ? -1 : env_int("RINGFLOW_SPIN_US", 0);
  return config;
}

}  // namespace

const EnvConfig& env_config() {
  static const EnvConfig config = read_env();
  return config;
}

}  // namespace rf
