#include "ringflow/common/env.h"

#include <cstdlib>

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

namespace {

LogLevel parse_log_level(const std::string& text) {
  if (text == "debug") return LogLevel::kDebug;
  if (text == "info") return LogLevel::kInfo;
  if (text == "warning") return LogLevel::kWarning;
  if (text == "error") return LogLevel::kError;
  RF_THROW(kInvalidArgument) << "RINGFLOW_LOG_LEVEL=" << text
                             << " is not one of debug, info, warning, error";
}

TransportKind parse_transport(const std::string& text) {
  if (text == "auto") return TransportKind::kAuto;
  if (text == "tcp") return TransportKind::kTcp;
  RF_THROW(kInvalidArgument) << "RINGFLOW_TRANSPORT=" << text
                             << " is not one of auto, tcp (shared memory comes later)";
}

EnvConfig read_env() {
  EnvConfig config;
  config.log_level = parse_log_level(env_string("RINGFLOW_LOG_LEVEL", "warning"));
  config.transport = parse_transport(env_string("RINGFLOW_TRANSPORT", "auto"));
  config.socket_buffer_bytes =
      static_cast<size_t>(env_int("RINGFLOW_SOCKET_BUFFER", config.socket_buffer_bytes));
  return config;
}

}  // namespace

const EnvConfig& env_config() {
  static const EnvConfig config = read_env();
  return config;
}

}  // namespace rf
