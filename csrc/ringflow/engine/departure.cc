// Coordinated shutdown. A rank that shuts down says so in one last negotiation round (as
// Horovod's shutdown does), so the others take its closing connections for an orderly leave
// rather than a failure. Whatever still needs the rank that left fails at once on the ranks that
// wait for it ("rank 1 shut down while 'x' waits for it"), the same way on every rank; the rest
// goes on, and later rounds run among the ranks still there.
//
// Why the leaving rank may close its sockets right after that round: every frame the others
// send it belongs to a round it takes part in, so none is left unread (which would reset the
// connection and lose data in flight), and each of them has learnt of the departure by the end
// of the same round, before it could mistake the end of the stream for a failure.
#include <algorithm>

#include "ringflow/engine/engine.h"

namespace rf {

void Engine::leave() {
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    if (broken_) return;  // a failed engine has told its peers already
  }
  if (live_.size() <= 1) return;
  try {
    // A channel's members hear it first, in the channel's order (set_channels.h).
    if (channel_) run_channel_round(/*leaving=*/true);
    run_round(/*leaving=*/true);
  } catch (const Error& error) {
    poison(error);  // a peer died meanwhile: reported as any failure is
  } catch (const std::exception& error) {
    poison(Error(ErrorKind::kInternal, "rank " + std::to_string(rank_) + ": " + error.what()));
  }
}

void Engine::exchange_among_live(const Announcement& mine, RoundResult& out) {
  if (channel_round_) return exchange_in_channel(mine, out);
  const Deadline deadline = Deadline::after_seconds(timeout_s_);
  if (live_.size() == static_cast<size_t>(size_)) {
    exchange_announcements(CollectiveContext{runtime_->transport(), round_tag_, deadline}, mine,
                           out);
    return;
  }
  // Renumbered 0 … k-1, as a process set is; the result goes back to job ranks.
  const auto me = std::lower_bound(live_.begin(), live_.end(), rank_) - live_.begin();
  SubsetTransport among_live(runtime_->transport(), live_, static_cast<int>(me));
  RoundResult round =
      exchange_announcements(CollectiveContext{among_live, round_tag_, deadline}, mine);
  RoundResult by_job_rank;
  by_job_rank.bytes = round.bytes;
  by_job_rank.by_rank.resize(size_);
  for (size_t i = 0; i < live_.size(); ++i) {
    by_job_rank.by_rank[live_[i]] = std::move(round.by_rank[i]);
  }
  out = std::move(by_job_rank);
}

void Engine::note_departures(const RoundResult& round) {
  bool any = false;
  for (int r = 0; r < size_; ++r) {
    if (!round.by_rank[r].leaving || departed_[r]) continue;
    departed_[r] = true;
    waits_[r].clear();
    any = true;
  }
  if (!any) return;
  live_.clear();
  for (int r = 0; r < size_; ++r) {
    if (!departed_[r]) live_.push_back(r);
  }
  refresh_peer_fds();  // their connections are closing: not a sign of a round any more
}

bool Engine::needs_departed(const std::vector<int>& members) const {
  if (live_.size() == static_cast<size_t>(size_)) return false;
  return std::any_of(members.begin(), members.end(), [this](int r) { return departed_[r]; });
}

Error Engine::departed_error(const std::string& what, const std::string& name,
                             const std::vector<int>& members) {
  int gone = -1;
  for (int r : members) {
    if (departed_[r]) {
      gone = r;
      break;
    }
  }
  return Error(ErrorKind::kPeerFailure,
               "rank " + std::to_string(rank_) + ": " + what + " of tensor '" + name + "': rank " +
                   std::to_string(gone) + " shut down while '" + name +
                   "' waits for it (it called shutdown() or exited before calling this "
                   "collective; every rank must call the same collectives)");
}

void Engine::drop_departed() {
  if (live_.size() == static_cast<size_t>(size_)) return;
  for (PendingTensor& tensor : table_.take_involving(departed_)) {
    auto found = announced_.find(tensor.key);
    if (found == announced_.end()) continue;  // not this rank's tensor
    const Error error = departed_error(op_kind_name(tensor.kind), tensor.name, tensor.members);
    settle(*found->second, &error);
    announced_.erase(found);
  }
}

}  // namespace rf
