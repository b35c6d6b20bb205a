// A point in time by which a wait must end. Every blocking call in the core takes one.
#pragma once

#include <algorithm>
#include <chrono>

namespace rf {

class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  static Deadline after_seconds(double seconds) {
    return Deadline(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(seconds)));
  }
  explicit Deadline(Clock::time_point at) : at_(at) {}

  bool expired() const { return Clock::now() >= at_; }
  // Milliseconds left, rounded up and clamped to [0, cap] — what poll()/epoll_wait() take.
  int remaining_ms(int cap = 1 << 30) const {
    auto left = std::chrono::duration_cast<std::chrono::microseconds>(at_ - Clock::now()).count();
    if (left <= 0) return 0;
    return static_cast<int>(std::min<long long>((left + 999) / 1000, cap));
  }
  Deadline earlier(const Deadline& other) const { return Deadline(std::min(at_, other.at_)); }

 private:
  Clock::time_point at_;
};

}  // namespace rf
