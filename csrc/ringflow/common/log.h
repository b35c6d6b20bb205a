// Minimal leveled logging to stderr. RINGFLOW_LOG_LEVEL=debug|info|warning|error (default
// warning). Each line starts with "ringflow" and, when known, the rank.
#pragma once

#include <sstream>
#include <string>

namespace rf {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

bool log_enabled(LogLevel level);
void log_line(LogLevel level, const std::string& message);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { log_line(level_, stream_.str()); }
  template <typename T>
  LogMessage& operator<<(const T& value) {
    stream_ << value;
    return *this;
  }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace rf

#define RF_LOG(level)                              \
  if (!::rf::log_enabled(::rf::LogLevel::level)) { \
  } else                                           \
    ::rf::LogMessage(::rf::LogLevel::level)
