#include "ringflow/engine/handle.h"

namespace rf {

bool Handle::wait_for(std::chrono::microseconds timeout) {
  if (done()) return true;
  std::unique_lock<std::mutex> lock(mutex_);
  finished_.wait_for(lock, timeout, [this] { return done(); });
  return done();
}

void Handle::rethrow() const {
  if (error_) throw *error_;
}

void Handle::complete() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_.store(true, std::memory_order_release);
  }
  finished_.notify_all();
}

void Handle::fail(const Error& error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (done()) return;
    error_ = error;
    done_.store(true, std::memory_order_release);
  }
  finished_.notify_all();
}

}  // namespace rf
