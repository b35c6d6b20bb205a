#include "ringflow/common/log.h"

#include <cstdio>

#include "ringflow/common/env.h"

namespace rf {

namespace {
const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "DEBUG";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "?";
}
}  // namespace

bool log_enabled(LogLevel level) {
  return static_cast<int>(level) >= static_cast<int>(env_config().log_level);
}

void log_line(LogLevel level, const std::string& message) {
  // One fprintf per line so lines from several threads do not interleave.
  std::fprintf(stderr, "ringflow %s: %s\n", level_name(level), message.c_str());
}

}  // namespace rf
