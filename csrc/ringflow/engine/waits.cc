// What this rank's callers wait on, as the negotiation rounds carry it to every rank for the
// deadlock check (deadlock.h). A caller that starts to wait records the tensor; the record
// travels with the next round, which is usually the one that carries the submission itself
// (a blocking call), so it costs no round of its own. A wait that no round has carried for
// kWaitAnnounceUs (its peers are busy elsewhere) starts one, so a deadlock is found in well
// under a second. Every rank forgets a wait when its tensor leaves the table (it ran or failed).
#include <algorithm>

#include "ringflow/engine/engine.h"

namespace rf {

namespace {
constexpr int64_t kWaitAnnounceUs = 50'000;
}  // namespace

void Engine::begin_wait(const Handle& handle) {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  if (new_waits_.empty()) new_waits_since_us_ = Timeline::now_us();
  new_waits_.push_back(TensorKey{handle.process_set, handle.name_hash});
}

void Engine::end_wait(const Handle& handle) {
  // A wait that ended before any round carried it is not announced at all: the same name may
  // be pending again soon (the next step's tensor), and this rank does not wait on that one.
  std::lock_guard<std::mutex> lock(queue_mutex_);
  const TensorKey key{handle.process_set, handle.name_hash};
  auto found = std::find(new_waits_.begin(), new_waits_.end(), key);
  if (found != new_waits_.end()) new_waits_.erase(found);
}

bool Engine::waits_overdue() {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  return !new_waits_.empty() && Timeline::now_us() - new_waits_since_us_ >= kWaitAnnounceUs;
}

std::vector<TensorKey> Engine::overdue_waits() {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  if (new_waits_.empty() || Timeline::now_us() - new_waits_since_us_ < kWaitAnnounceUs) return {};
  return new_waits_;
}

void Engine::note_waits(const RoundResult& round) {
  for (int r = 0; r < size_; ++r) {
    for (const TensorKey& key : round.by_rank[r].waits) {
      // Only a tensor the rank announced itself: a wait whose tensor finished already, its
      // name now taken by another rank's next submission, is not a wait on that one.
      const PendingTensor* tensor = table_.find(key);
      if (!tensor) continue;
      auto it = std::lower_bound(tensor->members.begin(), tensor->members.end(), r);
      if (it == tensor->members.end() || *it != r) continue;
      if (!tensor->announced[it - tensor->members.begin()]) continue;
      if (std::find(waits_[r].begin(), waits_[r].end(), key) == waits_[r].end()) {
        waits_[r].push_back(key);
      }
    }
  }
}

void Engine::prune_waits() {
  for (std::vector<TensorKey>& keys : waits_) {
    keys.erase(std::remove_if(keys.begin(), keys.end(),
                              [this](const TensorKey& key) { return !table_.find(key); }),
               keys.end());
  }
}

}  // namespace rf
