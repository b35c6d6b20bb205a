#include "ringflow/engine/handle.h"

namespace rf {

void Handle::rethrow() const {
  if (error_) throw *error_;
}

void Handle::complete() {
  std::lock_guard<std::mutex> lock(mutex_);
  done_.store(true, std::memory_order_release);
}

void Handle::fail(const Error& error) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (done()) return;
  error_ = error;
  done_.store(true, std::memory_order_release);
}

}  // namespace rf
