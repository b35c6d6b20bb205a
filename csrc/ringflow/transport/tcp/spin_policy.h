// How long a wait polls its sockets before sleeping in epoll. Polling catches a reply within a
// few microseconds instead of paying a sleep and wake-up (~20-40 us), but only while the peer
// is running on another core; on a busy machine it steals the peer's CPU. So the budget adapts:
// it doubles (up to the maximum) when polling found the data, halves when the wait had to sleep
// anyway, and from zero probes again now and then.
#pragma once

#include <algorithm>

namespace rf {

class SpinPolicy {
 public:
  explicit SpinPolicy(int max_us) : max_us_(std::max(0, max_us)), budget_us_(max_us_) {}

  int budget_us() const { return budget_us_; }
  void polled_in_time() { budget_us_ = std::min(max_us_, budget_us_ * 2 + 1); }
  void had_to_sleep() {
    budget_us_ /= 2;
    if (budget_us_ == 0 && max_us_ > 0 && ++sleeps_at_zero_ % kProbeEvery == 0) budget_us_ = 1;
  }

 private:
  static constexpr int kProbeEvery = 64;
  int max_us_;
  int budget_us_;
  unsigned sleeps_at_zero_ = 0;
};

}  // namespace rf
