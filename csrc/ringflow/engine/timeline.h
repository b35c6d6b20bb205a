// Chrome-trace writer: one row per tensor, one complete ("X") event per phase of its collective,
// viewable in chrome://tracing or Perfetto. The engine thread records into a memory buffer and
// flushes once per negotiation round; the file always ends with "\n]\n" after a flush, so a
// run that crashes still leaves a parseable trace. Python threads start and stop it.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>
#include <unordered_map>

namespace rf {

class Timeline {
 public:
  explicit Timeline(int rank);  // pid of every event = rank
  ~Timeline();                  // stop()
  Timeline(const Timeline&) = delete;
  Timeline& operator=(const Timeline&) = delete;

  // Opens (truncates) `path`; stops a previous file first. Throws kInvalidArgument on failure.
  void start(const std::string& path);
  // Writes what is buffered and closes the array; idempotent.
  void stop();
  // Cheap check so callers can skip building events.
  bool active() const { return active_.load(std::memory_order_relaxed); }

  // Steady-clock microseconds; pass these values to record().
  static int64_t now_us();

  // One complete event for `tensor` (its row is created on first use). `args_json` holds extra
  // members of "args" without braces, e.g. "\"bytes\":123", or is empty.
  void record(const std::string& tensor, const char* phase, int64_t start_us, int64_t end_us,
              const std::string& args_json = "");
  // Writes buffered events before the terminator and fflush()es.
  void flush();

 private:
  int row_locked(const std::string& tensor);  // requires mu_
  void flush_locked();                        // requires mu_
  void close_locked();                        // requires mu_: flush, then close
  void discard_locked();                      // requires mu_: close without writing

  const int rank_;
  const int64_t epoch_us_;
  std::atomic<bool> active_{false};
  std::mutex mu_;
  std::FILE* file_ = nullptr;
  long terminator_pos_ = 0;  // where "\n]\n" starts; new events overwrite it
  std::string pending_;      // events not yet written, each starting with ",\n"
  std::unordered_map<std::string, int> rows_;
};

}  // namespace rf
