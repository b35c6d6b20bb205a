#include "ringflow/engine/set_channels.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "ringflow/common/env.h"
#include "ringflow/engine/deadlock.h"
#include "ringflow/engine/engine.h"

namespace rf {

SetChannel::SetChannel(int set_id, std::vector<int> set_members, int rank, size_t cache_capacity,
                       int world_size)
    : set(set_id),
      members(std::move(set_members)),
      my_index(static_cast<int>(std::lower_bound(members.begin(), members.end(), rank) -
                                members.begin())),
      cache(cache_capacity),
      next_tag(kChannelTagBit | (static_cast<uint64_t>(set_id) << 40) | 1),
      waits(world_size) {}

int isolated_set_of(const ProcessSetTable& sets, int rank, int world_size) {
  int found = -1;
  for (const auto& [id, members] : sets.all()) {
    if (id == 0 || !std::binary_search(members.begin(), members.end(), rank)) continue;
    if (found >= 0) return -1;  // in two sets: they overlap
    found = id;
  }
  if (found < 0) return -1;
  const std::vector<int>& mine = sets.ranks(found);
  if (mine.size() < 2 || mine.size() >= static_cast<size_t>(world_size)) return -1;
  for (const auto& [id, members] : sets.all()) {
    if (id == 0 || id == found) continue;
    for (int r : members) {
      if (std::binary_search(mine.begin(), mine.end(), r)) return -1;
    }
  }
  return found;
}

void Engine::take_queue(std::vector<Local>& fresh, Announcement& mine) {
  std::lock_guard<std::mutex> lock(queue_mutex_);
  if (!channel_) {
    fresh.swap(queue_);
    mine.waits.swap(new_waits_);
    return;
  }
  // A channel round takes the channel's requests, a job-wide round all the others.
  const int32_t set = channel_->set;
  auto taken = [&](int32_t process_set) { return (process_set == set) == channel_round_; };
  std::vector<Local> kept;
  for (Local& local : queue_) {
    (taken(local.own.process_set) ? fresh : kept).push_back(std::move(local));
  }
  queue_.swap(kept);
  std::vector<TensorKey> kept_waits;
  for (const TensorKey& key : new_waits_) {
    (taken(key.process_set) ? mine.waits : kept_waits).push_back(key);
  }
  new_waits_.swap(kept_waits);
  if (channel_round_) {
    mine.wants_job_round = channel_job_news_ || mine.leaving || !queue_.empty();
  }
}

bool Engine::channel_news() {
  bool own = false;
  bool job = false;
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    for (const Local& local : queue_) (local.own.process_set == channel_->set ? own : job) = true;
  }
  for (const TensorKey& key : overdue_waits())
    (key.process_set == channel_->set ? own : job) = true;
  Transport& transport = runtime_->transport();
  // As the job-wide loop does, the transport is asked only when the queue has nothing: over
  // shared memory the question marks this rank idle, so that peers ring its doorbell.
  if (!own && !job && transport.has_buffered_input()) {
    for (int r : live_) {
      if (r == rank_ || !transport.has_buffered_input_from(r)) continue;
      const bool member = std::binary_search(channel_->members.begin(), channel_->members.end(), r);
      (member ? own : job) = true;
    }
    job = job || !own;  // input nobody owns: a job-wide round is always safe to ask for
  }
  // A frame from a member starts (or is part of) a channel round; one from any other rank is
  // a job-wide round, which this rank joins after a channel round that says so.
  if (!own && !job && !channel_pfds_.empty()) {
    own = ::poll(channel_pfds_.data(), channel_pfds_.size(), 0) > 0;
  }
  if (!job && !outside_pfds_.empty() && ::poll(outside_pfds_.data(), outside_pfds_.size(), 0) > 0) {
    // Over shared memory the socket may hold only a late doorbell for data this rank already
    // took from a ring (the last job-wide round's): a job-wide round asked for on it would make
    // the channel wait for the busiest rank of the job. Read the doorbells, then look again.
    transport.has_buffered_input();
    job = ::poll(outside_pfds_.data(), outside_pfds_.size(), 0) > 0;
    for (int r : live_) {
      if (job) break;
      const bool member = std::binary_search(channel_->members.begin(), channel_->members.end(), r);
      job = r != rank_ && !member && transport.has_buffered_input_from(r);
    }
  }
  // A job-wide round begun in shared memory (the bulletin) rings no socket.
  job = job || transport.input_hint();
  channel_job_news_ = job;
  return own || job;
}

void Engine::swap_channel_state() {
  std::swap(table_, channel_->table);
  std::swap(cache_, channel_->cache);
  std::swap(next_tag_, channel_->next_tag);
  std::swap(waits_, channel_->waits);
  channel_round_ = !channel_round_;
}

void Engine::run_channel_round(bool leaving) {
  channel_wants_job_ = false;
  channel_abandon_ = false;
  {
    // run_round, on the channel's state; swapped back however it ends.
    struct Scope {
      Engine& engine;
      explicit Scope(Engine& e) : engine(e) { engine.swap_channel_state(); }
      ~Scope() { engine.swap_channel_state(); }
    } scope(*this);
    run_round(leaving);
  }
  if (channel_abandon_) abandon_channel();
  if (leaving) return;  // leave() runs its job-wide round itself
  check_deadlock_across();
  if (!channel_wants_job_) return;
  run_round();
  update_channel();
  if (!channel_) return;
  check_deadlock_across();
  // A tensor that waited only for ranks that joined in that round is ready now, on every
  // member alike: run it without waiting for the channel's next round.
  swap_channel_state();
  try {
    execute_ready(table_.take_ready(joined_));
  } catch (...) {
    swap_channel_state();
    throw;
  }
  swap_channel_state();
}

void Engine::check_deadlock_across() {
  // Rounds check their own scope (run_round). A cycle through both, e.g. a member waiting on
  // the channel's tensor that its peer, waiting in a job-wide call, never submits, is found
  // here: the members know both tables and every wait in them, alike, at the same points of
  // their sequence. Ranks outside the channel hear of it through the members' abort.
  if (!channel_ || !env_config().deadlock_check) return;
  auto any = [](const std::vector<std::vector<TensorKey>>& waits) {
    return std::any_of(waits.begin(), waits.end(), [](const auto& keys) { return !keys.empty(); });
  };
  if (!any(waits_) || !any(channel_->waits)) return;
  std::vector<std::vector<TensorKey>> both = waits_;
  for (size_t r = 0; r < both.size(); ++r) {
    both[r].insert(both[r].end(), channel_->waits[r].begin(), channel_->waits[r].end());
  }
  if (auto deadlock = find_deadlock({&channel_->table, &table_}, both, joined_, rank_)) {
    throw Error(ErrorKind::kMismatch, *deadlock);  // progress_locked poisons the engine
  }
}

void Engine::exchange_in_channel(const Announcement& mine, RoundResult& out) {
  SubsetTransport members(runtime_->transport(), channel_->members, channel_->my_index);
  RoundResult round = exchange_announcements(
      CollectiveContext{members, round_tag_, Deadline::after_seconds(timeout_s_)}, mine);
  RoundResult by_job_rank;
  by_job_rank.bytes = round.bytes;
  by_job_rank.by_rank.resize(size_);
  bool someone_leaves = false;
  for (size_t i = 0; i < channel_->members.size(); ++i) {
    Announcement& theirs = round.by_rank[i];
    channel_wants_job_ = channel_wants_job_ || theirs.wants_job_round || theirs.leaving;
    someone_leaves = someone_leaves || (theirs.leaving && !mine.leaving);
    theirs.leaving = false;  // departures are noted in the job-wide round, by every rank alike
    by_job_rank.by_rank[channel_->members[i]] = std::move(theirs);
  }
  if (!someone_leaves) {
    out = std::move(by_job_rank);
    return;
  }
  // A member leaves: nothing of this round is applied; what is pending here goes back to the
  // queue and the job-wide round that follows fails what needs the rank that left.
  channel_abandon_ = true;
  RoundResult nothing;
  nothing.bytes = round.bytes;
  nothing.by_rank.resize(size_);
  out = std::move(nothing);
}

void Engine::abandon_channel() {
  std::vector<Local> back;
  for (auto it = announced_.begin(); it != announced_.end();) {
    if (it->first.process_set != channel_->set) {
      ++it;
      continue;
    }
    back.push_back(std::move(*it->second));
    it = announced_.erase(it);
  }
  {
    std::lock_guard<std::mutex> lock(queue_mutex_);
    queue_.insert(queue_.begin(), std::make_move_iterator(back.begin()),
                  std::make_move_iterator(back.end()));
  }
  channel_.reset();
  channel_pfds_.clear();
  outside_pfds_.clear();
}

void Engine::update_channel() {
  int set = -1;
  std::vector<int> members;
  {
    std::lock_guard<std::mutex> lock(sets_mutex_);
    if (sets_.version() == channel_sets_version_ && live_.size() == channel_live_) return;
    channel_sets_version_ = sets_.version();
    channel_live_ = live_.size();
    // Only while every rank is in the job: a departure ends every channel for good.
    if (env_config().set_channels && live_.size() == static_cast<size_t>(size_)) {
      set = isolated_set_of(sets_, rank_, size_);
    }
    if (set >= 0) members = sets_.ranks(set);
  }
  if (channel_ && channel_->set == set) return;
  if (channel_) abandon_channel();
  if (set < 0) return;
  channel_ = std::make_unique<SetChannel>(set, members, rank_, env_config().cache_capacity, size_);
  for (int r : live_) {
    const int fd = runtime_->transport().peer_fd(r);
    if (r == rank_ || fd < 0) continue;
    const bool member = std::binary_search(members.begin(), members.end(), r);
    (member ? channel_pfds_ : outside_pfds_).push_back(pollfd{fd, POLLIN, 0});
  }
}

}  // namespace rf
