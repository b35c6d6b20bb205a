// Failure handling: an I/O error, a timeout or a stall poisons the engine for good. The error
// is completed with what the store knows (the job's first failure, every rank's heartbeat), the
// peers are told, every pending handle fails with it, and the flight recorder is printed or
// written to $RINGFLOW_FLIGHT_RECORDER.
#include <sys/stat.h>

#include <fstream>

#include "ringflow/common/env.h"
#include "ringflow/common/log.h"
#include "ringflow/engine/engine.h"

namespace rf {

std::string Engine::status_line() const {
  std::string line = recorder_.activity();
  const int peer = runtime_->transport().waiting_for();
  if (peer >= 0) line += ", waiting on rank " + std::to_string(peer);
  return line;
}

std::string Engine::flight_recorder_json() {
  std::string error;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    if (broken_) error = broken_->what();
  }
  return recorder_.to_json(rank_, size_, error, status_line());
}

void Engine::poison(const Error& error) {
  std::optional<Error> earlier;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    earlier = broken_;
  }
  if (earlier) {
    fail_all(*earlier);
    return;
  }
  // Read before the transport is aborted: what this rank was doing and whom it waited on.
  const int peer = runtime_->transport().waiting_for();
  const std::string now = status_line();
  const std::string message = error.what();
  std::string first_line;
  if (heartbeat_) {
    // Recorded before the peers see this rank's abort, so that they find it in the store. Not
    // repeated when this rank saw it itself (a peer's abort) or saw the same (a stall every
    // rank detects on its own: only the "rank N: " prefix differs).
    auto first = heartbeat_->first_failure(message);
    auto without_rank = [](const std::string& text) { return text.substr(text.find(": ") + 1); };
    if (first && message.find(*first) == std::string::npos &&
        without_rank(*first) != without_rank(message)) {
      first_line = "\n  the first failure in this job: " + *first;
    }
  }
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    broken_ = Error(error.kind(), message + first_line);
    unusable_.store(true, std::memory_order_release);
  }
  // Peers get the short form and add what they know themselves; they hear it before this rank
  // reads every heartbeat.
  runtime_->transport().abort(message);
  const std::string whereabouts = heartbeat_ ? heartbeat_->whereabouts() : "";
  const Error failure(error.kind(), message + first_line + whereabouts);
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    broken_ = failure;
  }
  fail_all(failure, peer);
  report_flight_recorder(failure.what(), now);
}

void Engine::fail_all(const Error& error, int peer) {
  std::vector<Local> queued;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    queued.swap(queue_);
    pending_names_.clear();
  }
  const int64_t now = Timeline::now_us();
  for (Local& local : queued) {
    recorder_.finished(local.flight_id, false, -1, now);
    local.handle->fail(error);
  }
  for (auto& [key, local] : announced_) {
    recorder_.finished(local->flight_id, false, peer, now);
    local->handle->fail(error);
  }
  announced_.clear();
  waiting_ = false;
}

void Engine::report_flight_recorder(const std::string& error, const std::string& now) {
  const std::string& dir = env_config().flight_recorder_dir;
  if (!dir.empty()) {
    ::mkdir(dir.c_str(), 0777);  // may exist already; opening the file tells
    const std::string path = dir + "/rank" + std::to_string(rank_) + ".json";
    std::ofstream file(path, std::ios::trunc);
    file << recorder_.to_json(rank_, size_, error, now);
    file.close();
    if (file) {
      RF_LOG(kError) << "rank " << rank_ << ": failed; flight recorder written to " << path;
      return;
    }
    RF_LOG(kError) << "rank " << rank_ << ": could not write the flight recorder to " << path;
  }
  RF_LOG(kError) << recorder_.to_text(rank_, size_, error, now);
}

}  // namespace rf
