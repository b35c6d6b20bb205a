// Chrome-trace writer (see timeline.h). Every write goes where the terminator "\n]\n" starts and
// then rewrites the terminator, so the file is valid JSON between flushes without truncating.
#include "ringflow/engine/timeline.h"

#include <cerrno>
#include <chrono>
#include <cstring>

#include "ringflow/common/check.h"
#include "ringflow/common/json.h"
#include "ringflow/common/log.h"

namespace rf {
namespace {

constexpr char kTerminator[] = "\n]\n";

std::string metadata(const char* name, int pid, int tid, const std::string& value) {
  return "{\"name\":\"" + std::string(name) + "\",\"ph\":\"M\",\"pid\":" + std::to_string(pid) +
         ",\"tid\":" + std::to_string(tid) + ",\"args\":{\"name\":\"" + json_escape(value) + "\"}}";
}

}  // namespace

Timeline::Timeline(int rank) : rank_(rank), epoch_us_(now_us()) {}

Timeline::~Timeline() { stop(); }

int64_t Timeline::now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Timeline::start(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  close_locked();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  RF_CHECK(f != nullptr, kInvalidArgument)
      << "cannot open timeline file '" << path << "': " << std::strerror(errno);
  file_ = f;
  // The array starts with an event, so every later event is written as ",\n{...}".
  std::string head =
      "[\n" + metadata("process_name", rank_, 0, "ringflow rank " + std::to_string(rank_));
  std::fwrite(head.data(), 1, head.size(), file_);
  terminator_pos_ = static_cast<long>(head.size());
  std::fwrite(kTerminator, 1, sizeof(kTerminator) - 1, file_);
  std::fflush(file_);
  active_.store(true);
}

void Timeline::stop() {
  std::lock_guard<std::mutex> lock(mu_);
  close_locked();
}

void Timeline::record(const std::string& tensor, const char* phase, int64_t start_us,
                      int64_t end_us, const std::string& args_json) {
  if (!active()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (file_ == nullptr) return;  // stopped between the check and the lock
  int tid = row_locked(tensor);
  int64_t dur = end_us > start_us ? end_us - start_us : 0;
  pending_ += ",\n{\"name\":\"" + json_escape(phase) +
              "\",\"ph\":\"X\",\"ts\":" + std::to_string(start_us - epoch_us_) +
              ",\"dur\":" + std::to_string(dur) + ",\"pid\":" + std::to_string(rank_) +
              ",\"tid\":" + std::to_string(tid) + ",\"args\":{\"tensor\":\"" + json_escape(tensor) +
              "\"" + (args_json.empty() ? "" : "," + args_json) + "}}";
}

void Timeline::flush() {
  if (!active()) return;
  std::lock_guard<std::mutex> lock(mu_);
  flush_locked();
}

int Timeline::row_locked(const std::string& tensor) {
  auto it = rows_.find(tensor);
  if (it != rows_.end()) return it->second;
  int tid = static_cast<int>(rows_.size()) + 1;  // tid 0 is left to the process row
  rows_.emplace(tensor, tid);
  pending_ += ",\n" + metadata("thread_name", rank_, tid, tensor);
  return tid;
}

void Timeline::flush_locked() {
  if (file_ == nullptr || pending_.empty()) return;
  bool ok = std::fseek(file_, terminator_pos_, SEEK_SET) == 0 &&
            std::fwrite(pending_.data(), 1, pending_.size(), file_) == pending_.size();
  terminator_pos_ += static_cast<long>(pending_.size());
  pending_.clear();
  ok = ok &&
       std::fwrite(kTerminator, 1, sizeof(kTerminator) - 1, file_) == sizeof(kTerminator) - 1 &&
       std::fflush(file_) == 0;
  if (!ok) {
    // A trace is diagnostics: losing it must not fail the training job.
    RF_LOG(kWarning) << "timeline write failed (" << std::strerror(errno) << "); timeline stopped";
    discard_locked();
  }
}

void Timeline::close_locked() {
  if (file_ == nullptr) return;
  flush_locked();  // may discard the file on a write error
  discard_locked();
}

void Timeline::discard_locked() {
  active_.store(false);
  if (file_ != nullptr) std::fclose(file_);
  file_ = nullptr;
  pending_.clear();
  rows_.clear();
}

}  // namespace rf
