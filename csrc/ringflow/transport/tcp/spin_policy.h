// How long a wait polls its sockets before sleeping in epoll. Polling catches a reply within a
// few microseconds instead of paying a sleep and wake-up (~20-80 us here), but only while the
// peer is running on another core; on a busy machine it steals the peer's CPU. So the budget
// adapts to how long waits really take: a wait of up to a few wake-ups (kRestoreFactor x the
// maximum) restores the full budget, a longer one — the peer was descheduled, or is busy
// elsewhere — halves it. The margin matters: when both sides sleep, every wait costs a wake-up
// on each side, and a threshold below that would keep them sleeping for good.
#pragma once

#include <algorithm>

namespace rf {

struct SpinOptions {
  int max_us = 50;             // RINGFLOW_SPIN_US
  bool yield_between = false;  // sched_yield() between polls (more local ranks than cores)
};

class SpinPolicy {
 public:
  explicit SpinPolicy(SpinOptions options)
      : max_us_(std::max(0, options.max_us)), budget_us_(max_us_) {}

  int budget_us() const { return budget_us_; }
  // Called when a wait completes, with how long it took in all.
  void waited(long long elapsed_us) {
    if (elapsed_us <= kRestoreFactor * max_us_) {
      budget_us_ = max_us_;
    } else {
      budget_us_ /= 2;
    }
  }

 private:
  static constexpr long long kRestoreFactor = 4;
  int max_us_;
  int budget_us_;
};

}  // namespace rf
